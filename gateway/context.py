"""What a request handler finds about its process: the runtime, and the request id on logs."""

from __future__ import annotations

from flask import current_app

from workers.runtime import Runtime


def runtime() -> Runtime:
    """The app's :class:`Runtime`, built once by ``create_app``: the one lookup every blueprint uses."""
    return current_app.extensions["smsgw"]  # type: ignore[no-any-return]
