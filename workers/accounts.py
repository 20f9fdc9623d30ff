"""Provider accounts as every worker sees them: held or active, rate, chunk size.

All of it lives in Redis (never in process memory) so N workers on M hosts act as one: a hold
set by one worker stops every other at its next chunk, and the rate limit counts every call.
Resuming an account's held chunks is part of a chunk's life: ``workers.lifecycle.resume_account``.
"""

from __future__ import annotations

import time

import redis

from workers.alerts import alert
from workers.settings import Settings
from workers.storage import schema
from workers.storage.schema import AccountState

ACTIVE = "active"
HELD = "held"
_STATE = AccountState.field_of("state")


def state(conn: redis.Redis, name: str) -> AccountState:
    return AccountState.load(conn, name)


def is_held(conn: redis.Redis, name: str) -> bool:
    return conn.hget(schema.account_key(name), _STATE) == HELD.encode()


#: The hold code of an account that reached its daily limit (``SMSGW_DAILY_LIMIT``).
DAILY_LIMIT = "daily_limit"


def hold(settings: Settings, conn: redis.Redis, name: str, code: int | str, reason: str) -> bool:
    """Hold the account; alert only when this call changed its state. Returns that."""
    key = schema.account_key(name)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                if pipe.hget(key, _STATE) == HELD.encode():
                    pipe.reset()
                    return False
                pipe.multi()
                pipe.hset(key, mapping=AccountState.short(state=HELD, code=str(code), reason=reason, since=time.time()))
                pipe.execute()
                break
            except redis.WatchError:
                continue
    alert(settings, conn, "account_held", account=name, code=code, reason=reason)
    return True


def activate(settings: Settings, conn: redis.Redis, name: str, *, by: str) -> bool:
    """Mark the account active (alerting if it was held); returns whether it was held."""
    key = schema.account_key(name)
    now = time.time()
    fields = {"state": ACTIVE, "code": "", "reason": "", "since": now}
    if was_held := conn.hget(key, _STATE) == HELD.encode():
        fields["healthy_since"] = now  # failback waits from here (workers.routes)
    conn.hset(key, mapping=AccountState.short(**fields))
    if was_held:
        alert(settings, conn, "account_resumed", account=name, by=by)
    return was_held


def hold_and_slot(conn: redis.Redis, name: str) -> tuple[bool, int, float]:
    """In one round trip: whether the account is held, and this call's number in the current
    second's rate window (a slot is taken even if held: harmless, it expires in 2 s), and the
    time it was taken at (for :func:`give_back`)."""
    now = time.time()
    key = schema.rate_key(name, int(now))
    with conn.pipeline(transaction=False) as pipe:
        pipe.hget(schema.account_key(name), _STATE)
        pipe.incr(key)
        pipe.expire(key, 2)
        held, slot, _ = pipe.execute()
    return held == HELD.encode(), int(slot), now


def chunk_size(conn: redis.Redis, settings: Settings, name: str, now: float | None = None) -> int:
    """The configured size, or lower after the provider answered 3: the lowered size doubles
    every ``SMSGW_CHUNK_PROBE_SECONDS`` since, back to the configured one, so one bad minute
    does not halve throughput for good (another 3 lowers it again)."""
    configured = settings.accounts[name].chunk_size
    size_f, at_f = AccountState.field_of("chunk_size"), AccountState.field_of("chunk_lowered_at")
    lowered, at = conn.hmget(schema.account_key(name), size_f, at_f)
    if not lowered:
        return configured
    elapsed = (time.time() if now is None else now) - float(at or 0)
    doublings = min(10, max(0, int(elapsed // settings.chunk_probe_seconds)))
    return min(configured, int(lowered) * 2**doublings)


def lower_chunk_size(conn: redis.Redis, settings: Settings, name: str, size: int) -> None:
    """Answer 3 to a chunk of ``2 * size``: from now on at most ``size`` (probed back up)."""
    if size < chunk_size(conn, settings, name):
        conn.hset(
            schema.account_key(name), mapping=AccountState.short(chunk_size=max(size, 1), chunk_lowered_at=time.time())
        )


def reset_chunk_size(conn: redis.Redis, name: str) -> None:
    """An operator's reset: the configured size again, at once."""
    conn.hdel(schema.account_key(name), AccountState.field_of("chunk_size"), AccountState.field_of("chunk_lowered_at"))


def record_balance(conn: redis.Redis, name: str, balance: str, now: float) -> None:
    conn.hset(schema.account_key(name), mapping=AccountState.short(balance=balance, balance_at=now))


def take_pace(conn: redis.Redis, name: str, per_second: int, now: float, priority: str = "normal") -> bool:
    """May a coalescer send a pool off that is due but not full? Yes while this second's
    partial pools stay within an even share of the rate (at most 1 + rate x the elapsed
    fraction) and the account's calls are not spent. Otherwise the pool grows: under load,
    submissions grow to carry what arrives instead of queueing small ones behind the rate.
    The take is counted atomically (INCR, given back when refused), so two coalescers never
    both take the last share.

    ``high`` is paced on a count of its own against the whole rate; the others share one
    against the rate less ``high``'s reserve (:func:`rate_limit`). Many bulk texts on one
    account thus never make a verification code's pool wait for the next second."""
    second = int(now)
    limit = rate_limit(priority, per_second)
    pace = (schema.high_pace_key if priority == "high" else schema.pace_key)(name, second)
    with conn.pipeline(transaction=False) as pipe:
        pipe.incr(pace)
        pipe.expire(pace, 2)
        pipe.get(schema.rate_key(name, second))
        taken, _, spent = pipe.execute()
    if taken <= min(limit, 1 + int(limit * (now % 1))) and int(spent or 0) < limit:
        return True
    conn.decr(pace)
    return False


def rate_limit(priority: str, per_second: int) -> int:
    """The calls a second a send of ``priority`` may take: ``high`` every one, the others all
    but a fifth, kept for ``high`` (a campaign draining at the account's rate must not make a
    verification code wait for the next second)."""
    if priority == "high" or per_second < 2:
        return per_second
    return per_second - max(1, per_second // 5)


def give_back(conn: redis.Redis, name: str, now: float) -> None:
    """Return a slot taken (at ``now``) past the limit, so it does not count against ``high``."""
    conn.decr(schema.rate_key(name, int(now)))


def acquire_rate(conn: redis.Redis, name: str, per_second: int, *, max_wait: float = 30.0) -> bool:
    """Block until this account may make one more provider call this second.

    A counter per account per second, shared by every worker through Redis. Returns False if
    no slot came within ``max_wait`` (the caller then retries later rather than hold a worker).
    """
    deadline = time.monotonic() + max_wait
    while True:
        now = time.time()
        key = schema.rate_key(name, int(now))
        with conn.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2)
            count = pipe.execute()[0]
        if count <= per_second:
            return True
        give_back(conn, name, now)
        if time.monotonic() >= deadline:
            return False
        time.sleep(max(0.001, int(now) + 1 - now))


# -- spend limits per China day ------------------------------------------------------------------


def take_spend(conn: redis.Redis, settings: Settings, name: str, parts: int, now: float) -> int:
    """Take ``parts`` from the account's allowance for today (China time). Returns the parts
    that were left before: at least ``parts`` when they were taken, fewer (nothing taken) when
    they would pass the limit. Passing ``SMSGW_DAILY_WARN`` alerts, once a day."""
    limit, warn = settings.accounts[name].daily_limit, settings.accounts[name].daily_warn
    key = schema.spend_key(name, schema.usage_day(now))
    with conn.pipeline(transaction=False) as pipe:
        pipe.incrby(key, parts)
        pipe.expire(key, schema.SPEND_TTL)
        used, _ = pipe.execute()
    before = used - parts
    if limit and used > limit:
        conn.decrby(key, parts)
        return max(0, limit - before)
    if warn and before < warn <= used:
        alert(settings, conn, "daily_spend_warning", account=name, parts=used, warn=warn, limit=limit)
    return limit - before if limit else parts


def give_back_spend(conn: redis.Redis, name: str, parts: int, taken_at: float) -> None:
    """Nothing was sent after all (a refused connection, a hold, a split): the parts go back to
    the day they were taken from."""
    conn.decrby(schema.spend_key(name, schema.usage_day(taken_at)), parts)


def spent_today(conn: redis.Redis, name: str, now: float) -> int:
    return int(conn.get(schema.spend_key(name, schema.usage_day(now))) or 0)
