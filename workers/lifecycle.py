"""A chunk's life, in one place: how it is made, named, moved, parked, resumed, failed, cancelled.

A chunk is one provider submission: up to 1000 recipients under one linkid. Its state moves
only by :func:`transition` (compare-and-set with an allowed-from set), so a second run of a job,
the sweeper and an operator can never both act on it::

    pending ─► submitting ─► submitted                     (provider answered 0)
       ▲            ├──────► retry ─► submitting …         (nothing reached the provider)
       │            ├──────► unconfirmed ─► submitted      (ambiguous; a report came)
       │            │              └─────► pending         (no report: new linkid)
       │            ├──────► held ─► pending               (account held; resumed)
       │            ├──────► split                          (answer 3: two new chunks)
       │            └──────► failed                         (5, 7, budget spent, held too long)
       └── cancelled (from pending, retry, held)

Every chunk is owned by exactly one RQ job at a time, named by :func:`job_id` and written on the
chunk; the sweeper (``workers.sweeper``) gives a chunk whose job is gone a new one. Nothing here
calls the provider: that is ``workers.jobs``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue

from workers import accounts, guardrails
from workers.alerts import alert
from workers.chunks import chunked, new_linkid
from workers.queues import QUEUE_NAMES
from workers.settings import Settings
from workers.storage import schema
from workers.storage.schema import Chunk, ChunkState, Message, MessageState, ReportState
from workers.text import mobile_of
from workers.times import rfc3339

log = logging.getLogger("smsgw.lifecycle")

PENDING = ChunkState.PENDING
SUBMITTING = ChunkState.SUBMITTING
SUBMITTED = ChunkState.SUBMITTED
RETRY = ChunkState.RETRY
UNCONFIRMED = ChunkState.UNCONFIRMED
HELD = ChunkState.HELD
SPLIT = ChunkState.SPLIT
FAILED = ChunkState.FAILED
CANCELLED = ChunkState.CANCELLED
EXPIRED = ChunkState.EXPIRED

#: A chunk in one of these states will never be submitted again.
FINAL = frozenset({SUBMITTED, FAILED, CANCELLED, SPLIT, EXPIRED})
#: States a send job may start a provider call from.
SENDABLE = frozenset({PENDING, RETRY})
CANCELLABLE = frozenset({PENDING, RETRY, HELD})

#: Message states before the plan job cut it into chunks.
UNPLANNED = frozenset({MessageState.ACCEPTED, MessageState.SCHEDULED})

HISTORY_MAX = 50
FAILURES_MAX = 200

# The RQ entry points (``workers.jobs``), by dotted path so that this module never imports them.
PLAN = "workers.jobs.plan_message"
SEND = "workers.jobs.send_chunk"
SEND_MANY = "workers.jobs.send_chunks"
CHECK = "workers.jobs.check_unconfirmed"
_JOB_LETTER = {PLAN: "p", SEND: "s", SEND_MANY: "g", CHECK: "k"}
PLAN_TIMEOUT = 600
RESULT_TTL = 300
FAILURE_TTL = 7 * 24 * 3600


def job_id(func: str, mid: str, n: int | None, seq: int) -> str:
    """The one way to name a job: a plan job per message, a send or check job per chunk, each
    with a sequence number so a retry never collides with the job that scheduled it."""
    letter = _JOB_LETTER[func]
    return f"{letter}-{mid}-{seq}" if n is None else f"{letter}-{mid}-{n}-{seq}"


def job_timeout(settings: Settings, account: str) -> int:
    """Well under RQ's ~90 s heartbeat window, so a live job is never declared abandoned."""
    a = settings.accounts[account]
    return int(a.connect_timeout + a.read_timeout + 35)


def _job_data(settings: Settings, account: str, func: str, args: tuple[Any, ...], jid: str) -> Any:
    timeout = PLAN_TIMEOUT if func == PLAN else job_timeout(settings, account)
    return Queue.prepare_data(
        func, args=args, job_id=jid, timeout=timeout, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL
    )


def _enqueue(pipe: Pipeline, conn: redis.Redis, priority: str, datas: list[Any], at: datetime | None = None) -> None:
    queue = Queue(QUEUE_NAMES[priority], connection=conn)
    if at is None:
        queue.enqueue_many(datas, pipeline=pipe)
        return
    for data in datas:
        queue.enqueue_at(
            at,
            data.func,
            args=data.args,
            job_id=data.job_id,
            timeout=data.timeout,
            result_ttl=data.result_ttl,
            failure_ttl=data.failure_ttl,
            pipeline=pipe,
        )


# -- history ----------------------------------------------------------------------------------


def append_history(pipe: Pipeline | redis.Redis, mid: str, n: int, event: str, **fields: Any) -> None:
    """Append one step to the chunk's history (kept to the last ``HISTORY_MAX``)."""
    line = json.dumps({"at": round(time.time(), 3), "event": event, **fields}, ensure_ascii=False)
    key = schema.history_key(mid, n)
    pipe.rpush(key, line)
    pipe.ltrim(key, -HISTORY_MAX, -1)


# -- the plan job -----------------------------------------------------------------------------


def enqueue_plan(
    pipe: Pipeline,
    conn: redis.Redis,
    settings: Settings,
    mid: str,
    *,
    account: str,
    priority: str,
    seq: int,
    at: datetime | None = None,
    now: float | None = None,
) -> str:
    """Add the message's plan job (now, or at ``at``) and its sweeper entry to ``pipe``; returns
    the job id, which the caller writes on the message. Accept and the sweeper both use this."""
    now = time.time() if now is None else now
    jid = job_id(PLAN, mid, None, seq)
    _enqueue(pipe, conn, priority, [_job_data(settings, account, PLAN, (mid,), jid)], at)
    due = at.timestamp() if at is not None else now
    pipe.zadd(schema.WATCH, {schema.message_ref(mid): due + settings.job_grace_seconds})
    return jid


# -- making chunks ----------------------------------------------------------------------------


def plan(conn: redis.Redis, settings: Settings, mid: str) -> str:
    """Cut the message into chunks, give each its linkid, and fan out one send job per chunk.

    One transaction: if this run dies before it commits, nothing half exists and the sweeper
    runs it again; if it committed, a second run finds the message ``sending`` and returns.
    The plan job runs it for a message; ``workers.coalesce`` runs it inline for a batch.
    """
    key = schema.message_key(mid)
    with conn.pipeline() as pipe:
        pipe.watch(key)
        raw = pipe.hgetall(key)
        msg = Message.from_hash(raw, id=mid)
        if msg.state not in UNPLANNED:
            pipe.reset()
            return msg.state or "missing"
        size = accounts.chunk_size(conn, settings, msg.account)
        items = msg.items.split(";")
        parts = list(enumerate(chunked(items, size)))
        members = list(chunked(msg.mids.split(";"), size)) if msg.mids else []
        ttl = schema.ttl_of(pipe, key, settings.retention_seconds)
        pipe.multi()
        create_chunks(
            pipe,
            conn,
            settings,
            mid,
            parts,
            account=msg.account,
            priority=msg.priority,
            ttl=ttl,
            redact=msg.redact,  # a batch's 2: every member's text goes (``scripts.CLAIM_POOL``)
            api_key=msg.api_key,
            members=members,
            valid_until=msg.valid_until,
        )
        pipe.hset(
            key,
            mapping=Message.short(
                state=MessageState.SENDING, chunks=len(parts), chunk_seq=len(parts), planned=time.time()
            ),
        )
        pipe.hdel(key, Message.field_of("items"), Message.field_of("mids"))
        pipe.zrem(schema.WATCH, schema.message_ref(mid))
        try:
            pipe.execute()
        except redis.WatchError:
            return "raced"
    log.info("planned %s in %d chunks", mid, len(parts), extra={"message_id": mid, "account": msg.account})
    return "planned"


def create_chunks(
    pipe: Pipeline,
    conn: redis.Redis,
    settings: Settings,
    mid: str,
    parts: Sequence[tuple[int, Sequence[str]]],
    *,
    account: str,
    priority: str,
    ttl: int,
    split_from: int = -1,
    redact: int = 0,
    api_key: str = "",
    members: Sequence[Sequence[str]] = (),
    valid_until: float = 0.0,
) -> list[int]:
    """Add to ``pipe`` each chunk ``(n, items)``: its hash with a fresh linkid, the linkid's
    mapping back to it, its sweeper entry, its history and its first send job. The plan job and
    a split both make chunks this way. A batch's chunks also carry ``members``: the message
    each item belongs to, part by part.

    Consecutive chunks share a send job, ``SMSGW_SENDS_IN_FLIGHT`` at most: a worker keeps that
    many provider calls in flight at once (``workers.jobs.send_chunks``), each chunk still on its
    own state machine, and each chunk names the shared job, so the sweeper finds it lost (and
    gives that chunk a job of its own) exactly as before."""
    now = time.time()
    datas = []
    size = max(1, settings.sends_in_flight)
    groups = [[n for n, _ in parts[i : i + size]] for i in range(0, len(parts), size)]
    job_of = {n: job_id(SEND, mid, n, 1) if len(g) == 1 else job_id(SEND_MANY, mid, g[0], 1) for g in groups for n in g}
    for i, (n, items) in enumerate(parts):
        linkid = new_linkid(mid)
        jid = job_of[n]
        chunk = Chunk(
            mid=mid,
            n=n,
            state=PENDING,
            linkid=linkid,
            items=";".join(items),
            recipients=len(items),
            account=account,
            priority=priority,
            job_seq=1,
            job=jid,
            updated=now,
            split_from=split_from,
            redact=int(redact),
            api_key=api_key,
            mids=";".join(members[i]) if members else "",
            valid_until=valid_until,
        )
        key = schema.chunk_key(mid, n)
        pipe.hset(key, mapping=chunk.to_hash())
        pipe.expire(key, ttl)
        pipe.set(schema.linkid_key(linkid), f"{mid}:{n}", ex=ttl)
        pipe.zadd(schema.WATCH, {schema.chunk_ref(mid, n): now + settings.job_grace_seconds})
        if valid_until:
            pipe.zadd(schema.EXPIRY, {schema.chunk_ref(mid, n): valid_until})
        extra = {"split_from": split_from} if split_from >= 0 else {}
        append_history(pipe, mid, n, "planned", linkid=linkid, **extra)
        pipe.expire(schema.history_key(mid, n), ttl)
    for g in groups:
        func, args = (SEND, (mid, g[0])) if len(g) == 1 else (SEND_MANY, (mid, g))
        datas.append(_job_data(settings, account, func, args, job_of[g[0]]))
    _enqueue(pipe, conn, priority, datas)
    return [n for n, _ in parts]


# -- moving chunks ----------------------------------------------------------------------------


def transition(
    conn: redis.Redis,
    mid: str,
    n: int,
    allowed: Iterable[str],
    new_state: str,
    updates: dict[str, Any] | None = None,
    *,
    linkid: str | None = None,
    also: Callable[[Pipeline, Chunk], None] | None = None,
) -> Chunk | None:
    """Move chunk ``n`` to ``new_state`` if its state is in ``allowed`` (and, given ``linkid``,
    it still carries that linkid); returns the chunk as it was, or ``None`` if it did not move.

    ``updates`` are :class:`Chunk` attributes to write with the state. WATCH/MULTI: a concurrent
    writer (a second run of the same job, the sweeper, an operator) makes one of the two fail
    the check instead of both acting. ``also`` adds writes to the same transaction (message
    counters, indexes, the next job) and sees the chunk as it was.
    """
    key = schema.chunk_key(mid, n)
    allowed = frozenset(allowed)
    fields = Chunk.short(state=new_state, updated=time.time(), **(updates or {}))
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.hgetall(key)
                before = Chunk.from_hash(raw, mid=mid)
                if not raw or before.state not in allowed:
                    return None
                if linkid is not None and before.linkid != linkid:
                    return None
                keys = _member_keys(conn, before) if new_state in (FAILED, EXPIRED) else {}
                texts = _member_texts(conn, before) if new_state in FINAL and new_state != SPLIT else {}
                pipe.multi()
                pipe.hset(key, mapping=fields)
                if new_state in FINAL:
                    _count_final(pipe, mid, before, new_state, keys, texts)
                if also is not None:
                    also(pipe, before)
                pipe.execute()
                if new_state in FINAL and before.redact:
                    redact_if_done(conn, mid)
                return before
            except redis.WatchError:
                continue


def redact_if_done(conn: redis.Redis, mid: str) -> bool:
    """Drop the message's text (a verification code) and its chunks' 点点通 variables once every
    chunk is final, keeping the length and no digest of it (a short text's hash gives the text
    back): nothing can need them again (a redacted failed chunk cannot be requeued)."""
    msg = Message.load(conn, mid)
    if msg is None or not msg.text or sum(msg.chunks_final.values()) < msg.chunks:
        return False
    with conn.pipeline(transaction=False) as pipe:
        for n in range(msg.chunk_seq):
            pipe.hget(schema.chunk_key(mid, n), Chunk.field_of("items"))
        items = pipe.execute()
    with conn.pipeline() as pipe:
        redact(pipe, mid, msg.text, "")
        for n, raw in enumerate(items):
            if raw and b"," in raw:  # 点点通 groups "mobile,v0,v1": keep the mobiles only
                pipe.hset(schema.chunk_key(mid, n), Chunk.field_of("items"), _mobiles_only(raw.decode()))
        pipe.execute()
    return True


def redact(pipe: Pipeline, mid: str, text: str, items: str) -> None:
    """Queue the redaction of a message: its text goes (its length stays), and its 点点通 values
    with it (``items``: the message's own, when it still holds them)."""
    key = schema.message_key(mid)
    pipe.hdel(key, Message.field_of("text"), Message.field_of("variables"))
    pipe.hset(key, mapping=Message.short(text_length=len(text)))
    if "," in items:
        pipe.hset(key, Message.field_of("items"), _mobiles_only(items))


def _mobiles_only(items: str) -> str:
    return ";".join(group.split(",", 1)[0] for group in items.split(";"))


def _count_final(
    pipe: Pipeline,
    mid: str,
    chunk: Chunk,
    state: str,
    member_keys: dict[str, int],
    texts: dict[str, tuple[int | None, str]],
) -> None:
    """A chunk reached a final state: the message's counters follow, in the same transaction.
    A batch's chunk counts for each member message it carries (a split carries them on), and
    redacts those whose texts go (``texts``, from :func:`_member_texts`) in the same write."""
    key = schema.message_key(mid)
    pipe.hincrby(key, Message.final_field(schema.CHUNKS_IN, state), 1)
    if state != SPLIT:
        pipe.hincrby(key, Message.final_field(schema.RECIPIENTS_IN, state), chunk.recipients)
        pipe.hincrby(schema.COUNTS, f"recipients_{state}", chunk.recipients)
        for member in chunk.mids.split(";") if chunk.mids else ():
            if member in texts:
                _count_member_redacted(pipe, member, state, *texts[member])
            else:
                _count_member(pipe, member, state)
    if state in (FAILED, EXPIRED):
        _count_unsent(pipe, chunk, state, member_keys or {chunk.api_key: chunk.recipients})
    pipe.zrem(schema.WATCH, schema.chunk_ref(mid, chunk.n))
    pipe.zrem(schema.EXPIRY, schema.chunk_ref(mid, chunk.n))


def _count_unsent(pipe: Pipeline, chunk: Chunk, state: str, by_key: dict[str, int]) -> None:
    """Recipients that ended without being sent (failed, expired): this minute's chart and the
    day's usage of their keys and account."""
    count = sum(by_key.values())
    minute = schema.minute_key(time.time())
    pipe.hincrby(minute, state, count)
    pipe.expire(minute, schema.MINUTE_TTL)
    day = schema.usage_day(time.time())
    for api_key, n in by_key.items():
        pipe.hincrby(schema.usage_key(api_key, day), state, n)
        pipe.expire(schema.usage_key(api_key, day), schema.USAGE_TTL)
    pipe.hincrby(schema.account_usage_key(chunk.account, day), state, count)
    pipe.expire(schema.account_usage_key(chunk.account, day), schema.USAGE_TTL)


def _count_member(pipe: Pipeline, member: str, state: str, by: int = 1) -> None:
    """A member of a batch has one recipient and its one chunk is the batch's chunk that carries
    it: its recipient's count says its chunk's too (``Message`` reads it so), one write, not two."""
    pipe.hincrby(schema.message_key(member), Message.final_field(schema.RECIPIENTS_IN, state), by)


def _count_member_redacted(pipe: Pipeline, member: str, state: str, length: int | None, mobile: str) -> None:
    """:func:`_count_member` and :func:`redact` in two writes, not five: a member reaches a final
    state once (it travels in one batch's chunk; a split is not final for it), so its count is
    written as 1, with its mobile alone as its items, the text's length (``None``: written when
    it was claimed), and the text goes."""
    key = schema.message_key(member)
    pipe.hdel(key, Message.field_of("text"), Message.field_of("variables"))
    fields: dict[str, Any] = {Message.final_field(schema.RECIPIENTS_IN, state): 1}
    if mobile:
        fields[Message.field_of("items")] = mobile
    if length is not None:
        fields.update(Message.short(text_length=length))
    pipe.hset(key, mapping=fields)


def _member_texts(conn: redis.Redis, chunk: Chunk) -> dict[str, tuple[int | None, str]]:
    """A batch's chunk about to be final: the members whose texts go then, with their mobiles
    (the chunk's) and their texts' lengths. A batch whose every member is redacted (``redact``
    2) says so itself, and each member's length was written when it was claimed: nothing to
    read (``None``: not written again)."""
    members = chunk.members
    if not chunk.redact or not members:
        return {}
    if chunk.redact == 2:
        return {member: (None, mobile) for mobile, member in members.items()}
    with conn.pipeline(transaction=False) as pipe:
        for member in members.values():
            pipe.hmget(schema.message_key(member), Message.field_of("text"), Message.field_of("redact"))
        found = pipe.execute()
    return {
        member: (len(text.decode()), mobile)
        for (mobile, member), (text, to_redact) in zip(members.items(), found, strict=True)
        if text and to_redact == b"1"
    }


def _member_keys(conn: redis.Redis, chunk: Chunk) -> dict[str, int]:
    """A batch's chunk: how many of its recipients each API key sent (for the day's usage)."""
    if not chunk.mids:
        return {}
    with conn.pipeline(transaction=False) as pipe:
        for member in chunk.mids.split(";"):
            pipe.hget(schema.message_key(member), Message.field_of("api_key"))
        keys = [(k or b"").decode() for k in pipe.execute()]
    return {k: keys.count(k) for k in set(keys) if k}


def _redact_members(conn: redis.Redis, chunk: Chunk) -> None:
    """A batch's chunk is final: its members' texts go as their own message's would."""
    members = chunk.mids.split(";") if chunk.mids else []
    with conn.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.hmget(schema.message_key(member), *(Message.field_of(f) for f in ("text", "redact", "items")))
        found = pipe.execute()
    with conn.pipeline(transaction=False) as pipe:
        for member, (text, to_redact, items) in zip(members, found, strict=True):
            if text and to_redact == b"1":
                redact(pipe, member, text.decode(), (items or b"").decode())
        pipe.execute()


def enqueue_next(
    conn: redis.Redis,
    settings: Settings,
    mid: str,
    n: int,
    *,
    from_states: Iterable[str],
    to_state: str = PENDING,
    delay: float = 0.0,
    updates: dict[str, Any] | None = None,
    event: str,
    func: str = SEND,
    extra: Callable[[Pipeline], None] | None = None,
    **event_fields: Any,
) -> bool:
    """Move the chunk ``from_states`` → ``to_state`` and enqueue its next job (now or after
    ``delay``), atomically; the chunk names the job that now owns it."""
    now = time.time()

    def also(pipe: Pipeline, before: Chunk) -> None:
        seq = before.job_seq + 1
        jid = job_id(func, mid, n, seq)
        pipe.hset(schema.chunk_key(mid, n), mapping=Chunk.short(job_seq=seq, job=jid))
        at = datetime.now(UTC) + timedelta(seconds=delay) if delay > 0 else None
        _enqueue(pipe, conn, before.priority, [_job_data(settings, before.account, func, (mid, n), jid)], at)
        pipe.zadd(schema.WATCH, {schema.chunk_ref(mid, n): now + delay + settings.job_grace_seconds})
        append_history(pipe, mid, n, event, job=jid, delay=round(delay, 3), **event_fields)
        if extra is not None:
            extra(pipe)

    return transition(conn, mid, n, from_states, to_state, updates, also=also) is not None


def mark_submitted(
    conn: redis.Redis,
    mid: str,
    n: int,
    *,
    from_states: Iterable[str],
    linkid: str,
    event: str,
    updates: dict[str, Any] | None = None,
    then: Callable[[Pipeline, Chunk], None] | None = None,
    **event_fields: Any,
) -> bool:
    """The provider has the chunk: it is final, and its recipients now await reports. ``then``
    adds the caller's writes to the same transaction."""
    now = time.time()

    def also(pipe: Pipeline, before: Chunk) -> None:
        pipe.zadd(schema.awaiting_key(before.account), {schema.chunk_ref(mid, n): now})
        append_history(pipe, mid, n, event, linkid=linkid, **event_fields)
        if then is not None:
            then(pipe, before)

    fields = {"code": "0", "submitted_at": now, **(updates or {})}
    return transition(conn, mid, n, from_states, SUBMITTED, fields, linkid=linkid, also=also) is not None


def park_held(
    conn: redis.Redis,
    settings: Settings,
    chunk: Chunk,
    from_states: Iterable[str],
    updates: dict[str, Any] | None = None,
) -> str:
    """Park the chunk on its held account; it burns nothing while it waits for a resume."""
    mid, n, account = chunk.mid, chunk.n, chunk.account
    reason = accounts.state(conn, account).reason

    def also(pipe: Pipeline, before: Chunk) -> None:
        pipe.zadd(schema.held_key(account), {schema.chunk_ref(mid, n): time.time()}, nx=True)
        pipe.zrem(schema.WATCH, schema.chunk_ref(mid, n))
        append_history(pipe, mid, n, "held", account=account, reason=reason)

    transition(conn, mid, n, from_states, HELD, {"hold_reason": reason, **(updates or {})}, also=also)
    # The account may have been resumed between our hold and our park: never strand a chunk.
    if not accounts.is_held(conn, account) and enqueue_next(
        conn, settings, mid, n, from_states={HELD}, event="resumed"
    ):
        conn.zrem(schema.held_key(account), schema.chunk_ref(mid, n))
    return "held"


def move(conn: redis.Redis, settings: Settings, chunk: Chunk, target: str, from_states: Iterable[str]) -> str:
    """Move a chunk that never reached the provider to another account (failover, failback,
    an operator's pin), under a new linkid there; the old one is retired, never used again."""
    mid, n = chunk.mid, chunk.n
    fresh = new_linkid(mid)
    ttl = schema.ttl_of(conn, schema.chunk_key(mid, n), settings.retention_seconds)

    def mapping(pipe: Pipeline) -> None:
        pipe.set(schema.linkid_key(fresh), f"{mid}:{n}", ex=ttl)
        pipe.hincrby(schema.COUNTS, "chunks_moved", 1)

    moved = enqueue_next(
        conn,
        settings,
        mid,
        n,
        from_states=from_states,
        updates={"account": target, "linkid": fresh, "hold_reason": ""},
        event="moved",
        extra=mapping,
        to=target,
        old_linkid=chunk.linkid,
        linkid=fresh,
    )
    if moved:
        extra = {"message_id": mid, "chunk": n, "linkid": fresh, "account": target}
        log.info("chunk moved from %s to %s", chunk.account, target, extra=extra)
    return "moved" if moved else "raced"


def resume_account(settings: Settings, conn: redis.Redis, name: str, *, by: str) -> int:
    """Make the account active and send its held chunks again; returns how many were resumed.

    Safe to call twice or concurrently: each chunk moves held → pending by compare-and-set, and
    only the caller that moved it enqueues it.
    """
    accounts.activate(settings, conn, name, by=by)
    resumed = 0
    for raw in conn.zrange(schema.held_key(name), 0, -1):
        _, mid, n = schema.parse_ref(raw.decode())
        if enqueue_next(conn, settings, mid, n, from_states={HELD}, event="resumed", by=by):
            resumed += 1
        conn.zrem(schema.held_key(name), raw)
    return resumed


def fail(conn: redis.Redis, settings: Settings, chunk: Chunk, reason: str, updates: dict[str, Any]) -> str:
    """A final failure: counted, listed for operators, alerted."""
    mid, n = chunk.mid, chunk.n
    line = f"{time.time():.0f} {mid}:{n} {chunk.account} {reason}"[:500]

    def also(pipe: Pipeline, before: Chunk) -> None:
        pipe.lpush(schema.FAILURES, line)
        pipe.ltrim(schema.FAILURES, 0, FAILURES_MAX - 1)
        append_history(pipe, mid, n, "failed", reason=reason)

    moved = transition(
        conn, mid, n, CANCELLABLE | {SUBMITTING, UNCONFIRMED}, FAILED, {**updates, "reason": reason}, also=also
    )
    if moved is not None:
        alert(settings, conn, "chunk_failed", message_id=mid, chunk=n, account=chunk.account, reason=reason)
    return "failed"


# -- validity ---------------------------------------------------------------------------------


#: Told of each recipient that ends expired: its message's id and its mobile (callbacks).
OnExpired = Callable[[str, str], None]


def expire(conn: redis.Redis, chunk: Chunk, now: float, on_expired: OnExpired | None = None) -> str:
    """A chunk whose validity ended before it could be submitted is never sent: ``expired``, a
    final state, its cap slots given back. Only from a state whose linkid never reached the
    provider (pending, a retry after a refused connection, held): a call that may have gone is
    never called expired.

    A batch's chunk carries members of their own validity (it holds its earliest): the members
    whose validity ended leave it, counted ``expired``; the rest stay, under the same linkid."""
    if not chunk.valid_until or now < chunk.valid_until:
        return chunk.state
    members = chunk.mids.split(";") if chunk.mids else []
    if members:
        with conn.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hmget(schema.message_key(member), Message.field_of("valid_until"), Message.field_of("api_key"))
            found = [(float(until or 0), (key or b"").decode()) for until, key in pipe.execute()]
        gone = {i for i, (until, _) in enumerate(found) if until and now >= until}
        if len(gone) < len(members):
            return _expire_members(conn, chunk, gone, found, on_expired)
    reason = "its validity ended before it could be sent"

    def note(pipe: Pipeline, before: Chunk) -> None:
        append_history(pipe, chunk.mid, chunk.n, "expired", valid_until=chunk.valid_until)

    moved = transition(conn, chunk.mid, chunk.n, CANCELLABLE, EXPIRED, {"reason": reason}, also=note)
    if moved is None:
        return "raced"
    test = conn.hget(schema.message_key(chunk.mid), Message.field_of("test")) == b"1"
    by_member = members or [chunk.mid] * len(moved.mobiles)
    for mobile, ref in zip(moved.mobiles, by_member, strict=True):
        guardrails.give_back(conn, account=moved.account, priority=moved.priority, mobiles=[mobile], ref=ref, test=test)
        if on_expired is not None:
            on_expired(ref, mobile)
    return EXPIRED


def _expire_members(
    conn: redis.Redis, chunk: Chunk, gone: set[int], found: list[tuple[float, str]], on_expired: OnExpired | None
) -> str:
    items, mids = chunk.items.split(";"), chunk.mids.split(";")
    keep = [i for i in range(len(items)) if i not in gone]
    earliest = min((found[i][0] for i in keep if found[i][0]), default=0.0)
    updates = {
        "items": ";".join(items[i] for i in keep),
        "mids": ";".join(mids[i] for i in keep),
        "recipients": len(keep),
        "valid_until": earliest,
    }
    by_key: dict[str, int] = {}
    for i in gone:
        by_key[found[i][1]] = by_key.get(found[i][1], 0) + 1

    def count(pipe: Pipeline, before: Chunk) -> None:
        for i in gone:
            _count_member(pipe, mids[i], EXPIRED)
        pipe.hincrby(schema.COUNTS, f"recipients_{EXPIRED}", len(gone))
        _count_unsent(pipe, chunk, EXPIRED, by_key)
        ref = schema.chunk_ref(chunk.mid, chunk.n)
        pipe.zadd(schema.EXPIRY, {ref: earliest}) if earliest else pipe.zrem(schema.EXPIRY, ref)
        append_history(pipe, chunk.mid, chunk.n, "members_expired", members=[mids[i] for i in sorted(gone)])

    moved = transition(conn, chunk.mid, chunk.n, {chunk.state}, chunk.state, updates, linkid=chunk.linkid, also=count)
    if moved is None:
        return "raced"
    for i in gone:
        mobile = mobile_of(items[i])
        guardrails.give_back(conn, account=chunk.account, priority=chunk.priority, mobiles=[mobile], ref=mids[i])
        if on_expired is not None:
            on_expired(mids[i], mobile)
    _redact_members(conn, Chunk(mid=chunk.mid, n=chunk.n, mids=";".join(mids[i] for i in gone)))
    return "members_expired"


def expire_due(conn: redis.Redis, now: float, limit: int = 500, on_expired: OnExpired | None = None) -> int:
    """Expire (or thin out) the chunks whose validity ended, whatever holds them: a held account,
    a retry's wait, a backlog. Returns how many chunks it looked at."""
    refs = conn.zrangebyscore(schema.EXPIRY, "-inf", now, start=0, num=limit)
    for raw in refs:
        _, mid, n = schema.parse_ref(raw.decode())
        chunk = Chunk.load(conn, mid, n)
        if chunk is None or chunk.state not in CANCELLABLE:
            conn.zrem(schema.EXPIRY, raw)  # gone, final, or in a call: not for validity to end
            continue
        expire(conn, chunk, now, on_expired)
    return len(refs)


def requeue_failed(conn: redis.Redis, settings: Settings, mid: str, n: int, *, by: str) -> bool:
    """An operator sends a failed chunk again: same linkid (the provider never accepted it), a
    fresh attempt budget. Safe to click twice: only a chunk still ``failed`` moves."""
    chunk = Chunk.load(conn, mid, n)
    msg = Message.load(conn, mid)
    if chunk is None or msg is None or msg.redacted:
        return False  # gone, or redacted: the text to send again is no longer kept

    def uncount(pipe: Pipeline) -> None:
        key = schema.message_key(mid)
        pipe.hincrby(key, Message.final_field(schema.CHUNKS_IN, FAILED), -1)
        pipe.hincrby(key, Message.final_field(schema.RECIPIENTS_IN, FAILED), -chunk.recipients)
        pipe.hincrby(schema.COUNTS, f"recipients_{FAILED}", -chunk.recipients)
        for member in chunk.mids.split(";") if chunk.mids else ():
            _count_member(pipe, member, FAILED, -1)

    return enqueue_next(
        conn,
        settings,
        mid,
        n,
        from_states={FAILED},
        updates={"attempts": 0, "reason": ""},
        event="requeued",
        by=by,
        extra=uncount,
    )


def cancel_message(conn: redis.Redis, mid: str) -> dict[str, int] | None:
    """Cancel what is not yet submitted. ``None`` if nothing could be cancelled."""
    key = schema.message_key(mid)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                state, count, to_redact, text, items = (
                    v.decode() if v else "" for v in pipe.hmget(key, *(Message.field_of(f) for f in _UNPLANNED_READ))
                )
                if state in UNPLANNED:
                    pipe.multi()
                    pipe.hset(key, mapping=Message.short(state=CANCELLED, cancelled=time.time()))
                    pipe.zrem(schema.WATCH, schema.message_ref(mid))
                    if to_redact not in ("", "0") and text:  # never sent: its text goes now all the same
                        redact(pipe, mid, text, items)
                    pipe.execute()
                    return {"chunks": 0, "recipients": int(count or 0)}
                pipe.reset()
                break
            except redis.WatchError:
                continue
    via = (conn.hget(key, Message.field_of("via")) or b"").decode()
    if via:
        return {"chunks": 1, "recipients": 1} if _cancel_member(conn, mid, via) else None
    cancelled = {"chunks": 0, "recipients": 0}
    planned = int(conn.hget(key, Message.field_of("chunk_seq")) or 0)
    for n in range(planned):

        def note(pipe: Pipeline, before: Chunk, n: int = n) -> None:
            append_history(pipe, mid, n, "cancelled")
            if before.state == HELD:
                pipe.zrem(schema.held_key(before.account), schema.chunk_ref(mid, n))

        before = transition(conn, mid, n, CANCELLABLE, CANCELLED, also=note)
        if before is not None:
            cancelled["chunks"] += 1
            cancelled["recipients"] += before.recipients
    return cancelled if cancelled["chunks"] else None


def _cancel_member(conn: redis.Redis, mid: str, via: str) -> bool:
    """Take a coalesced message out of its batch's chunk while the chunk is not yet sent; a
    send that starts later reads the chunk without it (``transition`` re-reads under WATCH)."""
    for chunk in member_chunks(conn, mid, via):
        key = schema.chunk_key(via, chunk.n)
        with conn.pipeline() as pipe:
            try:
                pipe.watch(key)
                now = Chunk.from_hash(pipe.hgetall(key), mid=via)
                members = now.members
                if now.state not in CANCELLABLE or mid not in members.values():
                    pipe.reset()
                    continue
                if len(members) == 1:
                    pipe.reset()
                    return transition(conn, via, chunk.n, CANCELLABLE, CANCELLED) is not None
                pairs = zip(now.items.split(";"), now.mids.split(";"), strict=True)
                kept = [(item, m) for item, m in pairs if m != mid]
                pipe.multi()
                pipe.hset(
                    key,
                    mapping=Chunk.short(
                        items=";".join(i for i, _ in kept), mids=";".join(m for _, m in kept), recipients=len(kept)
                    ),
                )
                _count_member(pipe, mid, CANCELLED)
                pipe.hincrby(schema.COUNTS, f"recipients_{CANCELLED}", 1)
                append_history(pipe, via, chunk.n, "member_cancelled", message=mid)
                pipe.execute()
                _redact_members(conn, Chunk(mid=via, n=chunk.n, mids=mid))
                return True
            except redis.WatchError:
                return _cancel_member(conn, mid, via)
    return False


def member_chunks(conn: redis.Redis, mid: str, via: str) -> list[Chunk]:
    """The chunks of batch ``via`` that carry (or carried, before a split) message ``mid``."""
    seq = int(conn.hget(schema.message_key(via), Message.field_of("chunk_seq")) or 0)
    with conn.pipeline(transaction=False) as pipe:
        for n in range(seq):
            pipe.hgetall(schema.chunk_key(via, n))
        found = [Chunk.from_hash(raw, mid=via) for raw in pipe.execute() if raw]
    return [c for c in found if c.state != SPLIT and mid in c.mids.split(";")]


#: What cancelling an unplanned message reads: its state, and what a redaction drops.
_UNPLANNED_READ = ("state", "recipients", "redact", "text", "items")


def cancel_unplanned(conn: redis.Redis, mid: str, idempotency: str = "") -> bool:
    """Withdraw a message no worker has planned yet (accept found it was not replicated), and
    its ``idempotency`` record in the same step, so no retry replays a 202 for it."""
    key = schema.message_key(mid)
    with conn.pipeline() as pipe:
        try:
            pipe.watch(key)
            state, _, to_redact, text, items = (
                v.decode() if v else "" for v in pipe.hmget(key, *(Message.field_of(f) for f in _UNPLANNED_READ))
            )
            if state not in UNPLANNED:
                pipe.reset()
                return False
            pipe.multi()
            pipe.hset(key, mapping=Message.short(state=CANCELLED, cancelled=time.time()))
            pipe.zrem(schema.WATCH, schema.message_ref(mid))
            if idempotency:
                pipe.delete(idempotency)
            if to_redact not in ("", "0") and text:
                redact(pipe, mid, text, items)
            pipe.execute()
            return True
        except redis.WatchError:
            return False


# -- reading ----------------------------------------------------------------------------------


#: Every state the API reports for a message (:func:`message_state`), in the order of its life,
#: and what it means: the one list the OpenAPI document, ``/docs`` and the README follow.
API_STATES: dict[str, str] = {
    MessageState.ACCEPTED: "stored; waiting for a worker to plan it (or in a coalescing pool)",
    MessageState.SCHEDULED: "waiting for send_at (or for the end of its priority's quiet hours)",
    MessageState.SENDING: "planned: its submissions are on their way to the provider",
    "partially_submitted": "some submissions reached the provider; the rest are still on their way",
    "submitted": "every submission was accepted by the provider; no report yet",
    "delivered": "final: every recipient's report says delivered",
    "partially_delivered": "final once every recipient reported: some delivered, some not",
    "undelivered": "final: the operator reported every recipient undelivered",
    "unknown": "final: no report came within SMSGW_REPORT_WINDOW_SECONDS",
    FAILED: "final: the provider refused it, or every attempt failed (the chunks say why)",
    EXPIRED: "final: its valid_for ended before it could be sent; never sent, never billed",
    CANCELLED: "final: cancelled before it was submitted",
    MessageState.SUPPRESSED: "final: every recipient was suppressed (a frequency cap, an opt-out)",
}


def message_state(msg: Message) -> str:
    """A message's state follows its chunks once they are planned, then its recipients' reports."""
    if msg.state != MessageState.SENDING:
        return msg.state
    done = {s: msg.chunks_final.get(s, 0) for s in (SUBMITTED, FAILED, CANCELLED, SPLIT, EXPIRED)}
    if sum(done.values()) < msg.chunks:
        return MessageState.SENDING
    live = msg.chunks - done[SPLIT]
    if done[SUBMITTED] == 0:
        return FAILED if done[FAILED] else EXPIRED if done[EXPIRED] else CANCELLED
    submitted = msg.recipients_final.get(SUBMITTED, 0)
    delivered, undelivered, unknown = (msg.recipients_final.get(s, 0) for s in ReportState)
    if delivered and delivered == submitted and done[SUBMITTED] == live:
        return "delivered"
    if delivered:
        return "partially_delivered"
    if undelivered + unknown >= submitted:
        return "undelivered" if undelivered else "unknown"
    return "submitted" if done[SUBMITTED] == live else "partially_submitted"


def latest_failures(conn: redis.Redis, limit: int) -> list[dict[str, Any]]:
    """The latest failed chunks, newest first, each with the chunk's state now (an operator may
    have requeued it since)."""
    rows = []
    for raw in conn.lrange(schema.FAILURES, 0, limit - 1):
        at, ref, account, reason = [*raw.decode().split(" ", 3), "", "", ""][:4]
        mid, _, n = ref.rpartition(":")
        state = conn.hget(schema.chunk_key(mid, int(n or 0)), Chunk.field_of("state"))
        rows.append(
            {
                "at": rfc3339(float(at)),
                "message": mid,
                "chunk": n,
                "account": account,
                "reason": reason,
                "state": state.decode() if state else "expired",
            }
        )
    return rows


# -- the ambiguous path -----------------------------------------------------------------------


def settle_unconfirmed(conn: redis.Redis, mid: str, n: int) -> str:
    """The wait for a report on an ambiguous linkid is over (or a report came).

    A report means the provider accepted it. None proves nothing: the provider may have taken
    the chunk and lost or delayed its report, so a ``normal`` or ``bulk`` chunk is never sent
    again (only ``high`` may deliver twice, and counts it). It ends ``submitted`` on its linkid
    unconfirmed, is counted (``smsgw_unconfirmed_chunks_total``), and its recipients become
    ``unknown`` when the report window closes, unless a late report on the linkid says more."""
    chunk = Chunk.load(conn, mid, n)
    if chunk is None or chunk.state != UNCONFIRMED:
        return chunk.state if chunk is not None else "missing"
    linkid = chunk.linkid
    if conn.exists(schema.report_seen_key(linkid)):
        mark_submitted(conn, mid, n, from_states={UNCONFIRMED}, linkid=linkid, event="confirmed_by_report")
        return "submitted"

    def count(pipe: Pipeline, _: Chunk) -> None:
        pipe.hincrby(schema.COUNTS, "unconfirmed", 1)

    if mark_submitted(
        conn,
        mid,
        n,
        from_states={UNCONFIRMED},
        linkid=linkid,
        event="no_report_not_resent",
        updates={"unconfirmed": 1},
        then=count,
    ):
        log.warning(
            "no report on an ambiguous submission: not resent, it may or may not have gone out",
            extra={"message_id": mid, "chunk": n, "linkid": linkid},
        )
        return "unconfirmed"
    return "raced"


def confirm_late(conn: redis.Redis, mid: str, n: int, linkid: str) -> None:
    """A report came on a chunk that had ended its wait unconfirmed: the provider did take it.
    The chunk no longer says unconfirmed (the count of chunks that ended so stays: it counts
    waits that ended without a report)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.hdel(schema.chunk_key(mid, n), Chunk.field_of("unconfirmed"))
        append_history(pipe, mid, n, "confirmed_by_late_report", linkid=linkid)
        pipe.execute()
