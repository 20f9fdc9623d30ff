"""gunicorn's access log without the provider's push path in it.

The provider pushes reports and replies to ``/callbacks/provider/<secret>?…&Mobile=…``: a
plain access log writes the push secret and every recipient's mobile, line after line. Pushes
that were taken are not logged at all (they are counted); refused ones are logged with the path
shape only and no query; every other line is gunicorn's.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

PUSH_PREFIX = "/callbacks/provider/"
PUSH_SHAPE = PUSH_PREFIX + "<secret>"


class AccessLogger(Logger):
    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """A push the receiver took is not a line: the provider pushes one request per report,
        90% of a busy log. What it stored is counted (``smsgw_inbound_items_total``); a push it
        refused (4xx, 5xx) is logged, by shape."""
        if str(environ.get("PATH_INFO", "")).startswith(PUSH_PREFIX) and _status(resp) < 400:
            return
        super().access(resp, req, environ, request_time)

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        if str(environ.get("PATH_INFO", "")).startswith(PUSH_PREFIX):
            atoms.update(r=f"{environ['REQUEST_METHOD']} {PUSH_SHAPE} {environ['SERVER_PROTOCOL']}", U=PUSH_SHAPE, q="")
            atoms.update({"f": "-"})
        return atoms


def _status(resp: Any) -> int:
    status = getattr(resp, "status_code", None) or str(getattr(resp, "status", "500")).split()[0]
    try:
        return int(status)
    except ValueError:
        return 500


class RequestIdFilter(logging.Filter):
    """The request id on every log line of a request (Flask is imported at the first line
    logged, in a worker, never in gunicorn's arbiter: see ``gateway``'s docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from flask import g, has_request_context

        if has_request_context() and not hasattr(record, "request_id"):
            record.request_id = g.get("request_id")
        return True
