"""``/metrics`` in Prometheus text format.

Two sources, each correct with many processes on many hosts:
- the API's own HTTP metrics, with prometheus-client's multiprocess mode when gunicorn runs
  several workers (``PROMETHEUS_MULTIPROC_DIR``, set by ``smsgw api``);
- everything the workers do (provider calls, jobs, recipients, reports, accounts, queues),
  read from Redis at scrape time (``workers.counters`` records it there).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.problems import Problem
from workers import accounts, queues, routes, verify
from workers.counters import LATENCY_BUCKETS
from workers.runtime import Runtime, check_durability
from workers.storage import schema
from workers.storage.schema import ALERTS, COUNTS, FOLD, METRICS

bp = Blueprint("metrics", __name__)


class RedisCollector(Collector):
    """Reads the fleet's figures from Redis when Prometheus scrapes."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        conn, settings = self.rt.conn, self.rt.settings
        raw = {k.decode(): v.decode() for k, v in conn.hgetall(METRICS).items()}
        counts = {k.decode(): int(v) for k, v in conn.hgetall(COUNTS).items()}

        calls = CounterMetricFamily(
            "smsgw_provider_calls", "Provider send calls by answer code", labels=["account", "endpoint", "code"]
        )
        jobs = CounterMetricFamily("smsgw_jobs", "Jobs by outcome", labels=["job", "outcome"])
        buckets: dict[str, dict[str, int]] = {}
        sums: dict[str, float] = {}
        for key, value in raw.items():
            kind, *parts = key.split("|")
            if kind == "calls":
                calls.add_metric(parts, int(value))
            elif kind == "jobs":
                jobs.add_metric(parts, int(value))
            elif kind == "lat":
                buckets.setdefault(parts[0], {})[parts[1]] = int(value)
            elif kind == "latsum":
                sums[parts[0]] = float(value)
        yield calls
        yield jobs
        latency = HistogramMetricFamily(
            "smsgw_provider_call_seconds", "Provider send call latency", labels=["endpoint"]
        )
        for endpoint, by_le in buckets.items():
            series = [(str(le), by_le.get(str(le), 0)) for le in LATENCY_BUCKETS] + [("+Inf", by_le.get("+Inf", 0))]
            latency.add_metric([endpoint], series, sums.get(endpoint, 0.0))
        yield latency

        depth = GaugeMetricFamily("smsgw_queue_depth", "Jobs waiting per RQ queue", labels=["queue"])
        for name, length in queues.depths(conn).items():
            depth.add_metric([name], length)
        yield depth
        oldest = GaugeMetricFamily(
            "smsgw_queue_oldest_seconds", "How long the oldest waiting job of each queue has waited", labels=["queue"]
        )
        for name, age in queues.oldest_wait(conn).items():
            oldest.add_metric([name], age)
        yield oldest
        yield GaugeMetricFamily("smsgw_workers", "RQ workers alive on every host", value=queues.workers_alive(conn))
        durable = not check_durability(conn, "ignore")
        yield GaugeMetricFamily("smsgw_redis_durable", "1 when Redis has AOF on and evicts nothing", value=int(durable))
        memory = conn.info("memory")
        yield GaugeMetricFamily("smsgw_redis_memory_used_bytes", "Redis used_memory", value=memory["used_memory"])
        yield GaugeMetricFamily(
            "smsgw_redis_memory_max_bytes",
            "Redis maxmemory (0: no limit); at the limit, with noeviction, Redis refuses every write",
            value=memory.get("maxmemory", 0),
        )

        recipients = CounterMetricFamily("smsgw_recipients", "Recipients reaching each state", labels=["state"])
        for state in ("submitted", "failed", "cancelled", "expired"):
            recipients.add_metric([state], counts.get(f"recipients_{state}", 0))
        for state in ("delivered", "undelivered", "unknown"):
            recipients.add_metric([state], counts.get(f"reports_{state}", 0))
        yield recipients

        accepted = CounterMetricFamily(
            "smsgw_accepted", "Accepted recipients and their billable parts (recipients x parts)", labels=["unit"]
        )
        for unit in ("recipients", "parts"):
            # A one-recipient, one-part request is counted once, as ``accepted_single``.
            accepted.add_metric([unit], counts.get(f"accepted_{unit}", 0) + counts.get("accepted_single", 0))
        yield accepted
        yield CounterMetricFamily(
            "smsgw_suppressed_recipients",
            "Recipients not sent: frequency caps and opt-outs",
            value=counts.get("suppressed_recipients", 0),
        )
        yield CounterMetricFamily(
            "smsgw_possible_duplicates",
            "high priority chunks resubmitted under a new linkid after an ambiguous outcome (may deliver twice)",
            value=counts.get("possible_duplicates", 0),
        )
        yield CounterMetricFamily(
            "smsgw_unconfirmed_chunks",
            "normal/bulk chunks not resent after an ambiguous outcome with no report (may not have gone out)",
            value=counts.get("unconfirmed", 0),
        )
        yield CounterMetricFamily(
            "smsgw_folded_messages",
            "One-recipient messages folded at rest into shared records (workers.archive)",
            value=counts.get("folded", 0),
        )
        yield GaugeMetricFamily(
            "smsgw_fold_waiting",
            "Submissions waiting to be folded (due a minute after their last report)",
            value=conn.zcard(FOLD),
        )
        items = CounterMetricFamily("smsgw_inbound_items", "Reports and replies by outcome", labels=["kind"])
        for kind in (
            "reports",
            "replies",
            "orphan_reports",
            "reports_after_fold",
            "dead_lettered",
            "pushed",
            "push_malformed",
        ):
            items.add_metric([kind], counts.get(kind, 0))
        yield items
        yield SummaryMetricFamily(
            "smsgw_report_lag_seconds",
            "Submission to first final report",
            count_value=counts.get("report_lag_count", 0),
            sum_value=counts.get("report_lag_seconds_sum", 0),
        )

        held = GaugeMetricFamily("smsgw_account_held", "1 while the account is held", labels=["account", "reason"])
        balance = GaugeMetricFamily("smsgw_account_balance", "Last known provider balance", labels=["account"])
        low = GaugeMetricFamily(
            "smsgw_account_balance_low", "1 while the balance is below SMSGW_LOW_BALANCE", labels=["account"]
        )
        for name in settings.accounts:
            account = accounts.state(conn, name)
            held.add_metric([name, account.reason], 1 if account.state == accounts.HELD else 0)
            low.add_metric([name], account.balance_low)
            if account.balance:
                balance.add_metric([name], float(account.balance))
        runway = GaugeMetricFamily(
            "smsgw_account_balance_runway_hours",
            "Hours until the balance runs out at the last hour's pace (0: not spending)",
            labels=["account"],
        )
        short = GaugeMetricFamily(
            "smsgw_account_balance_runway_short",
            "1 while the balance runs out sooner than SMSGW_BALANCE_RUNWAY_HOURS at that pace",
            labels=["account"],
        )
        conversion = GaugeMetricFamily(
            "smsgw_account_conversion",
            "Share of the account's high recipients whose code was used: last window, and baseline",
            labels=["account", "window"],
        )
        conversion_low = GaugeMetricFamily(
            "smsgw_account_conversion_low",
            "1 while the account's codes are used SMSGW_VERIFY_CONVERSION_DROP less than its baseline",
            labels=["account"],
        )
        for name in settings.accounts:
            account_state = accounts.state(conn, name)
            runway.add_metric([name], account_state.runway_hours)
            short.add_metric([name], account_state.runway_low)
            conversion.add_metric([name, "recent"], account_state.conversion_recent)
            conversion.add_metric([name, "baseline"], account_state.conversion_base)
            conversion_low.add_metric([name], account_state.conversion_low)
        verifications = CounterMetricFamily(
            "smsgw_verifications",
            "Verifications by outcome (started, approved, failed, expired; reported: uses callers reported)",
            labels=["account", "outcome"],
        )
        for (name, outcome), value in sorted(verify.outcomes(counts).items()):
            verifications.add_metric([name, outcome], value)
        yield conversion
        yield conversion_low
        yield verifications
        yield held
        yield balance
        yield low
        yield runway
        yield short
        spend = GaugeMetricFamily(
            "smsgw_account_parts_today",
            "Billable parts sent today (China time), for SMSGW_DAILY_LIMIT",
            labels=["account"],
        )
        for name in settings.accounts:
            spend.add_metric([name], accounts.spent_today(conn, name, time.time()))
        yield spend
        route = GaugeMetricFamily(
            "smsgw_route",
            "1 for the account each priority of an account's traffic goes to now (failover)",
            labels=["account", "priority", "to"],
        )
        for name in settings.failover_accounts:
            now_to = routes.current(conn, name)
            for priority in ("high", "normal", "bulk"):
                route.add_metric([name, priority, now_to.get(priority, name)], 1)
        yield route
        yield CounterMetricFamily(
            "smsgw_route_switches",
            "Times an account's traffic moved to another account or back",
            value=counts.get("route_switches", 0),
        )

        alerts = CounterMetricFamily("smsgw_alerts", "Alerts raised", labels=["event"])
        for event, value in conn.hgetall(ALERTS).items():
            alerts.add_metric([event.decode()], int(value))
        yield alerts
        yield GaugeMetricFamily(
            "smsgw_watched", "Unfinished messages and chunks the sweeper watches", value=conn.zcard(schema.WATCH)
        )
        yield GaugeMetricFamily(
            "smsgw_callbacks_due",
            "Messages whose callback events are due for delivery now (workers.notifications)",
            value=conn.zcount(schema.CALLBACKS_DUE, "-inf", time.time()),
        )


#: HTTP methods counted by name; any other (a client may send any token) is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


#: What the metrics port answers besides /metrics: a probe can check it is up.
METRICS_PORT_PATHS = frozenset({"/metrics", "/healthz"})


def _port_gate(metrics_port: str) -> Response | None:
    """With ``SMSGW_METRICS_BIND`` set, ``/metrics`` is answered on its port only, and that port
    answers nothing else: the public API port does not hand out queue depths and balances."""
    if not metrics_port:
        return None
    on_metrics_port = request.environ.get("SERVER_PORT") == metrics_port
    if request.path == "/metrics" and not on_metrics_port:
        return Problem(404, "Not Found", f"/metrics is served on port {metrics_port} (SMSGW_METRICS_BIND)").response()
    if on_metrics_port and request.path not in METRICS_PORT_PATHS:
        return Problem(404, "Not Found", f"port {metrics_port} serves /metrics only").response()
    return None


def init_app(app: Flask, rt: Runtime) -> None:
    registry = CollectorRegistry()
    multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    if multiproc:
        MultiProcessCollector(registry)
    target = None if multiproc else registry
    requests_total = Counter("smsgw_http_requests", "HTTP requests", ["route", "method", "status"], registry=target)
    latency = Histogram("smsgw_http_request_seconds", "HTTP request latency", ["route", "method"], registry=target)
    registry.register(RedisCollector(rt))
    app.extensions["smsgw_metrics"] = registry
    app.extensions["smsgw_push_refused"] = Counter(
        "smsgw_push_refused",
        "Pushed reports and replies the receiver could not store (answered 503): Redis refused or was away",
        registry=target,
    )

    @app.before_request
    def start_timer() -> Response | None:
        g.metrics_start = time.perf_counter()
        return _port_gate(rt.settings.metrics_port)

    @app.after_request
    def count_request(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if "/callbacks/provider/" in route:
            route = "/callbacks/provider/<secret>"
        method = request.method if request.method in METHODS else "other"  # a label set that stays bounded
        requests_total.labels(route, method, str(response.status_code)).inc()
        start = g.get("metrics_start")
        if start is not None:
            latency.labels(route, method).observe(time.perf_counter() - start)
        return response


@bp.get("/metrics")
def metrics() -> Response:
    registry = current_app.extensions["smsgw_metrics"]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
