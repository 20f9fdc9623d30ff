"""Errors as ``application/problem+json`` (RFC 9457), for every error the app can answer.

Flask's own error pages are HTML; a client of an API should never have to parse one. Each
problem lists its individual errors with the JSON pointer of the offending value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

log = logging.getLogger("smsgw.api")
MAX_ERRORS = 100


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}
        self.omitted = 0

    def response(self) -> Response:
        body: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if self.errors:
            body["errors"] = self.errors[:MAX_ERRORS]
            omitted = max(0, len(self.errors) - MAX_ERRORS) + self.omitted
            if omitted:
                body["errors_omitted"] = omitted
        response = Response(
            json.dumps(body, ensure_ascii=False),
            status=self.status,
            mimetype="application/problem+json",
        )
        response.headers.update(self.headers)
        return response


class ErrorList(list[dict[str, str]]):
    """Errors collected while a request is checked, bounded as they are built: past
    ``MAX_ERRORS`` they are only counted, so no request can make the error itself unbounded."""

    def __init__(self) -> None:
        super().__init__()
        self.omitted = 0

    def append(self, item: dict[str, str]) -> None:
        if len(self) < MAX_ERRORS:
            super().append(item)
        else:
            self.omitted += 1

    def extend(self, items: Iterable[dict[str, str]]) -> None:
        for item in items:
            self.append(item)

    def __iadd__(self, items: Iterable[dict[str, str]]) -> ErrorList:  # type: ignore[override,misc]
        self.extend(items)
        return self


def validation_problem(errors: list[dict[str, str]]) -> Problem:
    total = len(errors) + getattr(errors, "omitted", 0)
    problem = Problem(422, "The request is not valid", f"{total} problem(s) found", list(errors))
    problem.omitted = getattr(errors, "omitted", 0)
    return problem


def init_app(app: Flask) -> None:
    @app.errorhandler(Problem)
    def on_problem(e: Problem) -> Response:
        return e.response()

    @app.errorhandler(HTTPException)
    def on_http(e: HTTPException) -> Response:
        detail = e.description or ""
        if e.code == 413:
            detail = f"the body is over the limit of {app.config['MAX_CONTENT_LENGTH']} bytes (SMSGW_MAX_BODY_BYTES)"
        problem = Problem(e.code or 500, e.name, detail)
        response = problem.response()
        if e.code == 405 and e.response is None:
            allowed = e.get_headers()
            response.headers.update({k: v for k, v in allowed if k == "Allow"})
        return response

    @app.errorhandler(Exception)
    def on_error(e: Exception) -> Response:
        log.exception("unhandled error")
        return Problem(500, "Internal Server Error", "the error was logged").response()
