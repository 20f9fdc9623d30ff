"""Periodic work that must happen once across the whole fleet, not once per worker.

Each ``smsgw worker`` runs :func:`loop` in a thread; a lease in Redis (``SET NX PX``) lets one
of them do each round. Rounds: the sweeper, the balance check that resumes accounts held for
insufficient balance, failing chunks held longer than allowed, and folding what is at rest.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid

import redis

from workers import accounts, archive, counters, lifecycle, notifications, pullers, queues, reports, routes, verify
from workers import provider as p
from workers.alerts import alert
from workers.runtime import Runtime
from workers.storage import schema
from workers.storage.schema import AccountState, Chunk
from workers.sweeper import sweep

log = logging.getLogger("smsgw.maintenance")
MAINTENANCE_LEASE = "maintenance"
INGEST_LEASE = "ingest"
TICK = 1.0
#: Seconds of folding a worker does each tick, at most (it stops sooner when nothing is due).
FOLD_BUDGET = 0.5
OVERDUE_LAG = 10.0
BALANCE_REFRESH_SECONDS = 60
#: With a low-balance threshold set, the balance is asked once a minute (one call per account).
LOW_BALANCE_REFRESH_SECONDS = 60


def run_once(rt: Runtime, now: float | None = None) -> dict[str, int]:
    now = time.time() if now is None else now
    out = {
        "revived": sweep(rt.conn, rt.settings, now),
        "resumed": 0,
        "expired_holds": 0,
        "overdue": rescue_overdue(rt, now),
    }
    out["unknown"] = reports.mark_unknown(rt, now, rt.settings.report_window_seconds)
    out["expired"] = lifecycle.expire_due(
        rt.conn, now, on_expired=functools.partial(notifications.recipient_expired, rt)
    )
    out["verifications_expired"] = verify.expire_due(rt.conn, rt.settings, now)
    counters.sample_depths(rt.conn, queues.depths(rt.conn), now)  # the dashboard's depth chart
    for name in rt.settings.accounts:
        out["resumed"] += _balance_check(rt, name, now)
        out["resumed"] += _daily_limit_check(rt, name, now)
        if name in rt.settings.failover_accounts:
            routes.probe(rt.conn, rt.settings, rt.client(name), name)
            routes.check_speed(rt.conn, rt.settings, name, now)
            out["to_backup"] = out.get("to_backup", 0) + routes.release_movable(rt.conn, rt.settings, name)
        out["expired_holds"] += _expire_holds(rt, name, now)
        verify.check_conversion(rt.conn, rt.settings, name, now)
    return out


def fold(rt: Runtime, now: float) -> int:
    """Every worker's share of folding, each tick, outside the maintenance lease: each folds
    what it claims (``workers.archive``), so folding grows with the fleet."""
    return archive.fold_due(rt.conn, now, budget=FOLD_BUDGET)


def rescue_overdue(rt: Runtime, now: float, lag: float = OVERDUE_LAG) -> int:
    """Enqueue scheduled jobs more than ``lag`` seconds overdue.

    RQ's scheduler runs in one worker under a lock that outlives a crashed holder by 61 s and
    is re-taken only in worker maintenance (every 10 minutes by default): retries, ``send_at``
    and ambiguous checks would stall that long. Taking a job out of the registry with ZREM
    means only one rescuer enqueues it; if RQ's scheduler enqueues it too, the job finds its
    chunk already moved on and does nothing.
    """
    rescued = 0
    for queue, job in queues.take_overdue(rt.conn, now - lag):
        queue.enqueue_job(job)
        rescued += 1
    if rescued:
        log.warning("enqueued %d overdue scheduled jobs (is RQ's scheduler running?)", rescued)
    return rescued


def _balance_check(rt: Runtime, name: str, now: float) -> int:
    """An account held for balance (2) resumes by itself once the balance is positive. Active
    accounts get their balance refreshed now and then, for the dashboard and /metrics."""
    conn = rt.conn
    state = accounts.state(conn, name)
    if state.state != accounts.HELD or state.code != "2":
        low = rt.settings.accounts[name].low_balance
        every = LOW_BALANCE_REFRESH_SECONDS if low else BALANCE_REFRESH_SECONDS
        if now - state.balance_at >= every:
            conn.hset(schema.account_key(name), mapping=AccountState.short(balance_at=now))
            try:
                balance = rt.client(name).balance()
            except p.ProviderError as e:
                log.warning("balance of %s unknown: %s", name, e, extra={"account": name})
                return 0
            accounts.record_balance(conn, name, str(balance), now)
            if low:
                _low_balance(rt, name, state, float(balance), low)
            _runway(rt, name, state, float(balance), now)
        return 0
    if now - state.checked < rt.settings.balance_check_seconds:
        return 0
    conn.hset(schema.account_key(name), mapping=AccountState.short(checked=now))
    try:
        balance = rt.client(name).balance()
    except p.ProviderError as e:
        log.warning("balance check of %s failed: %s", name, e, extra={"account": name})
        return 0
    accounts.record_balance(conn, name, str(balance), now)
    if balance > 0:
        return lifecycle.resume_account(rt.settings, conn, name, by="balance check")
    return 0


#: The pace of spending is measured over 10 minutes at least and an hour at most.
PACE_MIN_SECONDS, PACE_MAX_SECONDS = 600, 3600


def _runway(rt: Runtime, name: str, state: AccountState, balance: float, now: float) -> None:
    """At the pace of the last hour, how long until the balance runs out; one alert when that
    falls under ``SMSGW_BALANCE_RUNWAY_HOURS``, one when it is back above."""
    fields: dict[str, object] = {}
    if not state.pace_at or now - state.pace_at > PACE_MAX_SECONDS or not state.pace_balance:
        fields.update(pace_balance=str(balance), pace_at=now)  # a new hour to measure over
    if state.pace_at and state.pace_balance and now - state.pace_at >= PACE_MIN_SECONDS:
        per_hour = (float(state.pace_balance) - balance) / ((now - state.pace_at) / 3600)
        runway = balance / per_hour if per_hour > 0 else 0.0
        short = 0 < runway < rt.settings.balance_runway_hours
        fields["runway_hours"] = round(runway, 2)
        if short != bool(state.runway_low):
            fields["runway_low"] = int(short)
            event = "balance_runway_short" if short else "balance_runway_ok"
            alert(rt.settings, rt.conn, event, account=name, hours=round(runway, 1), balance=balance)
    if fields:
        rt.conn.hset(schema.account_key(name), mapping=AccountState.short(**fields))


def _low_balance(rt: Runtime, name: str, state: AccountState, balance: float, low: float) -> None:
    """One alert when the balance falls below the threshold, one when it is back above."""
    below = balance < low
    if below == bool(state.balance_low):
        return
    rt.conn.hset(schema.account_key(name), mapping=AccountState.short(balance_low=int(below)))
    event = "balance_low" if below else "balance_recovered"
    alert(rt.settings, rt.conn, event, account=name, balance=balance, threshold=low)


def _daily_limit_check(rt: Runtime, name: str, now: float) -> int:
    """An account held at its daily limit resumes by itself once the China day has turned
    (or the limit was raised)."""
    state = accounts.state(rt.conn, name)
    if state.state != accounts.HELD or state.code != accounts.DAILY_LIMIT:
        return 0
    if accounts.spent_today(rt.conn, name, now) >= rt.settings.accounts[name].daily_limit > 0:
        return 0
    return int(lifecycle.resume_account(rt.settings, rt.conn, name, by="a new day for the daily limit") > 0)


def _expire_holds(rt: Runtime, name: str, now: float) -> int:
    """Chunks held longer than SMSGW_HOLD_MAX_AGE_SECONDS fail, except behind a daily limit,
    which ends with its day."""
    conn = rt.conn
    if accounts.state(conn, name).code == accounts.DAILY_LIMIT:
        return 0
    cutoff = now - rt.settings.hold_max_age_seconds
    expired = 0
    for raw in conn.zrangebyscore(schema.held_key(name), "-inf", cutoff):
        _, mid, n = schema.parse_ref(raw.decode())
        chunk = Chunk.load(conn, mid, n)
        if chunk is not None and chunk.state == lifecycle.HELD:
            reason = f"held longer than {rt.settings.hold_max_age_seconds} s: {chunk.hold_reason}"
            lifecycle.fail(conn, rt.settings, chunk, reason, {})
            expired += 1
        conn.zrem(schema.held_key(name), raw)
    return expired


def loop(rt: Runtime, stop: threading.Event) -> None:
    """Each second: ingest stored reports and replies, pull what is due, and every
    ``SMSGW_SWEEP_SECONDS`` a maintenance round; each under its own lease."""
    me = uuid.uuid4().hex
    interval = rt.settings.sweep_seconds
    next_round = 0.0
    while not stop.wait(TICK):
        try:
            now = time.time()
            if now >= next_round:
                next_round = now + interval
                lease = schema.lease_key(MAINTENANCE_LEASE)
                if rt.conn.set(lease, me, nx=True, px=int(interval * 1000 * 0.9)):
                    result = run_once(rt)
                    if any(result.values()):
                        log.info("maintenance: %s", result)
            fold(rt, time.time())
            if pullers.hold_lease(rt.conn, INGEST_LEASE, me, rt.settings.lease_seconds):
                while reports.ingest(rt) and not stop.is_set():
                    pass
            pullers.tick(rt, me)
        except redis.RedisError as e:
            log.warning("maintenance round skipped: %s", type(e).__name__)
        except Exception:  # the thread must outlive one bad round; the next one retries
            log.exception("maintenance round failed")


def start(rt: Runtime) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(rt, stop), name="smsgw-maintenance", daemon=True)
    thread.start()
    return thread, stop
