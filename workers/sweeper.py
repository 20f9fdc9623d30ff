"""The sweeper: every non-final message and chunk is owned by a live job, or it gets a new one.

Why smsgw needs its own: a worker listening on several queues dequeues with ``BLPOP``; killed
between the pop and its registration, the job is in no list and no registry and stays
``queued`` for ever. A Redis that lost its last second of writes can likewise hold a chunk
whose job is gone. Every ref in ``sg:watch`` has a deadline; when it passes, the sweeper looks
for the job that should own it and re-enqueues when there is none. Re-enqueueing is always
safe: the job reads the chunk's state and does only what that state allows.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import redis

from workers import store
from workers.jobs import CHECK, PLAN, SEND, enqueue_send, job_timeout
from workers.queues import QUEUE_NAMES
from workers.runtime import Runtime

log = logging.getLogger("smsgw.sweeper")


def job_alive(conn: redis.Redis, job_id: str, queue_name: str, timeout: float) -> bool:
    """Whether RQ will still run (or is running) this job."""
    status, started = conn.hmget(f"rq:job:{job_id}", "status", "started_at")
    if status is None:
        return False
    status_s = status.decode()
    if status_s == "queued":
        return conn.lpos(f"rq:queue:{queue_name}", job_id) is not None
    if status_s in ("scheduled", "deferred"):
        return True
    if status_s == "started":
        if not started:
            return True
        begun = datetime.strptime(started.decode().rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
        return (datetime.now(UTC) - begun).total_seconds() < timeout
    return False


def sweep(rt: Runtime, now: float | None = None, limit: int = 1000) -> int:
    """Check every ref whose deadline passed; returns how many got a new job."""
    conn = rt.conn
    now = time.time() if now is None else now
    revived = 0
    for raw in conn.zrangebyscore(store.WATCH, "-inf", now, start=0, num=limit):
        ref = raw.decode()
        kind, mid, n = store.parse_ref(ref)
        try:
            revived += _message(rt, mid, now) if kind == "m" else _chunk(rt, mid, n, now)
        except redis.RedisError:
            raise
        except Exception:  # one corrupt record must not stop the sweep of the others
            log.exception("sweeping %s failed", ref)
            conn.zadd(store.WATCH, {ref: now + rt.settings.job_grace_seconds}, xx=True)
    return revived


def _message(rt: Runtime, mid: str, now: float) -> int:
    conn, settings = rt.conn, rt.settings
    ref = f"m:{mid}"
    state, account, priority, job_id = (
        v.decode() if v else "" for v in conn.hmget(store.msg_key(mid), "st", "a", "pr", "job")
    )
    if state not in ("accepted", "scheduled"):
        conn.zrem(store.WATCH, ref)
        return 0
    queue = QUEUE_NAMES[priority]
    if job_alive(conn, job_id, queue, job_timeout(settings, account) + settings.job_grace_seconds):
        conn.zadd(store.WATCH, {ref: now + settings.job_grace_seconds}, xx=True)
        return 0
    seq = int(conn.hincrby(store.msg_key(mid), "jq", 1))
    new_id = f"p-{mid}-{seq}"
    with conn.pipeline() as pipe:
        pipe.hset(store.msg_key(mid), "job", new_id)
        rt.queue(priority).enqueue_many(
            [rt.queue(priority).prepare_data(PLAN, args=(mid,), job_id=new_id, timeout=600)],
            pipeline=pipe,
        )
        pipe.zadd(store.WATCH, {ref: now + settings.job_grace_seconds})
        pipe.execute()
    log.warning("message %s had no live plan job; enqueued %s", mid, new_id, extra={"message_id": mid})
    return 1


def _chunk(rt: Runtime, mid: str, n: int, now: float) -> int:
    conn, settings = rt.conn, rt.settings
    ref = store.chunk_ref(mid, n)
    chunk = store.load_chunk(conn, mid, n)
    state = chunk.get("st")
    if state is None or state in store.FINAL or state == store.HELD:
        conn.zrem(store.WATCH, ref)
        return 0
    timeout = job_timeout(settings, chunk["a"]) + settings.job_grace_seconds
    queue = QUEUE_NAMES[chunk["pr"]]
    if state == store.SUBMITTING:
        # The provider call is bounded by its timeouts: past the deadline, whoever made it is
        # gone. A new run finds 'submitting' and takes the ambiguous path.
        lost = now > float(chunk.get("dl", "0"))
        func = SEND
    elif state == store.UNCONFIRMED:
        lost = now > float(chunk.get("uw", "0")) and not job_alive(conn, chunk["job"], queue, timeout)
        func = CHECK
    else:
        lost = not job_alive(conn, chunk.get("job", ""), queue, timeout)
        func = SEND
    if not lost:
        conn.zadd(store.WATCH, {ref: now + settings.job_grace_seconds}, xx=True)
        return 0
    revived = enqueue_send(
        conn, mid, n, from_states={state}, to_state=state, settings=settings, func=func,
        event="sweeper_revived", found=state, lost_job=chunk.get("job", ""),
    )  # fmt: skip
    if revived:
        log.warning("chunk %s:%d (%s) had no live job; re-enqueued", mid, n, state,
                    extra={"message_id": mid, "chunk": n, "linkid": chunk.get("lk")})  # fmt: skip
    return int(revived)
