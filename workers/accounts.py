"""Provider accounts as every worker sees them: held or active, rate, chunk size.

All of it lives in Redis (never in process memory) so N workers on M hosts act as one: a hold
set by one worker stops every other at its next chunk, and the rate limit counts every call.
"""

from __future__ import annotations

import time

import redis

from workers import store
from workers.alerts import alert
from workers.settings import Settings

ACTIVE = "active"
HELD = "held"


def state(conn: redis.Redis, name: str) -> dict[str, str]:
    raw = store.decode(conn.hgetall(store.account_key(name)))  # type: ignore[arg-type]
    raw.setdefault("st", ACTIVE)
    return raw


def is_held(conn: redis.Redis, name: str) -> bool:
    return conn.hget(store.account_key(name), "st") == HELD.encode()


def hold(settings: Settings, conn: redis.Redis, name: str, code: int, reason: str) -> bool:
    """Hold the account; alert only when this call changed its state. Returns that."""
    key = store.account_key(name)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                if pipe.hget(key, "st") == HELD.encode():
                    pipe.reset()
                    return False
                pipe.multi()
                pipe.hset(
                    key,
                    mapping={
                        "st": HELD,
                        "code": code,
                        "reason": reason,
                        "since": f"{time.time():.0f}",
                    },
                )
                pipe.execute()
                break
            except redis.WatchError:
                continue
    alert(settings, conn, "account_held", account=name, code=code, reason=reason)
    return True


def resume(settings: Settings, conn: redis.Redis, name: str, *, by: str) -> int:
    """Make the account active and send its held chunks again; returns how many were resumed.

    Safe to call twice or concurrently: each chunk moves held → pending by compare-and-set, and
    only the caller that moved it enqueues it.
    """
    from workers.jobs import enqueue_send  # jobs imports this module

    key = store.account_key(name)
    was_held = conn.hget(key, "st") == HELD.encode()
    conn.hset(key, mapping={"st": ACTIVE, "code": "", "reason": "", "since": f"{time.time():.0f}"})
    if was_held:
        alert(settings, conn, "account_resumed", account=name, by=by)
    resumed = 0
    for raw in conn.zrange(store.held_key(name), 0, -1):
        _, mid, n = store.parse_ref(raw.decode())
        if enqueue_send(conn, mid, n, from_states={store.HELD}, event="resumed", by=by):
            resumed += 1
        conn.zrem(store.held_key(name), raw)
    return resumed


def hold_and_slot(conn: redis.Redis, name: str) -> tuple[bool, int]:
    """In one round trip: whether the account is held, and this call's number in the current
    second's rate window (a slot is taken even if held: harmless, it expires in 2 s)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.hget(store.account_key(name), "st")
        pipe.incr(f"sg:rate:{name}:{int(time.time())}")
        pipe.expire(f"sg:rate:{name}:{int(time.time())}", 2)
        held, slot, _ = pipe.execute()
    return held == HELD.encode(), int(slot)


def chunk_size(conn: redis.Redis, settings: Settings, name: str) -> int:
    """The configured size, or lower if the provider answered 3 to a smaller one."""
    configured = settings.accounts[name].chunk_size
    lowered = conn.hget(store.account_key(name), "chunk_size")
    return min(configured, int(lowered)) if lowered else configured


def lower_chunk_size(conn: redis.Redis, name: str, size: int) -> None:
    key = store.account_key(name)
    current = conn.hget(key, "chunk_size")
    if current is None or int(current) > size:
        conn.hset(key, "chunk_size", max(size, 1))


def acquire_rate(conn: redis.Redis, name: str, per_second: int, *, max_wait: float = 30.0) -> bool:
    """Block until this account may make one more provider call this second.

    A counter per account per second, shared by every worker through Redis. Returns False if
    no slot came within ``max_wait`` (the caller then retries later rather than hold a worker).
    """
    deadline = time.monotonic() + max_wait
    while True:
        now = time.time()
        key = f"sg:rate:{name}:{int(now)}"
        with conn.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2)
            count = pipe.execute()[0]
        if count <= per_second:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(max(0.001, int(now) + 1 - now))
