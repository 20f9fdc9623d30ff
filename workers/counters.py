"""Figures the workers record, kept in Redis so that every process on every host adds to the
same numbers; ``gateway.metrics`` reads them at scrape time (no per-process state to merge).

One pipeline per provider call: a counter by endpoint and code, a latency histogram, and a
per-minute bucket that the dashboard sums over the last hour.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.client import Pipeline

from workers.storage.schema import METRICS, MINUTE_TTL, minute_key

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def job_outcome(conn: redis.Redis, job: str, outcome: str, call: dict[str, Any]) -> None:
    """A job's outcome and, if it called the provider, that call's figures: one round trip."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.hincrby(METRICS, f"jobs|{job}|{outcome}", 1)
        if call:
            provider_call(pipe, **call)
        pipe.execute()


def provider_call(pipe: Pipeline, *, account: str, endpoint: str, code: str, seconds: float, recipients: int) -> None:
    pipe.hincrby(METRICS, f"calls|{account}|{endpoint}|{code}", 1)
    for le in LATENCY_BUCKETS:
        if seconds <= le:
            pipe.hincrby(METRICS, f"lat|{endpoint}|{le}", 1)
    pipe.hincrby(METRICS, f"lat|{endpoint}|+Inf", 1)
    pipe.hincrbyfloat(METRICS, f"latsum|{endpoint}", seconds)
    minute = minute_key(time.time())
    pipe.hincrby(minute, f"code|{code}", 1)
    if code == "0":
        pipe.hincrby(minute, "submissions", 1)
        pipe.hincrby(minute, "recipients", recipients)
    pipe.expire(minute, MINUTE_TTL)


def minutes(conn: redis.Redis, now: float | None = None, count: int = 60) -> list[dict[str, int]]:
    """The last ``count`` minutes' buckets, oldest first (empty dicts for quiet minutes)."""
    now = time.time() if now is None else now
    with conn.pipeline(transaction=False) as pipe:
        for i in reversed(range(count)):
            pipe.hgetall(minute_key(now - 60 * i))
        return [{k.decode(): int(float(v)) for k, v in b.items()} for b in pipe.execute()]


def sample_depths(conn: redis.Redis, depths: dict[str, int], now: float | None = None) -> None:
    """Queue depths into this minute's bucket (the last sample of the minute stands)."""
    key = minute_key(time.time() if now is None else now)
    with conn.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping={f"depth|{q}": n for q, n in depths.items()})
        pipe.expire(key, MINUTE_TTL)
        pipe.execute()


def last_hour(conn: redis.Redis, now: float | None = None) -> dict[str, int]:
    now = time.time() if now is None else now
    with conn.pipeline(transaction=False) as pipe:
        for i in range(60):
            pipe.hgetall(minute_key(now - 60 * i))
        buckets = pipe.execute()
    total: dict[str, int] = {}
    for bucket in buckets:
        for k, v in bucket.items():
            total[k.decode()] = total.get(k.decode(), 0) + int(v)
    return total
