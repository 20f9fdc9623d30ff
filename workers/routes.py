"""Where an account's traffic goes: health, failover to backup accounts, and failback.

An account is *unhealthy* while it is held (answers 1, 2, 4, 8, its daily limit, an operator's
hold), after ``SMSGW_FAILOVER_ERRORS`` calls in a row failed to connect, timed out or got a 5xx,
or while its deliveries are slow: at least ``SMSGW_FAILOVER_SLOW_SHARE`` of the last
``SMSGW_FAILOVER_SLOW_WINDOW`` seconds of reports came more than ``SMSGW_FAILOVER_SLOW_SECONDS``
after their submission (GOV.UK Notify's rule), over at least :data:`SLOW_MIN_REPORTS` reports;
and for ``high`` traffic only, while its codes are used far less than before (``workers.verify``).
Health lives in the account's hash in Redis, so every worker on every host sees the same. While
an account is unhealthy, the priorities in ``SMSGW_FAILOVER_PRIORITIES`` (``high,normal``) go to
its first healthy backup (``SMSGW_FAILOVER``, ``SMSGW_ACCOUNT_<NAME>_FAILOVER``); ``bulk`` waits
for its own account unless listed (a backup channel often costs more). Traffic returns once the
account has been healthy for ``SMSGW_FAILBACK_SECONDS``. An operator may pin an account's route.

What moves is only what never reached the provider: a chunk about to be sent (pending, a retry
after a refused connection, held, or refused with a hold answer), under a new linkid on the
backup; its old linkid is retired. An ambiguous call never moves (``jobs.handle_ambiguous``
keeps its rules). An account failing on errors is probed with ``user_info`` by the maintenance
round, at most once per :data:`PROBE_SECONDS`; a success makes it healthy again.
"""

from __future__ import annotations

import logging
import time

import redis

from workers import accounts, lifecycle
from workers import provider as p
from workers.alerts import alert
from workers.settings import Settings
from workers.storage import schema, scripts
from workers.storage.schema import AccountState, Chunk

log = logging.getLogger("smsgw.routes")
PROBE_SECONDS = 5
#: Provider errors that count towards an account's failures in a row (nothing else does:
#: a refused text is the text's fault, not the account's).
COUNTED = (p.ConnectError, p.ReadTimeout, p.HTTPStatusError)


#: Fewer reports than this in the window say nothing about an account's speed.
SLOW_MIN_REPORTS = 20


def healthy(settings: Settings, state: AccountState, priority: str = "") -> bool:
    """Fit to carry ``priority`` traffic: not held, answering, reporting on time, and for
    ``high``, its codes still used about as often as before (``workers.verify``)."""
    if priority == "high" and state.conversion_low:
        return False
    return state.state != accounts.HELD and state.fails < settings.failover_errors and not state.slow


def count_report(conn: redis.Redis, settings: Settings, account: str, lag: float, now: float) -> None:
    """A first report of an account's submission, ``lag`` seconds after it: counted per minute."""
    key = schema.lag_key(account, int(now // 60))
    with conn.pipeline(transaction=False) as pipe:
        pipe.hincrby(key, "n", 1)
        if lag > settings.failover_slow_seconds:
            pipe.hincrby(key, "slow", 1)
        pipe.expire(key, settings.failover_slow_window + 120)
        pipe.execute()


def check_speed(conn: redis.Redis, settings: Settings, account: str, now: float) -> bool:
    """Mark the account slow while at least ``SMSGW_FAILOVER_SLOW_SHARE`` of its reports in the
    last ``SMSGW_FAILOVER_SLOW_WINDOW`` seconds came later than ``SMSGW_FAILOVER_SLOW_SECONDS``
    after their submission (with a minimum volume); returns whether it is slow."""
    minute = int(now // 60)
    keys = [schema.lag_key(account, m) for m in range(minute - settings.failover_slow_window // 60, minute + 1)]
    with conn.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "n", "slow")
        rows = pipe.execute()
    total = sum(int(n or 0) for n, _ in rows)
    late = sum(int(s or 0) for _, s in rows)
    slow = total >= SLOW_MIN_REPORTS and late >= settings.failover_slow_share * total
    was = accounts.state(conn, account).slow
    if slow != bool(was):
        fields = {"slow": int(slow)} if slow else {"slow": 0, "healthy_since": now}
        conn.hset(schema.account_key(account), mapping=AccountState.short(**fields))
        log.warning(
            "%s reports %s", account, "come late: unhealthy" if slow else "on time again", extra={"account": account}
        )
    return slow


def route(conn: redis.Redis, settings: Settings, account: str, priority: str, now: float | None = None) -> str:
    """The account that ``account``'s ``priority`` traffic goes to now (itself, most of the time).
    Costs one read of the account's hash, and of each backup's while it is unhealthy."""
    backups = settings.accounts[account].failover
    own = accounts.state(conn, account)
    if own.pinned and own.pinned in settings.accounts:
        return own.pinned
    if not backups or priority not in settings.failover_priorities:
        return account
    now = time.time() if now is None else now
    if healthy(settings, own, priority) and now - own.healthy_since >= settings.failback_seconds:
        return account
    for backup in backups:
        if healthy(settings, accounts.state(conn, backup), priority):
            return backup
    return account  # no better place: it waits for its own


def note(conn: redis.Redis, settings: Settings, account: str, priority: str, target: str) -> None:
    """Record where the traffic goes; a change is a switch: counted, alerted, on the dashboard."""
    switched = scripts.SWITCH_ROUTE(
        conn, routes=schema.route_key(account), counts=schema.COUNTS, priority=priority, target=target, own=account
    )
    if switched:
        log.warning("%s traffic of %s now goes to %s", priority, account, target, extra={"account": account})
        alert(settings, conn, "route_switched", account=account, priority=priority, to=target)


def current(conn: redis.Redis, account: str) -> dict[str, str]:
    """Priority → the account its traffic went to last (absent: its own)."""
    return {k.decode(): v.decode() for k, v in conn.hgetall(schema.route_key(account)).items()}


def count_call(conn: redis.Redis, account: str, error: p.ProviderError | None) -> None:
    """A call's outcome for the account's health: failures in a row, or back to none."""
    key = schema.account_key(account)
    if isinstance(error, COUNTED):
        conn.hincrby(key, AccountState.field_of("fails"), 1)
    elif error is None and conn.hget(key, AccountState.field_of("fails")) not in (None, b"0"):
        conn.hset(key, mapping=AccountState.short(fails=0, healthy_since=time.time()))


def probe(conn: redis.Redis, settings: Settings, client: p.ProviderClient, account: str) -> bool:
    """An account failing on errors gets one cheap call (``user_info``) at most every
    :data:`PROBE_SECONDS`; an answer makes it healthy again. Returns whether it is healthy now."""
    state = accounts.state(conn, account)
    if state.fails < settings.failover_errors:
        return True
    if not conn.set(schema.lease_key(f"probe:{account}"), 1, nx=True, ex=PROBE_SECONDS):
        return False
    try:
        client.balance()
    except p.ProviderError as e:
        log.info("probe of %s failed: %s", account, type(e).__name__, extra={"account": account})
        return False
    conn.hset(schema.account_key(account), mapping=AccountState.short(fails=0, healthy_since=time.time()))
    log.warning("%s answers again: healthy", account, extra={"account": account})
    return True


def pin(conn: redis.Redis, settings: Settings, account: str, target: str, *, by: str) -> None:
    """Send every priority of ``account`` to ``target`` (itself: keep it on its own whatever its
    health) until :func:`unpin`."""
    conn.hset(schema.account_key(account), mapping=AccountState.short(pinned=target))
    alert(settings, conn, "route_pinned", account=account, to=target, by=by)


def unpin(conn: redis.Redis, settings: Settings, account: str, *, by: str) -> None:
    conn.hdel(schema.account_key(account), AccountState.field_of("pinned"))
    alert(settings, conn, "route_unpinned", account=account, by=by)


def release_movable(conn: redis.Redis, settings: Settings, account: str, limit: int = 500) -> int:
    """Chunks parked on a held account that may go to a backup now are sent on (each send
    routes itself). Returns how many were released."""
    if not settings.accounts[account].failover:
        return 0
    if all(route(conn, settings, account, pr) == account for pr in settings.failover_priorities):
        return 0
    released = 0
    for raw in conn.zrange(schema.held_key(account), 0, limit - 1):
        _, mid, n = schema.parse_ref(raw.decode())
        chunk = Chunk.load(conn, mid, n)
        if chunk is None or chunk.state != lifecycle.HELD:
            conn.zrem(schema.held_key(account), raw)
        elif route(conn, settings, account, chunk.priority) != account:
            if lifecycle.enqueue_next(conn, settings, mid, n, from_states={lifecycle.HELD}, event="to_backup"):
                released += 1
            conn.zrem(schema.held_key(account), raw)
    return released
