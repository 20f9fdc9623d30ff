"""What a request handler finds about its process: the runtime, and the request id on logs."""

from __future__ import annotations

import logging

from flask import current_app, g, has_request_context

from workers.runtime import Runtime


def runtime() -> Runtime:
    """The app's :class:`Runtime`, built once by ``create_app``: the one lookup every blueprint uses."""
    return current_app.extensions["smsgw"]  # type: ignore[no-any-return]


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context() and not hasattr(record, "request_id"):
            record.request_id = g.get("request_id")
        return True
