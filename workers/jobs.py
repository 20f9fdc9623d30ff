"""RQ jobs: small functions that take ids, reload state from Redis, check it, then act.

The chunk's own state decides what a run does, never RQ's status or retry count: a job that
runs twice (an operator's requeue, the sweeper after a crash, RQ declaring a slow job abandoned)
finds the chunk already moved on and returns. State is written before the provider call
(``submitting``) and after it; a run that finds ``submitting`` knows a worker died during the
call and takes the ambiguous path. Retries are scheduled here, with the attempt count on the
chunk, never by RQ's ``Retry``. How chunks are made and moved is ``workers.lifecycle``.

Only the three entry points look up the process's :class:`Runtime`; everything below them
receives it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from rq import get_current_job

from workers import accounts, counters, lifecycle, notifications, quiet, routes, verify
from workers import provider as p
from workers.alerts import alert
from workers.chunks import new_linkid
from workers.lifecycle import SENDABLE, SUBMITTING
from workers.policy import HOLD_REASONS, Action, backoff, classify
from workers.runtime import Runtime, current, replicated
from workers.storage import schema
from workers.storage.schema import Chunk, Message
from workers.text import item_parts

log = logging.getLogger("smsgw.jobs")


# -- entry points (what RQ calls) -------------------------------------------------------------


def plan_message(mid: str) -> str:
    rt = current()
    return lifecycle.plan(rt.conn, rt.settings, mid)


def send_chunk(mid: str, n: int, worker: str | None = None, wait_for_rate: bool = True) -> str:
    rt = current()
    call: dict[str, Any] = {}
    outcome = send_attempt(rt, mid, n, call, worker=worker, wait_for_rate=wait_for_rate)
    counters.job_outcome(rt.conn, "send", outcome, call)
    return outcome


def send_chunks(mid: str, ns: list[int]) -> str:
    """Several chunks of one message with their provider calls in flight at once, one thread
    each (``SMSGW_SENDS_IN_FLIGHT``): a campaign is bound by the provider's latency, not by one
    call at a time per worker. Each chunk is exactly :func:`send_chunk`: its own state
    machine, linkid, rate slot and outcome; a worker that dies leaves each in ``submitting``
    for the sweeper, as one call would."""
    job = get_current_job()
    worker = job.worker_name if job is not None else ""
    # Only the first waits for a slot of the account's rate, as a lone send would; the others
    # go now if the rate allows, else each as a job of its own next second. A group that
    # waited for four slots would keep its worker from verification codes four times as long.
    with ThreadPoolExecutor(max_workers=len(ns), thread_name_prefix="smsgw-send") as pool:
        outcomes = list(pool.map(lambda n: send_chunk(mid, n, worker, n == ns[0]), ns))
    return ",".join(outcomes)


def check_unconfirmed(mid: str, n: int) -> str:
    rt = current()
    return lifecycle.settle_unconfirmed(rt.conn, mid, n)


# -- sending -----------------------------------------------------------------------------------


def send_attempt(
    rt: Runtime,
    mid: str,
    n: int,
    call: dict[str, Any] | None = None,
    *,
    worker: str | None = None,
    wait_for_rate: bool = True,
) -> str:
    """One attempt at a chunk. ``call`` (if given) receives the provider call's figures, which
    the caller records together with the job's outcome in one round trip. ``worker``: the
    worker's name for the history (default: the current RQ job's). ``wait_for_rate``: with the
    account's rate spent this second, wait for a slot (else: a job of its own next second)."""
    conn, settings = rt.conn, rt.settings
    # One round trip for the chunk and its message, one for the account's hold and rate slot.
    with conn.pipeline(transaction=False) as pipe:
        pipe.hgetall(schema.chunk_key(mid, n))
        pipe.hmget(
            schema.message_key(mid), Message.field_of("kind"), Message.field_of("text"), Message.field_of("test")
        )
        raw, (kind_b, text_b, test_b) = pipe.execute()
    test = test_b == b"1"
    if not raw:
        return "missing"
    chunk = Chunk.from_hash(raw, mid=mid)
    if chunk.state == SUBMITTING:
        if time.time() < chunk.deadline:
            return "in_flight"  # a requeue while the call is under way: the sweeper comes back
        return handle_ambiguous(rt, chunk, "found submitting: a worker died during the call")
    if chunk.state not in SENDABLE:
        return chunk.state
    if chunk.valid_until and time.time() >= chunk.valid_until:
        # Past its validity (a backlog, a long retry): never sent. A batch keeps its members
        # whose validity goes on, and they are sent now.
        told = functools.partial(notifications.recipient_expired, rt)
        if (outcome := lifecycle.expire(conn, chunk, time.time(), told)) != "members_expired":
            return outcome
        chunk = Chunk.load(conn, mid, n) or chunk
    if release := quiet.ends(settings.accounts[chunk.account].quiet_hours.get(chunk.priority), time.time()):
        # Its quiet hours began: a campaign pauses between submissions until they end.
        wait = release - time.time()
        lifecycle.enqueue_next(
            conn, settings, mid, n, from_states={chunk.state}, to_state=chunk.state, delay=wait, event="quiet_hours"
        )
        return "quiet_hours"
    account = chunk.account
    if settings.accounts[account].failover:
        target = routes.route(conn, settings, account, chunk.priority)
        routes.note(conn, settings, account, chunk.priority, target)
        if target != account:
            return lifecycle.move(conn, settings, chunk, target, SENDABLE)
    held, slot, taken = (False, 0, 0.0) if test else accounts.hold_and_slot(conn, account)
    if held:
        return lifecycle.park_held(conn, settings, chunk, SENDABLE)
    rate = accounts.rate_limit(chunk.priority, settings.accounts[account].rate_per_second)
    if not test and slot > rate:
        accounts.give_back(conn, account, taken)
    if not test and slot > rate and not (wait_for_rate and accounts.acquire_rate(conn, account, rate)):
        lifecycle.enqueue_next(
            conn, settings, mid, n, from_states={chunk.state}, to_state=chunk.state, delay=1.0, event="rate_limited"
        )
        return "rate_limited"

    kind, text = (v.decode() if v else "" for v in (kind_b, text_b))
    a = settings.accounts[account]
    spend, spent_at = 0, time.time()
    if not test and a.daily_limit:
        rule = (settings.part_chars, settings.long_part_chars)
        spend = sum(item_parts(kind, text, item, *rule) for item in _sendable(rt, kind, chunk.items))
        left = accounts.take_spend(conn, settings, account, spend, spent_at)
        if left < spend:
            return _over_daily_limit(rt, chunk, kind, text, left)

    def refund() -> None:
        """Nothing reached the provider: the day's parts go back."""
        if spend:
            accounts.give_back_spend(conn, account, spend, spent_at)

    linkid = chunk.linkid
    attempt = chunk.attempts + 1
    deadline = time.time() + a.connect_timeout + a.read_timeout + 2
    if worker is None:
        job = get_current_job()
        worker = job.worker_name if job is not None else ""

    def watch(pipe: redis.client.Pipeline, before: Chunk) -> None:
        pipe.zadd(schema.WATCH, {schema.chunk_ref(mid, n): deadline + settings.job_grace_seconds})
        lifecycle.append_history(pipe, mid, n, "submitting", linkid=linkid, attempt=attempt, worker=worker)

    moved = lifecycle.transition(
        conn, mid, n, SENDABLE, SUBMITTING, {"attempts": attempt, "deadline": deadline}, linkid=linkid, also=watch
    )
    if moved is None:
        refund()
        return "raced"
    # As read under WATCH: a coalesced member cancelled since our first read is not in it.
    chunk = moved
    chunk.state, chunk.attempts = SUBMITTING, attempt
    if not replicated(conn, settings, strict=False):
        # 'submitting' might not survive a failover; a call made now could then be made again
        # under this linkid. Nothing was sent: put it back and try later.
        lifecycle.enqueue_next(
            conn,
            settings,
            mid,
            n,
            from_states={SUBMITTING},
            to_state=lifecycle.RETRY,
            delay=1.0,
            updates={"attempts": attempt - 1},
            event="not_replicated",
        )
        refund()
        return "not_replicated"

    extra = {"message_id": mid, "chunk": n, "linkid": linkid, "account": account}
    client = rt.client(account)
    error: p.ProviderError | None = None
    result: p.SendResult | None = None
    if test:
        # Test mode: the whole state machine, no provider; reports are simulated.
        outcome = act(rt, chunk, Action.SUBMITTED, None, p.SendResult(0, "test mode: not sent", linkid))
        if outcome == "submitted":
            simulate_reports(conn, chunk)
        return outcome
    started = time.monotonic()
    try:
        if kind == "p":
            result = client.send_personalized(text, _sendable(rt, kind, chunk.items), linkid=linkid)
        else:
            result = client.send(chunk.items.split(";"), text, linkid=linkid)
    except p.ProviderError as e:
        error = e
    elapsed = time.monotonic() - started
    if settings.failover_accounts:
        routes.count_call(conn, account, error)
    if call is not None:
        code = "0" if error is None else str(error.code) if error.code is not None else type(error).__name__
        call.update(
            account=account,
            endpoint="post_send_ddt" if kind == "p" else client.send_endpoint,
            seconds=elapsed,
            code=code,
            recipients=chunk.recipients,
        )
    action = classify(error)
    log.info("provider answered %s in %.3f s: %s", error.code if error else 0, elapsed, action.value, extra=extra)
    if action in (Action.RETRY, Action.HOLD, Action.SPLIT, Action.FAIL):
        refund()  # refused or never sent: not billed
    return act(rt, chunk, action, error, result)


def _sendable(rt: Runtime, kind: str, items: str) -> list[str]:
    """A chunk's items as the provider gets them: a verification's token becomes its code here,
    in memory, and nowhere else (``workers.verify``)."""
    groups = items.split(";")
    return verify.render(rt.settings.verify_key, groups) if kind == "p" else groups


def _over_daily_limit(rt: Runtime, chunk: Chunk, kind: str, text: str, left: int) -> str:
    """The chunk would pass the account's daily limit: what fits goes now (a split at the
    limit, under new linkids), the rest waits with the account held (``daily_limit``) until
    the next China day or an operator's resume. Never sent past it, never failed."""
    conn, settings = rt.conn, rt.settings
    rule = (settings.part_chars, settings.long_part_chars)
    fits, total = 0, 0
    for item in _sendable(rt, kind, chunk.items):
        total += item_parts(kind, text, item, *rule)
        if total > left:
            break
        fits += 1
    if 0 < fits < chunk.recipients:
        return split(rt, chunk, {}, at=fits, from_states=SENDABLE)
    limit = settings.accounts[chunk.account].daily_limit
    accounts.hold(settings, conn, chunk.account, accounts.DAILY_LIMIT, f"daily limit of {limit} billable parts reached")
    return lifecycle.park_held(conn, settings, chunk, SENDABLE)


#: Test mode's magic mobiles; every other mobile is reported delivered.
TEST_UNDELIVERED = "13900000002"
TEST_NO_REPORT = "13900000003"


def simulate_reports(conn: redis.Redis, chunk: Chunk) -> None:
    """What the provider would report for a test chunk, into the inbox as a push would be."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 8 * 3600))
    items = [
        {
            "kind": "rpt",
            "mobile": m,
            "linkid": chunk.linkid,
            "account": chunk.account,
            "time": stamp,
            "status": "UNDELIV" if m == TEST_UNDELIVERED else "DELIVRD",
            "src": "test",
        }
        for m in chunk.mobiles
        if m != TEST_NO_REPORT
    ]
    if items:
        conn.rpush(schema.INBOX, *(json.dumps(i, ensure_ascii=False) for i in items))


def act(
    rt: Runtime,
    chunk: Chunk,
    action: Action,
    error: p.ProviderError | None,
    result: p.SendResult | None = None,
) -> str:
    """Act on the policy's decision for a chunk that is ``submitting``."""
    conn, settings = rt.conn, rt.settings
    mid, n, linkid, attempt = chunk.mid, chunk.n, chunk.linkid, chunk.attempts
    code = "" if error is None or error.code is None else str(error.code)
    error_fields = {
        "code": code,
        "provider_text": error.text if error else "",
        "error": type(error).__name__ if error else "",
    }

    if action is Action.SUBMITTED:
        assert result is not None
        # From unconfirmed/retry too: a call that outlived its deadline may still answer 0.
        done = lifecycle.mark_submitted(
            conn,
            mid,
            n,
            from_states={SUBMITTING, lifecycle.UNCONFIRMED, lifecycle.RETRY, lifecycle.PENDING},
            linkid=linkid,
            event="submitted",
            updates={"provider_text": result.text, "error": ""},
            then=functools.partial(verify.count_submitted, settings=settings, now=time.time()),
            attempt=attempt,
        )
        return "submitted" if done else "raced"

    if action is Action.RETRY:
        if attempt >= settings.retry_max_attempts:
            return lifecycle.fail(conn, settings, chunk, f"gave up after {attempt} attempts: {error}", error_fields)
        delay = backoff(attempt, settings.retry_base_seconds, settings.retry_max_seconds)
        lifecycle.enqueue_next(
            conn,
            settings,
            mid,
            n,
            from_states={SUBMITTING},
            to_state=lifecycle.RETRY,
            delay=delay,
            updates=error_fields,
            event="retry",
            error=str(error),
        )
        return "retry"

    if action is Action.AMBIGUOUS:
        conn.hset(schema.chunk_key(mid, n), mapping=Chunk.short(**error_fields))
        return handle_ambiguous(rt, chunk, f"ambiguous: {error}")

    if action is Action.HOLD:
        assert error is not None and error.code is not None
        accounts.hold(settings, conn, chunk.account, error.code, HOLD_REASONS[error.code])
        # The call was refused, not made: it burns no attempt, and may go to a backup at once.
        chunk.attempts = attempt - 1
        if settings.accounts[chunk.account].failover:
            target = routes.route(conn, settings, chunk.account, chunk.priority)
            routes.note(conn, settings, chunk.account, chunk.priority, target)
            if target != chunk.account:
                return lifecycle.move(conn, settings, chunk, target, {SUBMITTING})
        return lifecycle.park_held(conn, settings, chunk, {SUBMITTING}, {**error_fields, "attempts": attempt - 1})

    if action is Action.SPLIT:
        return split(rt, chunk, error_fields)

    assert error is not None
    if isinstance(error, p.SensitiveWords | p.TextTooLong) and _innocents_aboard(rt, chunk, error):
        return split(rt, chunk, error_fields, culprit=True)
    if isinstance(error, p.SensitiveWords):
        return lifecycle.fail(conn, settings, chunk, _sensitive_reason(rt, chunk), error_fields)
    alert(settings, conn, "validation_defect", message_id=mid, chunk=n, code=code, text=error.text)
    return lifecycle.fail(conn, settings, chunk, f"provider refused the text: {error}", error_fields)


def _innocents_aboard(rt: Runtime, chunk: Chunk, error: p.ProviderError) -> bool:
    """Whether a refusal (6, 7) of this chunk may be another member's fault: the chunk carries
    several callers' messages and what differs between them (点点通 values) may be the cause.

    Members of a shared plain text all sent the same words, and so did the members of a
    template whose own words are refused: every one of them is a culprit and fails at once,
    without a search that would cost a call per member."""
    members = set(chunk.mids.split(";")) if chunk.mids else set()
    if len(members) < 2:
        return False
    kind, text = _kind_and_text(rt, chunk.mid)
    if kind != "p":
        return False
    return not (isinstance(error, p.SensitiveWords) and _template_words(rt, chunk.account, text))


def _kind_and_text(rt: Runtime, mid: str) -> tuple[str, str]:
    kind, text = (
        v.decode() if v else ""
        for v in rt.conn.hmget(schema.message_key(mid), Message.field_of("kind"), Message.field_of("text"))
    )
    return kind, text


def _template_words(rt: Runtime, account: str, text: str) -> list[str]:
    """The provider's sensitive words in a text, or a 点点通 template's own words (best effort:
    one more call; an unreachable provider names none)."""
    sample = re.sub(r"\{value\d+\}", "", text)
    if not sample.strip():
        return []
    try:
        return rt.client(account).sensitive_words(sample)
    except p.ProviderError:
        return []


def _sensitive_reason(rt: Runtime, chunk: Chunk) -> str:
    """Answer 6 names no word; the sensitive-word endpoint does (the chunk fails either way,
    never retried)."""
    _, text = _kind_and_text(rt, chunk.mid)
    words = _template_words(rt, chunk.account, text)
    return "provider refused sensitive words (6)" + (f": {', '.join(words)}" if words else "")


def split(
    rt: Runtime,
    chunk: Chunk,
    error_fields: dict[str, Any],
    *,
    culprit: bool = False,
    at: int | None = None,
    from_states: frozenset[str] = frozenset({SUBMITTING}),
) -> str:
    """Halve the chunk under two new linkids (the refused one is never used again).

    Answer 3: the provider takes fewer per submission than we sent; the account's chunk size
    is lowered for every later plan. ``culprit``: a shared submission was refused (6, 7) for
    what one member carries; halving until a half holds one member finds it in about
    2·log2(n) calls, and only that member fails. ``at``: cut there instead of halving (what
    fits under the daily limit, from a chunk not yet called)."""
    conn, settings = rt.conn, rt.settings
    mid, n = chunk.mid, chunk.n
    items = chunk.items.split(";")
    mids = chunk.mids.split(";") if chunk.mids else []
    if len(items) < 2:
        return lifecycle.fail(
            conn, settings, chunk, "provider answered 3 (too many) to a single recipient", error_fields
        )
    half = at or (len(items) + 1) // 2
    if culprit:
        conn.hincrby(schema.COUNTS, "culprit_splits", 1)
    elif at is None:
        accounts.lower_chunk_size(conn, settings, chunk.account, half)
    # Reserve two chunk numbers; one left unused by a lost race is harmless.
    first = conn.hincrby(schema.message_key(mid), Message.field_of("chunk_seq"), 2) - 2
    ttl = schema.ttl_of(conn, schema.chunk_key(mid, n), settings.retention_seconds)
    parts = [(first, items[:half]), (first + 1, items[half:])]

    def also(pipe: redis.client.Pipeline, before: Chunk) -> None:
        pipe.hincrby(schema.message_key(mid), Message.field_of("chunks"), 2)
        lifecycle.create_chunks(
            pipe,
            conn,
            settings,
            mid,
            parts,
            account=chunk.account,
            priority=chunk.priority,
            ttl=ttl,
            split_from=n,
            redact=bool(chunk.redact),
            api_key=chunk.api_key,
            members=[mids[:half], mids[half:]] if mids else [],
            valid_until=chunk.valid_until,
        )
        event = "split_to_find_culprit" if culprit else "split_at_daily_limit" if at else "split"
        lifecycle.append_history(pipe, mid, n, event, into=[m for m, _ in parts], size=half)

    lifecycle.transition(conn, mid, n, from_states, lifecycle.SPLIT, error_fields, also=also)
    return "split"


# -- the ambiguous path ------------------------------------------------------------------------


def handle_ambiguous(rt: Runtime, chunk: Chunk, why: str) -> str:
    """The provider may have accepted this linkid, so it is never submitted again.

    ``high``: resubmit at once under a new linkid (a second verification code is cheaper than
    none); the old linkid stays mapped, so a report on either counts, and the possible double
    delivery is recorded on the chunk and counted (``smsgw_possible_duplicates_total``).
    Others: wait for a status report on the linkid; :func:`workers.lifecycle.settle_unconfirmed`
    decides when the wait is over (a report: accepted; none: never sent again, counted)."""
    conn, settings = rt.conn, rt.settings
    mid, n = chunk.mid, chunk.n
    if chunk.priority == "high":
        if chunk.attempts >= settings.retry_max_attempts:
            return lifecycle.fail(conn, settings, chunk, f"gave up after {chunk.attempts} attempts: {why}", {})
        old, fresh = chunk.linkid, new_linkid(mid)
        ttl = schema.ttl_of(conn, schema.chunk_key(mid, n), settings.retention_seconds)

        def possible_duplicate(pipe: redis.client.Pipeline) -> None:
            pipe.set(schema.linkid_key(fresh), f"{mid}:{n}", ex=ttl)
            pipe.hincrby(schema.chunk_key(mid, n), Chunk.field_of("possible_duplicates"), 1)
            pipe.hincrby(schema.COUNTS, "possible_duplicates", 1)

        lifecycle.enqueue_next(
            conn,
            settings,
            mid,
            n,
            from_states={SUBMITTING},
            to_state=lifecycle.RETRY,
            updates={"linkid": fresh},
            event="ambiguous_resubmit_new_linkid",
            extra=possible_duplicate,
            why=why,
            old_linkid=old,
            linkid=fresh,
        )
        log.warning(
            "high priority chunk resubmitted under a new linkid after an ambiguous outcome: may deliver twice",
            extra={"message_id": mid, "chunk": n, "linkid": fresh},
        )
        return "resubmitted"
    until = time.time() + settings.ambiguous_wait_seconds
    lifecycle.enqueue_next(
        conn,
        settings,
        mid,
        n,
        from_states={SUBMITTING},
        to_state=lifecycle.UNCONFIRMED,
        delay=settings.ambiguous_wait_seconds,
        updates={"wait_until": until},
        event="awaiting_report",
        func=lifecycle.CHECK,
        why=why,
        linkid=chunk.linkid,
    )
    if conn.exists(schema.report_seen_key(chunk.linkid)):
        # A report already came while the chunk sat in 'submitting'.
        return lifecycle.settle_unconfirmed(conn, mid, n)
    return "unconfirmed"
