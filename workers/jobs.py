"""RQ jobs: small functions that take ids, reload state from Redis, check it, then act.

The chunk's own state decides what a run does, never RQ's status or retry count: a job that
runs twice (an operator's requeue, the sweeper after a crash, RQ declaring a slow job abandoned)
finds the chunk already moved on and returns. State is written before the provider call
(``submitting``) and after it; a run that finds ``submitting`` knows a worker died during the
call and takes the ambiguous path. Retries are scheduled here, with the attempt count on the
chunk, never by RQ's ``Retry``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue, get_current_job

from workers import accounts, metrics, store
from workers import provider as p
from workers.alerts import alert
from workers.chunks import chunked, new_linkid
from workers.policy import HOLD_REASONS, Action, backoff, classify
from workers.queues import QUEUE_NAMES
from workers.runtime import Runtime, current
from workers.settings import Settings

log = logging.getLogger("smsgw.jobs")

SEND = "workers.jobs.send_chunk"
PLAN = "workers.jobs.plan_message"
CHECK = "workers.jobs.check_unconfirmed"
RESULT_TTL = 300
FAILURE_TTL = 7 * 24 * 3600


def report_seen_key(linkid: str) -> str:
    """Set by report ingestion: some report came back for this linkid, so it was accepted."""
    return f"sg:rl:{linkid}"


def job_timeout(settings: Settings, account: str) -> int:
    """Well under RQ's ~90 s heartbeat window, so a live job is never declared abandoned."""
    a = settings.accounts[account]
    return int(a.connect_timeout + a.read_timeout + 35)


# -- entry points (what RQ calls) -------------------------------------------------------------


def plan_message(mid: str) -> str:
    return plan(current(), mid)


def send_chunk(mid: str, n: int) -> str:
    rt = current()
    call: dict[str, Any] = {}
    outcome = send(rt, mid, n, call)
    metrics.record(rt.conn, "send", outcome, call)
    return outcome


def check_unconfirmed(mid: str, n: int) -> str:
    return check(current(), mid, n)


# -- planning ----------------------------------------------------------------------------------


def plan(rt: Runtime, mid: str) -> str:
    """Cut the message into chunks, give each its linkid, and fan out one job per chunk.

    One transaction: if this run dies before it commits, nothing half exists and the sweeper
    runs it again; if it committed, a second run finds the message ``sending`` and returns.
    """
    conn, settings = rt.conn, rt.settings
    key = store.msg_key(mid)
    with conn.pipeline() as pipe:
        pipe.watch(key)
        state, account, priority, raw = (v.decode() if v else "" for v in pipe.hmget(key, "st", "a", "pr", "to"))
        if state not in ("accepted", "scheduled"):
            pipe.reset()
            return state or "missing"
        size = accounts.chunk_size(conn, settings, account)
        parts = chunked(raw.split(";"), size)
        now = time.time()
        ttl = store.ttl_of(pipe, key, settings.retention_seconds)
        pipe.multi()
        jobs = []
        for n, part in enumerate(parts):
            linkid = new_linkid()
            job_id = f"s-{mid}-{n}-1"
            ckey = store.chunk_key(mid, n)
            pipe.hset(
                ckey,
                mapping={
                    "n": n, "st": store.PENDING, "lk": linkid, "to": ";".join(part),
                    "nr": len(part), "a": account, "pr": priority, "att": 0, "jq": 1,
                    "job": job_id, "ts": f"{now:.3f}",
                },
            )  # fmt: skip
            pipe.expire(ckey, ttl)
            pipe.set(store.linkid_key(linkid), f"{mid}:{n}", ex=ttl)
            pipe.zadd(store.WATCH, {store.chunk_ref(mid, n): now + settings.job_grace_seconds})
            record(pipe, mid, n, "planned", linkid=linkid, ttl=ttl)
            pipe.expire(store.history_key(mid, n), ttl)
            jobs.append(_job_data(settings, account, SEND, (mid, n), job_id))
        pipe.hset(
            key,
            mapping={
                "st": "sending",
                "chunks": len(parts),
                "nseq": len(parts),
                "planned": f"{now:.3f}",
            },
        )
        pipe.hdel(key, "to")
        pipe.zrem(store.WATCH, f"m:{mid}")
        rt.queue(priority).enqueue_many(jobs, pipeline=pipe)
        try:
            pipe.execute()
        except redis.WatchError:
            return "raced"
    log.info("planned %s in %d chunks", mid, len(parts), extra={"message_id": mid, "account": account})
    return "planned"


def record(pipe: Pipeline | redis.Redis, mid: str, n: int, event: str, **fields: Any) -> None:
    store.record(pipe, mid, n, event, **fields)


def _job_data(settings: Settings, account: str, func: str, args: tuple[Any, ...], job_id: str) -> Any:
    return Queue.prepare_data(
        func,
        args=args,
        job_id=job_id,
        timeout=job_timeout(settings, account),
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
    )


def enqueue_send(
    conn: redis.Redis,
    mid: str,
    n: int,
    *,
    from_states: set[str] | frozenset[str],
    to_state: str = store.PENDING,
    delay: float = 0.0,
    fields: dict[str, Any] | None = None,
    settings: Settings | None = None,
    event: str,
    func: str = SEND,
    extra: Callable[[Pipeline], None] | None = None,
    **event_fields: Any,
) -> bool:
    """Move the chunk ``from_states`` → ``to_state`` and enqueue its next job, atomically.

    The job id carries a per-chunk sequence number, so a retry never collides with the job
    that scheduled it, and the chunk names the one job that owns it (the sweeper checks that
    job is alive).
    """
    settings = settings or current().settings
    now = time.time()

    def also(pipe: Pipeline, before: dict[str, str]) -> None:
        seq = int(before.get("jq", "0")) + 1
        job_id = f"{'s' if func == SEND else 'k'}-{mid}-{n}-{seq}"
        pipe.hset(store.chunk_key(mid, n), mapping={"jq": seq, "job": job_id})
        queue = Queue(QUEUE_NAMES[before["pr"]], connection=conn)
        data = _job_data(settings, before["a"], func, (mid, n), job_id)
        if delay > 0:
            queue.enqueue_at(
                datetime.now(UTC) + timedelta(seconds=delay),
                func,
                args=(mid, n),
                job_id=job_id,
                timeout=data.timeout,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                pipeline=pipe,
            )
        else:
            queue.enqueue_many([data], pipeline=pipe)
        pipe.zadd(store.WATCH, {store.chunk_ref(mid, n): now + delay + settings.job_grace_seconds})
        record(pipe, mid, n, event, job=job_id, delay=round(delay, 3), **event_fields)
        if extra is not None:
            extra(pipe)

    return store.transition(conn, mid, n, from_states, to_state, fields, also=also) is not None


# -- sending -----------------------------------------------------------------------------------


def send(rt: Runtime, mid: str, n: int, call: dict[str, Any] | None = None) -> str:
    """One attempt at a chunk. ``call`` (if given) receives the provider call's figures, which
    the caller records together with the job's outcome in one round trip."""
    conn, settings = rt.conn, rt.settings
    # One round trip for the chunk and its message, one for the account's hold and rate slot.
    with conn.pipeline(transaction=False) as pipe:
        pipe.hgetall(store.chunk_key(mid, n))
        pipe.hmget(store.msg_key(mid), "k", "text")
        raw, (kind_b, text_b) = pipe.execute()
    chunk = store.decode(raw)
    state = chunk.get("st")
    if state is None:
        return "missing"
    if state == store.SUBMITTING:
        if time.time() < float(chunk.get("dl", "0")):
            return "in_flight"  # a requeue while the call is under way: the sweeper comes back
        return handle_ambiguous(rt, mid, n, chunk, "found submitting: a worker died during the call")
    if state not in store.SENDABLE:
        return state
    account = chunk["a"]
    held, slot = accounts.hold_and_slot(conn, account)
    if held:
        return park_held(rt, mid, n, chunk, set(store.SENDABLE))
    rate = settings.accounts[account].rate_per_second
    if slot > rate and not accounts.acquire_rate(conn, account, rate):
        enqueue_send(
            conn, mid, n, from_states={state}, to_state=state, delay=1.0, settings=settings, event="rate_limited"
        )
        return "rate_limited"

    kind, text = (v.decode() if v else "" for v in (kind_b, text_b))
    linkid = chunk["lk"]
    attempt = int(chunk.get("att", "0")) + 1
    a = settings.accounts[account]
    deadline = time.time() + a.connect_timeout + a.read_timeout + 2

    job = get_current_job()
    worker = job.worker_name if job is not None else ""

    def watch(pipe: Pipeline, before: dict[str, str]) -> None:
        pipe.zadd(store.WATCH, {store.chunk_ref(mid, n): deadline + settings.job_grace_seconds})
        record(pipe, mid, n, "submitting", linkid=linkid, attempt=attempt, worker=worker)

    moved = store.transition(
        conn, mid, n, store.SENDABLE, store.SUBMITTING, {"att": attempt, "dl": f"{deadline:.3f}"},
        linkid=linkid, also=watch,
    )  # fmt: skip
    if moved is None:
        return "raced"
    chunk.update(st=store.SUBMITTING, att=str(attempt))

    extra = {"message_id": mid, "chunk": n, "linkid": linkid, "account": account}
    client = rt.client(account)
    error: p.ProviderError | None = None
    result: p.SendResult | None = None
    started = time.monotonic()
    try:
        if kind == "p":
            result = client.send_personalized(text, chunk["to"].split(";"), linkid=linkid)
        else:
            result = client.send(chunk["to"].split(";"), text, linkid=linkid)
    except p.ProviderError as e:
        error = e
    elapsed = time.monotonic() - started
    if call is not None:
        call.update(
            account=account, endpoint="post_send_ddt" if kind == "p" else client.send_endpoint, seconds=elapsed,
            code="0" if error is None else str(error.code) if error.code is not None else type(error).__name__,
            recipients=int(chunk.get("nr", "0")),
        )  # fmt: skip
    action = classify(error)
    log.info(
        "provider answered %s in %.3f s: %s",
        error.code if error else 0, elapsed, action.value, extra=extra,
    )  # fmt: skip
    return apply(rt, mid, n, chunk, action, error, result)


def apply(
    rt: Runtime,
    mid: str,
    n: int,
    chunk: dict[str, str],
    action: Action,
    error: p.ProviderError | None,
    result: p.SendResult | None = None,
) -> str:
    """Act on the policy's decision for a chunk that is ``submitting``."""
    conn, settings = rt.conn, rt.settings
    linkid, attempt, account = chunk["lk"], int(chunk["att"]), chunk["a"]
    code = "" if error is None or error.code is None else str(error.code)
    error_fields = {
        "code": code,
        "ptext": error.text if error else "",
        "err": type(error).__name__ if error else "",
    }

    if action is Action.SUBMITTED:
        assert result is not None
        # From unconfirmed/retry too: a call that outlived its deadline may still answer 0.
        now = time.time()
        done = store.transition(
            conn, mid, n, {store.SUBMITTING, store.UNCONFIRMED, store.RETRY, store.PENDING},
            store.SUBMITTED, {"code": 0, "ptext": result.text, "err": "", "sub": f"{now:.0f}"}, linkid=linkid,
            also=lambda pipe, b: _submitted(pipe, mid, n, account, now, "submitted", linkid=linkid, attempt=attempt),
        )  # fmt: skip
        return "submitted" if done is not None else "raced"

    if action is Action.RETRY:
        if attempt >= settings.retry_max_attempts:
            return fail(rt, mid, n, chunk, f"gave up after {attempt} attempts: {error}", error_fields)
        delay = backoff(attempt, settings.retry_base_seconds, settings.retry_max_seconds)
        enqueue_send(
            conn, mid, n, from_states={store.SUBMITTING}, to_state=store.RETRY, delay=delay,
            fields=error_fields, settings=settings, event="retry", error=str(error),
        )  # fmt: skip
        return "retry"

    if action is Action.AMBIGUOUS:
        conn.hset(store.chunk_key(mid, n), mapping=error_fields)
        return handle_ambiguous(rt, mid, n, chunk, f"ambiguous: {error}")

    if action is Action.HOLD:
        assert error is not None and error.code is not None
        accounts.hold(settings, conn, account, error.code, HOLD_REASONS[error.code])
        # The call was refused, not made: it burns no attempt.
        chunk["att"] = str(attempt - 1)
        return park_held(rt, mid, n, chunk, {store.SUBMITTING}, {**error_fields, "att": attempt - 1})

    if action is Action.SPLIT:
        return split(rt, mid, n, chunk, error_fields)

    assert error is not None
    alert(settings, conn, "validation_defect", message_id=mid, chunk=n, code=code, text=error.text)
    return fail(rt, mid, n, chunk, f"provider refused the text: {error}", error_fields)


def _submitted(pipe: Pipeline, mid: str, n: int, account: str, now: float, event: str, **fields: Any) -> None:
    """The chunk is with the provider: its recipients now await reports (see workers.reports)."""
    pipe.zadd(store.await_key(account), {store.chunk_ref(mid, n): now})
    record(pipe, mid, n, event, **fields)


def park_held(
    rt: Runtime,
    mid: str,
    n: int,
    chunk: dict[str, str],
    from_states: set[str],
    fields: dict[str, Any] | None = None,
) -> str:
    conn, account = rt.conn, chunk["a"]
    reason = accounts.state(conn, account).get("reason", "")

    def also(pipe: Pipeline, before: dict[str, str]) -> None:
        pipe.zadd(store.held_key(account), {store.chunk_ref(mid, n): time.time()}, nx=True)
        pipe.zrem(store.WATCH, store.chunk_ref(mid, n))
        record(pipe, mid, n, "held", account=account, reason=reason)

    store.transition(conn, mid, n, from_states, store.HELD, {"hr": reason, **(fields or {})}, also=also)
    # The account may have been resumed between our hold and our park: never strand a chunk.
    if not accounts.is_held(conn, account) and enqueue_send(
        conn, mid, n, from_states={store.HELD}, settings=rt.settings, event="resumed"
    ):
        conn.zrem(store.held_key(account), store.chunk_ref(mid, n))
    return "held"


def split(rt: Runtime, mid: str, n: int, chunk: dict[str, str], error_fields: dict[str, Any]) -> str:
    """Answer 3: the provider takes fewer per submission than we sent. Halve the chunk under
    two new linkids and lower the account's chunk size for every later plan."""
    conn, settings = rt.conn, rt.settings
    items = chunk["to"].split(";")
    if len(items) < 2:
        return fail(rt, mid, n, chunk, "provider answered 3 (too many) to a single recipient", error_fields)
    half = (len(items) + 1) // 2
    accounts.lower_chunk_size(conn, chunk["a"], half)
    first = conn.hincrby(store.msg_key(mid), "nseq", 2) - 2  # reserve two numbers; unused is harmless
    ttl = store.ttl_of(conn, store.chunk_key(mid, n), settings.retention_seconds)
    now = time.time()
    parts = [(first, items[:half]), (first + 1, items[half:])]
    links = {m: new_linkid() for m, _ in parts}

    def also(pipe: Pipeline, before: dict[str, str]) -> None:
        pipe.hincrby(store.msg_key(mid), "chunks", 2)
        queue = Queue(QUEUE_NAMES[chunk["pr"]], connection=conn)
        datas = []
        for m, part in parts:
            job_id = f"s-{mid}-{m}-1"
            key = store.chunk_key(mid, m)
            pipe.hset(
                key,
                mapping={
                    "n": m, "st": store.PENDING, "lk": links[m], "to": ";".join(part),
                    "nr": len(part), "a": chunk["a"], "pr": chunk["pr"], "att": 0, "jq": 1,
                    "job": job_id, "ts": f"{now:.3f}", "from": n,
                },
            )  # fmt: skip
            pipe.expire(key, ttl)
            pipe.set(store.linkid_key(links[m]), f"{mid}:{m}", ex=ttl)
            pipe.zadd(store.WATCH, {store.chunk_ref(mid, m): now + settings.job_grace_seconds})
            record(pipe, mid, m, "planned", linkid=links[m], split_from=n)
            pipe.expire(store.history_key(mid, m), ttl)
            datas.append(_job_data(settings, chunk["a"], SEND, (mid, m), job_id))
        record(pipe, mid, n, "split", into=[m for m, _ in parts], size=half)
        queue.enqueue_many(datas, pipeline=pipe)

    store.transition(conn, mid, n, {store.SUBMITTING}, store.SPLIT, error_fields, also=also)
    return "split"


def fail(rt: Runtime, mid: str, n: int, chunk: dict[str, str], reason: str, fields: dict[str, Any]) -> str:
    conn = rt.conn
    line = f"{time.time():.0f} {mid}:{n} {chunk.get('a', '')} {reason}"[:500]

    def also(pipe: Pipeline, before: dict[str, str]) -> None:
        pipe.lpush(store.FAILURES, line)
        pipe.ltrim(store.FAILURES, 0, store.FAILURES_MAX - 1)
        record(pipe, mid, n, "failed", reason=reason)

    moved = store.transition(
        conn, mid, n, store.CANCELLABLE | {store.SUBMITTING, store.UNCONFIRMED}, store.FAILED,
        {**fields, "reason": reason}, also=also,
    )  # fmt: skip
    if moved is not None:
        alert(
            rt.settings,
            conn,
            "chunk_failed",
            message_id=mid,
            chunk=n,
            account=chunk.get("a"),
            reason=reason,
        )
    return "failed"


# -- the ambiguous path ------------------------------------------------------------------------


def handle_ambiguous(rt: Runtime, mid: str, n: int, chunk: dict[str, str], why: str) -> str:
    """The provider may have accepted this linkid. ``high``: retry at once with the same linkid
    (a second verification code is cheaper than none). Others: wait for a status report on the
    linkid; :func:`check` decides when the wait is over."""
    conn, settings = rt.conn, rt.settings
    attempt = int(chunk.get("att", "0"))
    if chunk["pr"] == "high":
        if attempt >= settings.retry_max_attempts:
            return fail(rt, mid, n, chunk, f"gave up after {attempt} attempts: {why}", {})
        enqueue_send(
            conn, mid, n, from_states={store.SUBMITTING}, to_state=store.RETRY, settings=settings,
            event="ambiguous_retry_same_linkid", why=why, linkid=chunk["lk"],
        )  # fmt: skip
        return "retry"
    until = time.time() + settings.ambiguous_wait_seconds
    enqueue_send(
        conn, mid, n, from_states={store.SUBMITTING}, to_state=store.UNCONFIRMED,
        delay=settings.ambiguous_wait_seconds, fields={"uw": f"{until:.3f}"}, settings=settings,
        event="awaiting_report", func=CHECK, why=why, linkid=chunk["lk"],
    )  # fmt: skip
    if conn.exists(report_seen_key(chunk["lk"])):
        return check(rt, mid, n)  # a report already came while the chunk sat in 'submitting'
    return "unconfirmed"


def check(rt: Runtime, mid: str, n: int) -> str:
    """The wait for a report on an ambiguous linkid is over: a report means it was accepted;
    none means it was not, and the chunk goes again under a new linkid."""
    conn, settings = rt.conn, rt.settings
    chunk = store.load_chunk(conn, mid, n)
    if chunk.get("st") != store.UNCONFIRMED:
        return chunk.get("st", "missing")
    old = chunk["lk"]
    if conn.exists(report_seen_key(old)):
        now = time.time()
        store.transition(
            conn, mid, n, {store.UNCONFIRMED}, store.SUBMITTED, {"code": 0, "sub": f"{now:.0f}"}, linkid=old,
            also=lambda pipe, b: _submitted(pipe, mid, n, chunk["a"], now, "confirmed_by_report", linkid=old),
        )  # fmt: skip
        return "submitted"
    fresh = new_linkid()
    ttl = store.ttl_of(conn, store.chunk_key(mid, n), settings.retention_seconds)
    if enqueue_send(
        conn, mid, n, from_states={store.UNCONFIRMED}, fields={"lk": fresh}, settings=settings,
        event="no_report_resubmit_new_linkid", old_linkid=old, linkid=fresh,
        extra=lambda pipe: pipe.set(store.linkid_key(fresh), f"{mid}:{n}", ex=ttl),
    ):  # fmt: skip
        return "resubmitted"
    return "raced"


def requeue_failed(rt: Runtime, mid: str, n: int, *, by: str) -> bool:
    """An operator sends a failed chunk again: same linkid (the provider never accepted it), a
    fresh attempt budget. Safe to click twice: only a chunk still ``failed`` moves."""

    def uncount(pipe: Pipeline) -> None:
        nr = int(rt.conn.hget(store.chunk_key(mid, n), "nr") or 0)
        pipe.hincrby(store.msg_key(mid), f"c_{store.FAILED}", -1)
        pipe.hincrby(store.msg_key(mid), f"r_{store.FAILED}", -nr)
        pipe.hincrby("sg:counts", f"recipients_{store.FAILED}", -nr)

    return enqueue_send(
        rt.conn, mid, n, from_states={store.FAILED}, fields={"att": 0, "reason": ""}, settings=rt.settings,
        event="requeued", by=by, extra=uncount,
    )  # fmt: skip
