"""Liveness and readiness: ``/healthz`` says the process answers, ``/readyz`` that Redis does."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    try:
        current_app.extensions["smsgw"].conn.ping()
    except redis.RedisError as e:
        return jsonify(status="unavailable", redis=type(e).__name__), 503
    return jsonify(status="ok", redis="ok")
