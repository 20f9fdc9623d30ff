"""gunicorn's access log without the provider's push path in it.

The provider pushes reports and replies to ``/callbacks/provider/<secret>?…&Mobile=…``: a
plain access log writes the push secret and every recipient's mobile, line after line. Push
requests are logged with the path shape only and no query; every other line is gunicorn's.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

PUSH_PREFIX = "/callbacks/provider/"
PUSH_SHAPE = PUSH_PREFIX + "<secret>"


class AccessLogger(Logger):
    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        if str(environ.get("PATH_INFO", "")).startswith(PUSH_PREFIX):
            atoms.update(r=f"{environ['REQUEST_METHOD']} {PUSH_SHAPE} {environ['SERVER_PROTOCOL']}", U=PUSH_SHAPE, q="")
            atoms.update({"f": "-"})
        return atoms
