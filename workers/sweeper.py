"""The sweeper: every non-final message and chunk is owned by a live job, or it gets a new one.

Why smsgw needs its own: a worker listening on several queues dequeues with ``BLPOP``; killed
between the pop and its registration, the job is in no list and no registry and stays
``queued`` for ever. A Redis that lost its last second of writes can likewise hold a chunk
whose job is gone. Every ref in the watch set (``schema.WATCH``) has a deadline; when it passes,
the sweeper asks RQ (``workers.queues.job_alive``) for the job that should own it and
re-enqueues when there is none. Re-enqueueing is always safe: the job reads the chunk's state
and does only what that state allows.
"""

from __future__ import annotations

import logging
import time

import redis

from workers import lifecycle
from workers.lifecycle import CHECK, SEND
from workers.queues import job_alive
from workers.settings import Settings
from workers.storage import schema
from workers.storage.schema import Chunk, Message

log = logging.getLogger("smsgw.sweeper")


def sweep(conn: redis.Redis, settings: Settings, now: float | None = None, limit: int = 1000) -> int:
    """Check every ref whose deadline passed; returns how many got a new job."""
    now = time.time() if now is None else now
    revived = 0
    for raw in conn.zrangebyscore(schema.WATCH, "-inf", now, start=0, num=limit):
        ref = raw.decode()
        kind, mid, n = schema.parse_ref(ref)
        try:
            if kind == "m":
                revived += _message(conn, settings, mid, now)
            else:
                revived += _chunk(conn, settings, mid, n, now)
        except redis.RedisError:
            raise
        except Exception:  # one corrupt record must not stop the sweep of the others
            log.exception("sweeping %s failed", ref)
            conn.zadd(schema.WATCH, {ref: now + settings.job_grace_seconds}, xx=True)
    return revived


def _message(conn: redis.Redis, settings: Settings, mid: str, now: float) -> int:
    ref = schema.message_ref(mid)
    msg = Message.load(conn, mid)
    if msg is None or msg.state not in lifecycle.UNPLANNED:
        conn.zrem(schema.WATCH, ref)
        return 0
    # A plan takes seconds; a run past a send job's bound has died (a second run is harmless:
    # the plan checks the message's state in its transaction).
    if job_alive(conn, msg.job, lifecycle.job_timeout(settings, msg.account) + settings.job_grace_seconds):
        conn.zadd(schema.WATCH, {ref: now + settings.job_grace_seconds}, xx=True)
        return 0
    seq = int(conn.hincrby(schema.message_key(mid), Message.field_of("job_seq"), 1))
    with conn.pipeline() as pipe:
        jid = lifecycle.enqueue_plan(
            pipe, conn, settings, mid, account=msg.account, priority=msg.priority, seq=seq, now=now
        )
        pipe.hset(schema.message_key(mid), mapping=Message.short(job=jid))
        pipe.execute()
    log.warning("message %s had no live plan job; enqueued %s", mid, jid, extra={"message_id": mid})
    return 1


def _chunk(conn: redis.Redis, settings: Settings, mid: str, n: int, now: float) -> int:
    ref = schema.chunk_ref(mid, n)
    chunk = Chunk.load(conn, mid, n)
    if chunk is None or chunk.state in lifecycle.FINAL or chunk.state == lifecycle.HELD:
        conn.zrem(schema.WATCH, ref)
        return 0
    timeout = lifecycle.job_timeout(settings, chunk.account) + settings.job_grace_seconds
    if chunk.state == lifecycle.SUBMITTING:
        # The provider call is bounded by its timeouts: past the deadline, whoever made it is
        # gone. A new run finds 'submitting' and takes the ambiguous path.
        lost = now > chunk.deadline
        func = SEND
    elif chunk.state == lifecycle.UNCONFIRMED:
        lost = now > chunk.wait_until and not job_alive(conn, chunk.job, timeout)
        func = CHECK
    else:
        lost = not job_alive(conn, chunk.job, timeout)
        func = SEND
    if not lost:
        conn.zadd(schema.WATCH, {ref: now + settings.job_grace_seconds}, xx=True)
        return 0
    revived = lifecycle.enqueue_next(
        conn,
        settings,
        mid,
        n,
        from_states={chunk.state},
        to_state=chunk.state,
        func=func,
        event="sweeper_revived",
        found=chunk.state,
        lost_job=chunk.job,
    )
    if revived:
        extra = {"message_id": mid, "chunk": n, "linkid": chunk.linkid}
        log.warning("chunk %s:%d (%s) had no live job; re-enqueued", mid, n, chunk.state, extra=extra)
    return int(revived)
