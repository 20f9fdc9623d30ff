"""Operator dashboards: smsgw's overview at ``/dashboard/`` and RQ's at ``/dashboard/rq``.

Both sit behind operator authentication (``gateway.operators``), never an API key. Every
state-changing request under ``/dashboard`` and ``/admin`` must come from the same origin (the
``Origin``/``Referer`` check below), and rq-dashboard's ``GET /requeue/<queue>`` (a link or a
prefetch could requeue every failed job) is refused: only POST changes anything. A requeue is
safe anyway, because each chunk's own state decides what a job does.

The page is server-rendered, uses no asset from outside (gateways run on closed networks) and
refreshes itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import rq_dashboard
from flask import Blueprint, Flask, Response, redirect, render_template, request, url_for

import gateway.quotas as quotas
from gateway.charts import hour_charts
from gateway.context import runtime
from gateway.operators import account_list, require_operator
from gateway.problems import Problem
from workers import counters, lifecycle, queues, verify
from workers.counters import last_hour
from workers.storage import schema

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")
REFRESH_SECONDS = 10


def same_origin() -> None:
    """CSRF: a browser sends ``Origin`` (or ``Referer``) with every cross-site POST; it must be us."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is None:
        return  # not a browser (curl, the CLI): nothing to forge
    if urlsplit(source).netloc != request.host:
        raise Problem(403, "Forbidden", "cross-origin request refused")


def guard() -> None:
    path = request.path
    if path.startswith(("/dashboard", "/admin")):
        require_operator()
        same_origin()
        if path.startswith("/dashboard/rq/requeue/") and request.method != "POST":
            raise Problem(405, "Method Not Allowed", "requeue with POST")


def init_app(app: Flask, redis_url: str) -> None:
    # App-level, not on rq-dashboard's blueprint: a before_request added to a shared blueprint
    # inside a factory breaks the second create_app().
    app.before_request(guard)
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    rq_dashboard.web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/dashboard/rq")
    app.register_blueprint(bp)


def _ago(buckets: list[dict[str, int]], prefixes: tuple[str, ...]) -> str:
    """How long since the last minute with any of these counts ("this minute", "12 min ago"), or
    "not in the last hour": whether traffic flows, and since when not, in one look."""
    for back, bucket in enumerate(reversed(buckets)):
        if any(v and k.startswith(prefixes) for k, v in bucket.items()):
            return "this minute" if back == 0 else f"{back} min ago"
    return "not in the last hour"


def overview() -> dict[str, Any]:
    rt = runtime()
    conn = rt.conn
    now = time.time()
    hour = last_hour(conn)
    buckets = counters.minutes(conn, now)
    counts = {k.decode(): int(v) for k, v in conn.hgetall(schema.COUNTS).items()}
    delivered, undelivered = counts.get("reports_delivered", 0), counts.get("reports_undelivered", 0)
    failures = lifecycle.latest_failures(conn, 20)
    day = quotas.today()
    with conn.pipeline(transaction=False) as pipe:
        for key in rt.settings.api_keys:
            pipe.hgetall(schema.usage_key(key.name, day))
        usage = [
            {
                "key": key.name,
                "test": key.test,
                **quotas.usage_row(row),
                "limits": quotas.quotas().remaining(key),
            }
            for key, row in zip(rt.settings.api_keys, pipe.execute(), strict=True)
        ]
    for failure in failures:
        failure["at"] = (failure["at"] or "")[:19].replace("T", " ")
    for account in (accounts_ := account_list()):
        if account["since"]:
            account["since"] = account["since"][:19].replace("T", " ")
        if account["balance_at"]:
            age = now - datetime.fromisoformat(account["balance_at"]).timestamp()
            account["balance_age"] = "just now" if age < 90 else f"{age / 60:.0f} min ago"
    return {
        "accounts": accounts_,
        "queues": list(queues.depths(conn).items()),
        "hour": {
            "submissions": hour.get("submissions", 0),
            "recipients": hour.get("recipients", 0),
            "codes": sorted((k.split("|", 1)[1], v) for k, v in hour.items() if k.startswith("code|")),
        },
        "delivery_rate": (f"{100 * delivered / (delivered + undelivered):.1f}%" if delivered + undelivered else "—"),
        "reports": {
            "delivered": delivered,
            "undelivered": undelivered,
            "unknown": counts.get("reports_unknown", 0),
            "orphans": counts.get("orphan_reports", 0),
            "dead": counts.get("dead_lettered", 0),
        },
        "verifications": {
            outcome: sum(n for (_, o), n in verify.outcomes(counts).items() if o == outcome)
            for outcome in ("started", "approved", "failed", "expired", "reported")
        },
        "failures": failures,
        "charts": hour_charts(buckets, queues.WORKER_QUEUES, now),
        "flow": {
            "workers": queues.workers_alive(conn),
            "last_accepted": _ago(buckets, ("accepted",)),
            "last_call": _ago(buckets, ("code|",)),
            "last_report": _ago(buckets, ("delivered", "undelivered")),
        },
        "usage": usage,
        "usage_fields": quotas.USAGE_FIELDS,
        "now": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "refresh": REFRESH_SECONDS,
    }


@bp.get("/")
def index() -> str:
    return render_template("dashboard.html", **overview())


@bp.post("/accounts/<name>/resume")
def resume(name: str) -> Response:
    rt = runtime()
    if name not in rt.settings.accounts:
        raise Problem(404, "Not Found", f"unknown account {name!r}")
    lifecycle.resume_account(rt.settings, rt.conn, name, by="operator (dashboard)")
    return redirect(url_for("dashboard.index"), code=303)  # type: ignore[return-value]


@bp.post("/chunks/<mid>/<int:n>/requeue")
def requeue(mid: str, n: int) -> Response:
    lifecycle.requeue_failed(runtime().conn, runtime().settings, mid, n, by="operator (dashboard)")
    return redirect(url_for("dashboard.index"), code=303)  # type: ignore[return-value]
