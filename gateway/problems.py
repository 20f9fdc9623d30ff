"""Errors as ``application/problem+json`` (RFC 9457), for every error the app can answer.

Flask's own error pages are HTML; a client of an API should never have to parse one. Each
problem lists its individual errors with the JSON pointer of the offending value.
"""

from __future__ import annotations

import json
import logging
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

    def response(self) -> Response:
        body: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if self.errors:
            body["errors"] = self.errors[:MAX_ERRORS]
            if len(self.errors) > MAX_ERRORS:
                body["errors_omitted"] = len(self.errors) - MAX_ERRORS
        response = Response(
            json.dumps(body, ensure_ascii=False),
            status=self.status,
            mimetype="application/problem+json",
        )
        response.headers.update(self.headers)
        return response


def validation_problem(errors: list[dict[str, str]]) -> Problem:
    return Problem(422, "The request is not valid", f"{len(errors)} problem(s) found", errors)


def init_app(app: Flask) -> None:
    @app.errorhandler(Problem)
    def on_problem(e: Problem) -> Response:
        return e.response()

    @app.errorhandler(HTTPException)
    def on_http(e: HTTPException) -> Response:
        problem = Problem(e.code or 500, e.name, e.description or "")
        response = problem.response()
        if e.code == 405 and e.response is None:
            allowed = e.get_headers()
            response.headers.update({k: v for k, v in allowed if k == "Allow"})
        return response

    @app.errorhandler(Exception)
    def on_error(e: Exception) -> Response:
        log.exception("unhandled error")
        return Problem(500, "Internal Server Error", "the error was logged").response()
