"""Messages as the API writes and reads them.

Accepting is one Redis transaction: the message record, its entry for the sweeper and its first
job (the plan, now or at ``send_at``, built by ``workers.lifecycle.enqueue_plan``) exist together
or not at all. Cancelling is ``workers.lifecycle.cancel_message``.

The API never answers an error for a message it then sends. When the transaction's outcome is
unknown (a timeout after EXEC was sent: a stalled Redis executes it when it wakes), a fence
decides: the transaction WATCHes a key nobody writes, and :func:`settle` writes it and looks
for the message in one step once Redis answers. Redis runs commands one at a time, so either
the EXEC ran first (the message exists: 202) or the fence did, and the EXEC, whenever it
arrives, aborts (nothing was stored: 503). One WATCH is the whole cost on the happy path.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import redis

import gateway.quotas as quotas
from gateway.validation import Accepted
from workers import coalesce, guardrails, lifecycle
from workers.chunks import chunk_count
from workers.reports import recipient_state, recipient_states
from workers.runtime import Runtime, replicated
from workers.storage import schema, scripts
from workers.storage.schema import Chunk, Folded, Message, MessageState, Reply, ReportState
from workers.text import mobile_of
from workers.times import from_provider, rfc3339


def accept(
    rt: Runtime,
    mid: str,
    msg: Accepted,
    *,
    priority: str,
    reference: str | None,
    callback_url: str | None,
    key_name: str,
    chunk_size: int,
    test: bool = False,
    redact: bool = False,
    idempotency: tuple[str, str] | None = None,
    valid_for: int | None = None,
    valid_from: float | None = None,
    caps: guardrails.Caps | None = None,
) -> dict[str, Any]:
    """Store the message and enqueue its plan job in one transaction; returns the 202 body.

    ``caps``: a one-recipient send's caps check, made here (inside the accept when it joins a
    pool); over a cap, nothing is stored and :class:`Capped` is raised."""
    conn, settings = rt.conn, rt.settings
    now = time.time()
    delay = max(0.0, msg.send_at.timestamp() - now) if msg.send_at else 0.0
    valid_for = settings.valid_for.get(priority, 0) if valid_for is None else valid_for
    # From when the caller wants it sent (quiet hours may defer a send past that, not its validity).
    valid_until = (valid_from or now + delay) + valid_for if valid_for else 0.0
    ttl = int(settings.retention_seconds + delay)
    state = MessageState.SCHEDULED if delay > 0 else MessageState.ACCEPTED
    if not msg.items:
        state = MessageState.SUPPRESSED  # every recipient was: final at once, nothing to plan
    body = {
        "id": mid,
        "status": state,
        "account": msg.account,
        "priority": priority,
        "reference": reference,
        "recipients": {
            "accepted": len(msg.items),
            "duplicates_removed": msg.duplicates,
            "invalid": msg.invalid,
            "suppressed": msg.suppressed,
        },
        "billable_parts": msg.parts,
        "chunks_planned": chunk_count(len(msg.items), chunk_size),
        "send_at": rfc3339(msg.send_at.timestamp()) if msg.send_at else None,
        "valid_until": _iso(valid_until) if valid_until else None,
        "test": test,
    }
    record = Message(
        id=mid,
        state=state,
        account=msg.account,
        priority=priority,
        kind=msg.kind,
        text=msg.text,
        variables=",".join(msg.variables),
        items=";".join(msg.items),
        recipients=len(msg.items),
        parts=msg.parts,
        duplicates=msg.duplicates,
        invalid=json.dumps(msg.invalid, ensure_ascii=False),
        suppressed=json.dumps(msg.suppressed, ensure_ascii=False) if msg.suppressed else "",
        flagged=",".join(msg.flagged),
        reference=reference or "",
        callback_url=callback_url or "",
        api_key=key_name,
        test=int(test),
        redact=int(redact or priority == "high"),
        valid_until=valid_until,
        created=schema.time_of(mid),  # the id's own time: a folded record keeps no other
        send_at=msg.send_at.timestamp() if msg.send_at else 0.0,
        job_seq=1,
    )
    if state == MessageState.SUPPRESSED and record.redact:
        # Final at once and never sent: a code's text is not kept even for a moment.
        record.text, record.text_length = "", len(msg.text)
    key, fence = schema.message_key(mid), schema.accept_fence_key(mid)
    # One recipient, sent now, for real: it waits in a pool to share a provider call.
    pool = None if delay or test else coalesce.pool_for(settings, msg.account, priority, msg.kind, msg.text, msg.items)
    day = quotas.today(now)
    idem_value = json.dumps({"fp": idempotency[1], "id": mid, "body": body}) if idempotency else ""
    fields = json.dumps({k: str(v) for k, v in record.to_hash().items()}, ensure_ascii=False)
    arguments: dict[str, Any] = {
        "fence": fence,
        "message": key,
        "index": schema.key_messages_key(key_name),
        "idempotency": idempotency[0] if idempotency else "",
        "pool": pool[0] if pool else "",
        "pools": schema.POOLS,
        "woken": schema.POOLS_NEW,
        "ttl": ttl,
        "index_min_ms": int((now - settings.retention_seconds) * 1000),  # the index forgets what expired
        # Renewed on the key's first request of a day (and by a scheduled message), so it
        # covers that whole day's messages: a day longer than they live, and one for the clock.
        "index_ttl": settings.retention_seconds + 2 * 86400 + int(delay),
        "date_index": int(delay > 0 or _first_today(rt, key_name, day)),
        "idem_value": idem_value,
        "idem_ttl": settings.idempotency_ttl,
        "pool_entry": coalesce.entry(mid, pool[1]) if pool else "",
        "pool_size": chunk_size,
        "pool_due": f"{coalesce.due_at(settings, priority, now):.3f}",
        "fields": fields,  # a JSON object: one argument packs faster than sixty
        "id_ms": str(int(mid[:11], 16)),
        "id_random": str(int(mid[11:], 16)),  # decimal: Redis keeps it as an integer
        **(caps.accept_args() if caps is not None and pool is not None else guardrails.Caps.NONE),
    }
    if caps is not None and pool is None and any(caps.run(conn)):
        raise Capped(mid)
    try:
        if pool is not None:
            # One script, one round trip: the fence and the cap are checked inside it.
            # Sent with the process's other accepts of the moment (workers.storage.batched).
            if (size := int(rt.batched(scripts.ACCEPT)(conn, **arguments))) == CAPPED:
                raise Capped(mid)
            if size < 0:
                raise redis.WatchError("the accept's fence was set first")
        else:
            with conn.pipeline(transaction=True) as pipe:
                pipe.watch(fence)
                pipe.multi()
                if msg.items:
                    record.job = lifecycle.enqueue_plan(
                        pipe,
                        conn,
                        settings,
                        mid,
                        account=msg.account,
                        priority=priority,
                        seq=1,
                        at=msg.send_at if delay > 0 else None,
                        now=now,
                    )
                scripts.ACCEPT(pipe, **arguments)
                pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError, redis.WatchError):
        if not settle(conn, mid, settings.accept_settle_seconds):
            raise NotAccepted(mid) from None
    try:
        durable = replicated(conn, settings)
    except redis.RedisError:
        raise OutcomeUnknown(mid) from None  # stored on a master that stopped answering
    if not durable and lifecycle.cancel_unplanned(conn, mid, idempotency[0] if idempotency else ""):
        # Not on SMSGW_REDIS_REPLICA_ACKS replicas in time: a failover now could lose it, so it
        # is withdrawn before any worker took it, and the client is told to retry. If a worker
        # already planned it, it is on its way and the 202 stands.
        #
        # "Nothing was accepted" is true only once the withdrawal is where the accept may be: a
        # replica that got the accept but not the cancel, promoted, sends the message. So the
        # cancel waits for every replica connected now; without them, the outcome is unknown.
        # The cancel also dropped the idempotency record, so a retry with the same key either
        # accepts anew (the cancel held) or replays the 202 (the replica with the accept won).
        try:
            withdrawn = replicated(conn, settings, every=True)
        except redis.RedisError:
            withdrawn = False
        if not withdrawn:
            raise OutcomeUnknown(mid)
        raise NotAccepted(mid)
    _count_accepted(rt, now, day, key_name, msg)
    return body


def _first_today(rt: Runtime, key_name: str, day: str) -> bool:
    """Whether this is the process's first request of ``key_name`` on ``day`` (the accept then
    dates the key's index; a Redis emptied meanwhile has it dated again the next day)."""
    if rt.dated.get(key_name) == day:
        return False
    rt.dated[key_name] = day
    return True


def _count_accepted(rt: Runtime, now: float, day: str, key_name: str, msg: Accepted) -> None:
    """An accepted message's counts (``workers.tally``): the fleet's, this minute's, and the
    day's usage of its key and account. A one-recipient, one-part request counts as one
    ``single`` (readers add it to requests, recipients and parts)."""
    recipients, parts, suppressed = len(msg.items), msg.parts, len(msg.suppressed)
    single = recipients == 1 and parts == 1 and not suppressed
    tally = rt.tally
    if single:
        tally.add(schema.COUNTS, "accepted_single")
    else:
        tally.add(schema.COUNTS, "accepted_recipients", recipients)
        tally.add(schema.COUNTS, "accepted_parts", parts)
        tally.add(schema.COUNTS, "suppressed_recipients", suppressed)
    tally.add(schema.minute_key(now), "accepted", 1, schema.MINUTE_TTL)
    usage = (
        {"single": 1} if single else {"requests": 1, "recipients": recipients, "parts": parts, "suppressed": suppressed}
    )
    for key in (schema.usage_key(key_name, day), schema.account_usage_key(msg.account, day)):
        for name, n in usage.items():
            tally.add(key, name, n, schema.USAGE_TTL)


class NotAccepted(Exception):
    """The accept transaction did not commit and never will: nothing was stored."""


#: ``scripts.ACCEPT``'s answer for a mobile over a cap.
CAPPED = -2


class Capped(Exception):
    """The one recipient is over a frequency cap: nothing was stored (the caller stores the
    message with it suppressed)."""


class OutcomeUnknown(Exception):
    """The message may exist: Redis did not answer within ``SMSGW_ACCEPT_SETTLE_SECONDS``, or
    its withdrawal did not reach the replicas that may hold it."""


def settle(conn: redis.Redis, mid: str, bound: float) -> bool:
    """Whether an accept transaction whose answer was lost committed, for good: writes its fence
    (a later EXEC then aborts) and looks for the message in one transaction, asking until Redis
    answers, for at most ``bound`` seconds."""
    give_up = time.monotonic() + bound
    while True:
        try:
            with conn.pipeline(transaction=True) as pipe:
                pipe.set(schema.accept_fence_key(mid), "void", ex=3600)
                pipe.exists(schema.message_key(mid))
                return bool(pipe.execute()[1])
        except redis.RedisError:
            if time.monotonic() >= give_up:
                raise OutcomeUnknown(mid) from None
            time.sleep(0.2)


_iso = rfc3339


def chunk_view(chunk: Chunk, history: list[bytes]) -> dict[str, Any]:
    return {
        "index": chunk.n,
        "linkid": chunk.linkid,
        "state": chunk.state,
        "account": chunk.account,  # the one that carries it: a backup's after a failover
        "recipients": chunk.recipients,
        "attempts": chunk.attempts,
        "provider_code": int(chunk.code) if chunk.code else None,
        "provider_text": chunk.provider_text or None,
        "error": chunk.error or None,
        "reason": chunk.reason or chunk.hold_reason or None,
        "updated_at": _iso(chunk.updated),
        "possible_duplicates": chunk.possible_duplicates,
        "unconfirmed": bool(chunk.unconfirmed),
        "history": [_timed(json.loads(h)) for h in history],
    }


def caller_template(msg: Message) -> str:
    """A personalised message's template as its caller wrote it (``{name}``), not as the provider
    takes it (``{value0}``)."""
    names = msg.variables.split(",") if msg.variables else []
    return re.sub(
        r"\{value(\d+)\}",
        lambda m: "{" + names[int(m.group(1))] + "}" if int(m.group(1)) < len(names) else m.group(0),
        msg.text,
    )


def _timed(entry: dict[str, Any]) -> dict[str, Any]:
    """A history or attempt line as the API shows it: its ``at`` in RFC 3339."""
    return {**entry, "at": rfc3339(entry.get("at"))} if "at" in entry else entry


def folded_view(msg: Message, sub: Folded) -> dict[str, Any]:
    """A folded message's submission (``workers.archive``): what its record kept of it. Its
    step-by-step history went with the submission's own records."""
    return {
        "index": 0,
        "linkid": sub.linkid,
        "state": lifecycle.SUBMITTED,
        "account": msg.account,  # the requested one: which carried it is not kept at rest
        "recipients": 1,
        "attempts": None,
        "provider_code": 0,
        "provider_text": None,
        "error": None,
        "reason": None,
        "updated_at": _iso(sub.submitted),
        "possible_duplicates": 0,
        "unconfirmed": False,
        "history": [],
        "folded": True,
    }


def _callback_state(msg: Message) -> str | None:
    if not msg.callback_url:
        return None
    return msg.callback_state or ("failing" if msg.callback_fail_since else "ok")


def view(conn: redis.Redis, mid: str) -> dict[str, Any] | None:
    """The message as ``GET /v1/messages/{id}`` shows it."""
    msg = Message.read(conn, mid)
    if msg is None:
        return None
    chunks = []
    if msg.folded is not None:
        chunks.append(folded_view(msg, msg.folded))
    elif msg.chunk_seq:
        with conn.pipeline(transaction=False) as pipe:
            for n in range(msg.chunk_seq):
                pipe.hgetall(schema.chunk_key(mid, n))
                pipe.lrange(schema.history_key(mid, n), 0, -1)
            raw = pipe.execute()
        for i in range(0, len(raw), 2):
            if raw[i]:
                chunks.append(chunk_view(Chunk.from_hash(raw[i], mid=mid), raw[i + 1]))
    elif msg.via:
        # Coalesced: the batch's submission that carries its one recipient, with the others'.
        for chunk in lifecycle.member_chunks(conn, mid, msg.via):
            shared = chunk_view(chunk, conn.lrange(schema.history_key(msg.via, chunk.n), 0, -1))
            chunks.append({**shared, "recipients": 1, "batch": msg.via, "submission_recipients": chunk.recipients})
    by_state = (
        lifecycle.PENDING,
        lifecycle.SUBMITTING,
        lifecycle.RETRY,
        lifecycle.UNCONFIRMED,
        lifecycle.HELD,
        lifecycle.SUBMITTED,
        lifecycle.FAILED,
        lifecycle.CANCELLED,
        lifecycle.EXPIRED,
    )
    counts: dict[str, int] = dict.fromkeys(by_state, 0)
    for c in chunks:
        if c["state"] in counts:
            counts[c["state"]] += c["recipients"]
    reported = {state.label: msg.recipients_final.get(state, 0) for state in ReportState}
    counts[lifecycle.SUBMITTED] -= sum(reported.values())
    counts.update(reported)
    if not msg.chunk_seq and not msg.via and msg.folded is None:
        waiting = msg.state if msg.state in (MessageState.CANCELLED, MessageState.SUPPRESSED) else "pending"
        counts[waiting] = msg.recipients
    counts["suppressed"] = counts.get("suppressed", 0) + len(json.loads(msg.suppressed or "[]"))
    return {
        "id": mid,
        "status": lifecycle.message_state(msg),
        "account": msg.account,
        "priority": msg.priority,
        "reference": msg.reference or None,
        "api_key": msg.api_key,
        "billable_parts": msg.parts,
        "text": (msg.text if msg.kind != "p" else None) if msg.text else ("[redacted]" if msg.redacted else None),
        "template": caller_template(msg) if msg.kind == "p" and msg.text else None,
        "text_length": len(msg.text) if msg.text else msg.text_length or None,
        "test": bool(msg.test),
        "flagged_words": msg.flagged.split(",") if msg.flagged else [],
        "created_at": _iso(msg.created),
        "send_at": _iso(msg.send_at),
        "recipients": {
            "accepted": msg.recipients,
            "duplicates_removed": msg.duplicates,
            "invalid": json.loads(msg.invalid),
            "suppressed": json.loads(msg.suppressed or "[]"),
            "by_state": {k: v for k, v in counts.items() if v},
        },
        "chunks": chunks,
        "replies": replies_for(conn, mid),
        "callbacks": {
            "events_sent": msg.callbacks_sent,
            "state": _callback_state(msg),
            "events_dropped": msg.callbacks_dropped,
            "attempts": [_timed(json.loads(a)) for a in conn.lrange(schema.callback_log_key(mid), 0, -1)],
        },
    }


def replies_for(conn: redis.Redis, mid: str, limit: int = 100) -> list[dict[str, Any]]:
    ids = conn.zrevrange(schema.replies_index_key("msg", mid), 0, limit - 1)
    return [r for r in (reply_view(conn, i.decode()) for i in ids) if r]


def reply_view(conn: redis.Redis, rid: str) -> dict[str, Any] | None:
    reply = Reply.load(conn, rid)
    return _reply_view(reply) if reply is not None else None


def _reply_view(reply: Reply) -> dict[str, Any]:
    return {
        "id": reply.id,
        "mobile": reply.mobile,
        "text": reply.content,
        "linkid": reply.linkid or None,
        "message_id": reply.message_id or None,
        "account": reply.account or None,
        "replied_at": from_provider(reply.time),
        "received_at": _iso(reply.received),
    }


def list_replies(
    conn: redis.Redis,
    *,
    api_key: str | None,
    mobile: str | None,
    account: str | None,
    message_id: str | None,
    before: float | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; the cursor is the receive time of the last item returned.

    ``api_key``: only replies to that key's messages (an API client); ``None``: every reply,
    unmatched ones included (operators). Filters narrow within that; the scan reads at most
    ``SCAN_PAGES`` pages of the index, so a filter that matches little costs bounded work.
    """
    key = schema.REPLIES if api_key is None else schema.replies_index_key("k", api_key)
    if message_id:
        key = schema.replies_index_key("msg", message_id)
    elif mobile:
        key = schema.replies_index_key("m", mobile)
    elif account:
        key = schema.replies_index_key("a", account)
    top = f"({before}" if before is not None else "+inf"
    out: list[dict[str, Any]] = []
    last = None
    for _ in range(SCAN_PAGES):
        page = conn.zrevrangebyscore(key, top, "-inf", start=0, num=limit * 2, withscores=True)
        for rid, score in page:
            last, top = score, f"({score}"
            reply = Reply.load(conn, rid.decode())
            if reply is None or (api_key is not None and reply.api_key != api_key):
                continue
            if (mobile and reply.mobile != mobile) or (account and reply.account != account):
                continue
            out.append(_reply_view(reply))
            if len(out) == limit:
                return out, f"{score:.3f}"
        if len(page) < limit * 2:
            return out, None
    return out, (f"{last:.3f}" if last is not None else None)


SCAN_PAGES = 10
#: An index entry is dated by Redis's clock when the message is stored (entries of an older
#: release by their ids' milliseconds), which differs from its id's time by the accept's own
#: duration and the API host's clock: the range read is this much wider at each end, and each
#: id's time decides.
CLOCK_SKEW_MS = 60_000


def list_messages(
    conn: redis.Redis,
    api_key: str,
    *,
    reference: str | None,
    mobile: str | None,
    status: str | None,
    since: float,
    until: float,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The key's own messages, newest first, created in ``[since, until)`` and older than the
    ``cursor`` (the index entry of the last one returned). The index is a stream of message ids
    in the order they were accepted: about 38 bytes a message, where a sorted set took 118.
    Filters read at most ``SCAN_PAGES`` pages of it."""
    index = schema.key_messages_key(api_key)
    high = "(" + cursor if cursor else str(int(until * 1000) + CLOCK_SKEW_MS)
    low = str(max(0, int(since * 1000) - CLOCK_SKEW_MS))
    first, past = schema.message_id_at(since), schema.message_id_at(until)
    out: list[dict[str, Any]] = []
    for _ in range(SCAN_PAGES):
        page = conn.xrevrange(index, high, low, count=limit * 2)
        for raw_id, entry in page:
            at = raw_id.decode()
            high = "(" + at
            mid = _indexed(at, entry)
            if not first <= mid[: len(first)] < past:
                continue
            msg = Message.read(conn, mid)
            if msg is None or (reference and msg.reference != reference):
                continue
            state = lifecycle.message_state(msg)
            if status and state != status:
                continue
            if mobile and mobile not in _mobiles(conn, msg):
                continue
            out.append(
                {
                    "id": mid,
                    "status": state,
                    "priority": msg.priority,
                    "reference": msg.reference or None,
                    "recipients": msg.recipients,
                    "created_at": _iso(msg.created),
                }
            )
            if len(out) == limit:
                return out, at
        if len(page) < limit * 2:
            return out, None
    return out, high.lstrip("(")


def _indexed(at: str, entry: dict[bytes, bytes]) -> str:
    """A message id from its index entry (``scripts.ACCEPT``): its milliseconds are those nearest
    the entry's date that agree with ``t`` (them modulo 2^20), then its random part ``n``. Entries
    written before: ``m``, the random part in hex (the entry dated by the id), or the whole id."""
    ms = int(at.split("-")[0])
    if b"n" in entry:
        half = 1 << 19
        ms += (int(entry[b"t"]) - ms + half) % (2 * half) - half
        return f"{ms:011x}{int(entry[b'n']):012x}"
    value = entry[b"m"].decode()
    return value if len(value) == schema.MID_LENGTH else f"{ms:011x}{value}"


def _mobiles(conn: redis.Redis, msg: Message) -> set[str]:
    if not msg.chunk_seq:
        return {mobile_of(item) for item in msg.items.split(";") if item}
    with conn.pipeline(transaction=False) as pipe:
        for n in range(msg.chunk_seq):
            pipe.hget(schema.chunk_key(msg.id, n), Chunk.field_of("items"))
        found: set[str] = set()
        for raw in pipe.execute():
            found |= {mobile_of(item) for item in (raw or b"").decode().split(";") if item}
    return found


def recipients(conn: redis.Redis, mid: str, cursor: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Recipients in order, ``limit`` from position ``cursor``; returns the next cursor.

    A recipient's state is its chunk's until a report (or the end of the report window) gives
    it its own: ``delivered``, ``undelivered`` (with the operator's code) or ``unknown``.
    """
    msg = Message.read(conn, mid) or Message(id=mid)
    if msg.folded is not None:
        sub = msg.folded
        row = {"mobile": mobile_of(msg.items), "chunk": 0, "linkid": sub.linkid}
        state = ReportState(sub.report).label if sub.report else lifecycle.SUBMITTED
        return [{**row, "state": state, "operator_code": sub.code or None, "reported_at": _iso(sub.reported)}], None
    if msg.via:
        return _member_recipients(conn, msg), None
    out: list[dict[str, Any]] = []
    position = 0
    for n in range(msg.chunk_seq):
        chunk = Chunk.load(conn, mid, n)
        if chunk is None or chunk.state == lifecycle.SPLIT:
            continue
        mobiles = chunk.mobiles
        if position + len(mobiles) <= cursor:
            position += len(mobiles)
            continue
        reported = recipient_states(conn, mid, n)
        for mobile in mobiles:
            if position >= cursor:
                if len(out) == limit:
                    return out, position
                state, code, ts = reported.get(mobile, (chunk.state, "", ""))
                out.append(
                    {
                        "mobile": mobile,
                        "chunk": n,
                        "linkid": chunk.linkid,
                        "state": state,
                        "operator_code": code or None,
                        "reported_at": _iso(ts),
                    }
                )
            position += 1
    if not msg.chunk_seq and msg.items:
        items = msg.items.split(";")
        for item in items[cursor : cursor + limit]:
            out.append(
                {
                    "mobile": mobile_of(item),
                    "chunk": None,
                    "linkid": None,
                    "state": msg.state,
                    "operator_code": None,
                    "reported_at": None,
                }
            )
        nxt = cursor + limit
        return out, nxt if nxt < len(items) else None
    return out, None


def _member_recipients(conn: redis.Redis, msg: Message) -> list[dict[str, Any]]:
    """A coalesced message's one recipient, as its batch's chunk (and the reports on it) say."""
    mobile = mobile_of(msg.items)
    for chunk in lifecycle.member_chunks(conn, msg.id, msg.via):
        state, code, ts = recipient_state(conn, msg.via, chunk.n, mobile) or (chunk.state, "", "")
        row = {"mobile": mobile, "chunk": 0, "linkid": chunk.linkid, "state": state}
        return [{**row, "operator_code": code or None, "reported_at": _iso(ts)}]
    done = [s for s, n in msg.recipients_final.items() if n and s in lifecycle.FINAL]
    state = done[0] if done else msg.state
    return [
        {"mobile": mobile, "chunk": None, "linkid": None, "state": state, "operator_code": None, "reported_at": None}
    ]
