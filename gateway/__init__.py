"""smsgw's HTTP facade: an app factory, one blueprint per concern.

This package's own import is light on purpose: gunicorn's arbiter imports ``gateway.access_log``
(its logger class and request-id filter) before it forks gevent workers, and anything that pulls
in ``ssl`` there (redis, requests, urllib3) makes every worker's monkey-patching warn and leaves
those modules unpatched. Everything else is imported when the app is built, in the worker.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from workers.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Without ``settings``, they come from ``SMSGW_*`` (gunicorn's entry)."""
    import redis
    from flask import Flask, Response, g, request

    from workers.runtime import Runtime
    from workers.settings import settings_from_env

    settings = settings or settings_from_env(os.environ)
    app = Flask(__name__)
    # Flask has no body limit by default; a problem+json 413 comes from gateway.problems.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    rt = app.extensions["smsgw"] = Runtime.from_settings(settings)

    from gateway import (
        api,
        dashboard,
        health,
        metrics,
        openapi,
        operators,
        problems,
        provider_push,
        quotas,
        verifications,  # noqa: F401 - its routes join api.bp before it is registered
    )

    problems.init_app(app)
    quotas.init_app(app, rt)
    metrics.init_app(app, rt)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(operators.bp)
    app.register_blueprint(provider_push.bp)
    dashboard.init_app(app, settings.redis_url)

    @app.before_request
    def request_id() -> None:
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    @app.errorhandler(redis.RedisError)
    def redis_down(e: redis.RedisError) -> Response:
        why = "full" if isinstance(e, redis.exceptions.OutOfMemoryError) else "unreachable"
        return problems.Problem(503, "Service Unavailable", f"storage is {why}; retry later").response()

    return app
