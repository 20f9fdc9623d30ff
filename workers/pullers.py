"""Pulling reports (``report``) and replies (``reve_urlencode``), one puller per account.

Every worker runs :func:`tick` each second; a lease in Redis (expiry, renewed by its holder)
makes exactly one process the puller of each account, and another takes over within one lease
period of the holder's death. The time of the next call lives in Redis too, so a takeover keeps
the provider's 5-second gap. The raw answer is stored (``workers.reports.store_pull``) before
anything parses it: an item the provider handed over once is never lost to a crash.
"""

from __future__ import annotations

import logging
import time

import redis

from workers import provider as p
from workers.reports import store_pull
from workers.runtime import Runtime
from workers.storage import schema, scripts

log = logging.getLogger("smsgw.pullers")
FULL = 20  # the provider returns at most 20 items a call
BURST = 50


def hold_lease(conn: redis.Redis, name: str, owner: str, seconds: float) -> bool:
    """Take or renew the fleet-wide lease ``name`` (see ``schema.lease_key``) for ``owner``."""
    return bool(scripts.LEASE(conn, lease=schema.lease_key(name), owner=owner, ttl_ms=int(seconds * 1000)))


def tick(rt: Runtime, owner: str, now: float | None = None) -> int:
    """Pull what is due for every account whose lease this process holds; returns calls made."""
    calls = 0
    for account in rt.settings.accounts:
        if not hold_lease(rt.conn, f"pull:{account}", owner, rt.settings.lease_seconds):
            continue
        for kind, endpoint in (("rpt", "report"), ("mo", "reve_urlencode")):
            # Keep calling within this tick while the provider has more and the configured gap
            # is shorter than a tick (tests); with the provider's 5 s gap that is one call.
            for _ in range(BURST):
                made = _pull(rt, account, kind, endpoint, time.time() if now is None else now)
                calls += made
                if not made or rt.settings.pull_gap_seconds >= 1.0:
                    break
                time.sleep(rt.settings.pull_gap_seconds)
                if now is not None:
                    now += rt.settings.pull_gap_seconds
    return calls


def _pull(rt: Runtime, account: str, kind: str, endpoint: str, now: float) -> int:
    conn, settings = rt.conn, rt.settings
    schedule = schema.pull_schedule_key(account)
    due = float(conn.hget(schedule, kind) or 0)
    if now < due:
        return 0
    # A write before the call: a Redis that refuses writes (full, a replica) fails here, before
    # the provider hands over items it never gives twice and that could not be stored.
    conn.hset(schedule, kind, f"{now + settings.pull_interval_seconds:.3f}")
    try:
        raw = rt.client(account).pull_raw(endpoint)
    except p.ProviderError as e:
        log.warning("pulling %s for %s failed: %s", endpoint, account, e, extra={"account": account})
        return 0
    if raw:
        store_pull(conn, account, kind, raw)
    items = sum(1 for line in raw.splitlines() if line.strip())
    awaiting = conn.zcard(schema.awaiting_key(account)) > 0
    full = items >= FULL
    gap = settings.pull_gap_seconds if full or (kind == "rpt" and awaiting) else settings.pull_interval_seconds
    conn.hset(schedule, kind, f"{now + gap:.3f}")
    return 1 if full else 0  # a short answer ends this wake
