"""Liveness and readiness: ``/healthz`` says the process answers, ``/readyz`` that Redis takes
writes (a full Redis answers PING and reads, and refuses every accept)."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify

from workers.storage import schema

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    try:
        current_app.extensions["smsgw"].conn.set(schema.WRITE_PROBE, 1, px=10_000)
    except redis.RedisError as e:
        return jsonify(status="unavailable", redis=type(e).__name__), 503
    return jsonify(status="ok", redis="ok")
