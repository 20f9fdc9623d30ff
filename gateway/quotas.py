"""Per API key: a request rate with a burst, and a daily quota of billable parts; usage by day.

Both live in smsgw's Redis, so every API process counts together. The rate is the ``limits``
package's (the library behind flask-limiter): a moving window of ``BURST`` requests per
``BURST / RATE`` seconds (a refused request takes nothing). The quota is a counter per key and
China day (``schema.quota_key``), the day ``/v1/usage`` reports: it starts at midnight in
China, not at the key's first request of the day, and a refused cost is given back at once.
Over either: 429 with ``Retry-After`` and a problem document, and nothing is queued.

Usage per key and day (requests, recipients, parts, suppressed, then outcomes) is counted in the
process that accepts (``gateway.messages``) and written within a second (``workers.tally``; a
process killed without warning loses at most that second's counts), kept 90 days: what finance
reconciles against the provider's bill.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import redis
from flask import Flask, current_app
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from gateway.problems import Problem
from workers.runtime import Runtime
from workers.settings import ApiKey
from workers.storage import schema

USAGE_FIELDS = (
    *("requests", "recipients", "parts", "suppressed"),
    *("delivered", "undelivered", "unknown", "failed", "expired"),
    *(f"verifications_{o}" for o in ("started", "approved", "failed", "expired")),
)


class Quotas:
    def __init__(self, rt: Runtime) -> None:
        storage = RedisStorage("redis://", connection_pool=rt.conn.connection_pool, key_prefix=schema.LIMITS)
        self.conn = rt.conn
        self.rate = MovingWindowRateLimiter(storage)

    @staticmethod
    def rate_item(key: ApiKey) -> RateLimitItemPerSecond:
        return RateLimitItemPerSecond(key.burst, max(1, math.ceil(key.burst / key.rate)))

    def take_request(self, key: ApiKey) -> None:
        if not key.rate:
            return
        item = self.rate_item(key)
        if not self.rate.hit(item, key.name):
            reset = self.rate.get_window_stats(item, key.name).reset_time
            raise _too_many(f"more than {key.rate} requests a second (burst {key.burst})", reset)

    def take_parts(self, key: ApiKey, parts: int, now: float | None = None) -> None:
        if not key.daily or parts <= 0:
            return
        now = time.time() if now is None else now
        counter = schema.quota_key(key.name, schema.usage_day(now))
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.incrby(counter, parts)
            pipe.expire(counter, schema.QUOTA_TTL)
            used, _ = pipe.execute()
        if used > key.daily:
            self.give_back(key, parts, now)
            detail = f"the daily quota of {key.daily} billable parts would be exceeded ({parts} asked)"
            raise _too_many(detail, next_china_midnight(now))

    def give_back(self, key: ApiKey, parts: int, now: float | None = None) -> None:
        """Parts :meth:`take_parts` took for a request it refused, or for recipients then not
        sent (over a cap)."""
        if key.daily and parts > 0:
            self.conn.decrby(schema.quota_key(key.name, schema.usage_day(time.time() if now is None else now)), parts)

    def remaining(self, key: ApiKey) -> dict[str, Any]:
        out: dict[str, Any] = {"rate": key.rate or None, "burst": key.burst or None, "daily_parts": key.daily or None}
        if key.daily:
            used = int(self.conn.get(schema.quota_key(key.name, schema.usage_day(time.time()))) or 0)
            out["daily_parts_left"] = max(0, key.daily - used)
        return out


def _too_many(detail: str, reset: float) -> Problem:
    wait = max(1, math.ceil(reset - time.time()))
    return Problem(429, "Too Many Requests", detail, headers={"Retry-After": str(wait)})


def next_china_midnight(now: float) -> float:
    """When the quota's day ends: the next 00:00 in China (UTC+8, no daylight saving)."""
    return (math.floor((now + 8 * 3600) / 86400) + 1) * 86400 - 8 * 3600


def today(now: float | None = None) -> str:
    return schema.usage_day(time.time() if now is None else now)


def today_date() -> date:
    """Today in China Standard Time, the day the usage counters count in."""
    return datetime.strptime(today(), "%Y%m%d").date()


def usage_rows(conn: redis.Redis, key_of: Callable[[str], str], start: date, end: date) -> list[dict[str, Any]]:
    """One row a day from ``start`` to ``end``: every counter, 0 where nothing happened."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    with conn.pipeline(transaction=False) as pipe:
        for day in days:
            pipe.hgetall(key_of(day.strftime("%Y%m%d")))
        rows = pipe.execute()
    return [{"day": day.isoformat(), **usage_row(row)} for day, row in zip(days, rows, strict=True)]


def usage_row(raw: dict[bytes, bytes]) -> dict[str, int]:
    """A day's usage hash as counters. The door counts a one-recipient, one-part request as one
    ``single`` (one increment, not three): it is a request, a recipient and a part."""
    row = {f: int(raw.get(f.encode(), 0)) for f in USAGE_FIELDS}
    single = int(raw.get(b"single", 0))
    for f in ("requests", "recipients", "parts"):
        row[f] += single
    return row


def init_app(app: Flask, rt: Runtime) -> None:
    app.extensions["smsgw_quotas"] = Quotas(rt)


def quotas() -> Quotas:
    return current_app.extensions["smsgw_quotas"]  # type: ignore[no-any-return]
