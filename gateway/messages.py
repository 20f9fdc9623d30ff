"""Messages as the API writes and reads them.

Accepting is one Redis transaction: the message record, its entry for the sweeper and its first
job (the plan, now or at ``send_at``) exist together or not at all; the API answers 5xx if the
transaction fails, and nothing half exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue

from gateway.validation import Accepted
from workers import store
from workers.chunks import chunk_count
from workers.jobs import PLAN
from workers.queues import QUEUE_NAMES
from workers.reports import recipient_states
from workers.settings import Settings

PLAN_TIMEOUT = 600


def accept(
    conn: redis.Redis,
    settings: Settings,
    mid: str,
    msg: Accepted,
    *,
    priority: str,
    reference: str | None,
    callback_url: str | None,
    key_name: str,
    chunk_size: int,
    idempotency: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Store the message and enqueue its plan job in one transaction; returns the 202 body."""
    now = time.time()
    delay = max(0.0, msg.send_at.timestamp() - now) if msg.send_at else 0.0
    ttl = int(settings.retention_seconds + delay)
    state = "scheduled" if delay > 0 else "accepted"
    job_id = f"p-{mid}-1"
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
        },
        "chunks_planned": chunk_count(len(msg.items), chunk_size),
        "send_at": msg.send_at.isoformat() if msg.send_at else None,
    }
    record = {
        "st": state, "a": msg.account, "pr": priority, "k": msg.kind, "text": msg.text,
        "to": ";".join(msg.items), "n": len(msg.items), "dup": msg.duplicates,
        "inv": json.dumps(msg.invalid, ensure_ascii=False), "ref": reference or "",
        "cb": callback_url or "", "key": key_name, "created": f"{now:.3f}",
        "send_at": f"{msg.send_at.timestamp():.3f}" if msg.send_at else "", "job": job_id, "jq": 1,
    }  # fmt: skip
    queue = Queue(QUEUE_NAMES[priority], connection=conn)
    with conn.pipeline(transaction=True) as pipe:
        key = store.msg_key(mid)
        pipe.hset(key, mapping=record)
        pipe.expire(key, ttl)
        pipe.zadd(store.WATCH, {f"m:{mid}": now + delay + settings.job_grace_seconds})
        if delay > 0:
            assert msg.send_at is not None
            queue.enqueue_at(msg.send_at, PLAN, args=(mid,), job_id=job_id, timeout=PLAN_TIMEOUT, pipeline=pipe)
        else:
            queue.enqueue_many(
                [queue.prepare_data(PLAN, args=(mid,), job_id=job_id, timeout=PLAN_TIMEOUT)],
                pipeline=pipe,
            )
        if idempotency is not None:
            idem_key, fingerprint = idempotency
            pipe.set(
                idem_key,
                json.dumps({"fp": fingerprint, "id": mid, "body": body}),
                ex=settings.idempotency_ttl,
            )
        pipe.execute()
    return body


def _iso(ts: str) -> str | None:
    return datetime.fromtimestamp(float(ts), UTC).isoformat() if ts else None


def chunk_view(chunk: dict[str, str], history: list[bytes]) -> dict[str, Any]:
    return {
        "index": int(chunk.get("n", "0")),
        "linkid": chunk.get("lk"),
        "state": chunk.get("st"),
        "recipients": int(chunk.get("nr", "0")),
        "attempts": int(chunk.get("att", "0")),
        "provider_code": int(chunk["code"]) if chunk.get("code") not in (None, "") else None,
        "provider_text": chunk.get("ptext") or None,
        "error": chunk.get("err") or None,
        "reason": chunk.get("reason") or chunk.get("hr") or None,
        "updated_at": _iso(chunk.get("ts", "")),
        "history": [json.loads(h) for h in history],
    }


def view(conn: redis.Redis, mid: str) -> dict[str, Any] | None:
    """The message as ``GET /v1/messages/{id}`` shows it."""
    msg = store.load_message(conn, mid)
    if not msg:
        return None
    chunks = []
    planned = int(msg.get("nseq", "0"))
    if planned:
        with conn.pipeline(transaction=False) as pipe:
            for n in range(planned):
                pipe.hgetall(store.chunk_key(mid, n))
                pipe.lrange(store.history_key(mid, n), 0, -1)
            raw = pipe.execute()
        for i in range(0, len(raw), 2):
            chunk = store.decode(raw[i])
            if chunk:
                chunks.append(chunk_view(chunk, raw[i + 1]))
    counts = {s: 0 for s in (store.PENDING, store.SUBMITTING, store.RETRY, store.UNCONFIRMED,
                             store.HELD, store.SUBMITTED, store.FAILED, store.CANCELLED)}  # fmt: skip
    for c in chunks:
        if c["state"] in counts:
            counts[c["state"]] += c["recipients"]
    reported = {
        name: int(msg.get(f"r_{code}", "0"))
        for code, name in (("D", "delivered"), ("U", "undelivered"), ("X", "unknown"))
    }
    counts[store.SUBMITTED] -= sum(reported.values())
    counts.update(reported)
    if not planned:
        waiting = "cancelled" if msg.get("st") == "cancelled" else "pending"
        counts[waiting] = int(msg.get("n", "0"))
    return {
        "id": mid,
        "status": store.message_state(msg),
        "account": msg.get("a"),
        "priority": msg.get("pr"),
        "reference": msg.get("ref") or None,
        "api_key": msg.get("key"),
        "created_at": _iso(msg.get("created", "")),
        "send_at": _iso(msg.get("send_at", "")),
        "recipients": {
            "accepted": int(msg.get("n", "0")),
            "duplicates_removed": int(msg.get("dup", "0")),
            "invalid": json.loads(msg.get("inv", "[]")),
            "by_state": {k: v for k, v in counts.items() if v},
        },
        "chunks": chunks,
        "replies": replies_for(conn, mid),
        "callbacks": {
            "events_sent": int(msg.get("cb_sent", "0")),
            "state": msg.get("cb_state") or ("failing" if msg.get("cb_fail_since") else "ok")
            if msg.get("cb")
            else None,
            "events_dropped": int(msg.get("cb_dropped", "0")),
            "attempts": [json.loads(a) for a in conn.lrange(f"sg:cbh:{mid}", 0, -1)],
        },
    }


def _callback_state(msg: dict[str, str]) -> str | None:
    if not msg.get("cb"):
        return None
    return msg.get("cb_state") or ("failing" if msg.get("cb_fail_since") else "ok")


def replies_for(conn: redis.Redis, mid: str, limit: int = 100) -> list[dict[str, Any]]:
    ids = conn.zrevrange(f"sg:replies:msg:{mid}", 0, limit - 1)
    return [r for r in (reply_view(conn, i.decode()) for i in ids) if r]


def reply_view(conn: redis.Redis, rid: str) -> dict[str, Any] | None:
    raw = store.decode(conn.hgetall(f"sg:reply:{rid}"))
    if not raw:
        return None
    return {
        "id": rid,
        "mobile": raw.get("mobile"),
        "text": raw.get("content"),
        "linkid": raw.get("linkid") or None,
        "message_id": raw.get("message_id") or None,
        "account": raw.get("account") or None,
        "replied_at": raw.get("time") or None,
        "received_at": _iso(raw.get("received", "")),
    }


def list_replies(
    conn: redis.Redis,
    *,
    mobile: str | None,
    account: str | None,
    message_id: str | None,
    before: float | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; the cursor is the receive time of the last item returned."""
    key = "sg:replies"
    if message_id:
        key = f"sg:replies:msg:{message_id}"
    elif mobile:
        key = f"sg:replies:m:{mobile}"
    elif account:
        key = f"sg:replies:a:{account}"
    top = f"({before}" if before is not None else "+inf"
    out: list[dict[str, Any]] = []
    last = None
    for rid, score in conn.zrevrangebyscore(key, top, "-inf", start=0, num=limit * 4, withscores=True):
        reply = reply_view(conn, rid.decode())
        if reply is None:
            continue
        if (mobile and reply["mobile"] != mobile) or (account and reply["account"] != account):
            continue
        out.append(reply)
        last = score
        if len(out) == limit:
            break
    return out, (f"{last:.3f}" if last is not None and len(out) == limit else None)


def recipients(conn: redis.Redis, mid: str, cursor: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Recipients in order, ``limit`` from position ``cursor``; returns the next cursor.

    A recipient's state is its chunk's until a report (or the end of the report window) gives
    it its own: ``delivered``, ``undelivered`` (with the operator's code) or ``unknown``.
    """
    msg = store.load_message(conn, mid)
    out: list[dict[str, Any]] = []
    position = 0
    planned = int(msg.get("nseq", "0"))
    for n in range(planned):
        chunk = store.load_chunk(conn, mid, n)
        if not chunk or chunk.get("st") == store.SPLIT:
            continue
        items = chunk["to"].split(";")
        if position + len(items) <= cursor:
            position += len(items)
            continue
        reported = recipient_states(conn, mid, n)
        for item in items:
            if position >= cursor:
                if len(out) == limit:
                    return out, position
                mobile = item.split(",", 1)[0]
                state, code, ts = reported.get(mobile, (chunk["st"], "", ""))
                out.append(
                    {"mobile": mobile, "chunk": n, "linkid": chunk["lk"], "state": state,
                     "operator_code": code or None, "reported_at": _iso(ts)}
                )  # fmt: skip
            position += 1
    if not planned and msg.get("to"):
        items = msg["to"].split(";")
        for item in items[cursor : cursor + limit]:
            out.append(
                {"mobile": item.split(",", 1)[0], "chunk": None, "linkid": None, "state": msg.get("st"),
                 "operator_code": None, "reported_at": None}
            )  # fmt: skip
        nxt = cursor + limit
        return out, nxt if nxt < len(items) else None
    return out, None


def cancel(conn: redis.Redis, settings: Settings, mid: str) -> dict[str, int] | None:
    """Cancel what is not yet submitted. ``None`` if nothing could be cancelled."""
    key = store.msg_key(mid)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                state, n = (v.decode() if v else "" for v in pipe.hmget(key, "st", "n"))
                if state in ("accepted", "scheduled"):
                    pipe.multi()
                    pipe.hset(key, mapping={"st": "cancelled", "cancelled": f"{time.time():.3f}"})
                    pipe.zrem(store.WATCH, f"m:{mid}")
                    pipe.execute()
                    return {"chunks": 0, "recipients": int(n or 0)}
                pipe.reset()
                break
            except redis.WatchError:
                continue
    cancelled = {"chunks": 0, "recipients": 0}
    for n in range(int(conn.hget(key, "nseq") or 0)):
        before = store.transition(conn, mid, n, store.CANCELLABLE, store.CANCELLED, also=_record_cancel(mid, n))
        if before is not None:
            cancelled["chunks"] += 1
            cancelled["recipients"] += int(before.get("nr", "0"))
            if before.get("st") == store.HELD:
                conn.zrem(store.held_key(before["a"]), store.chunk_ref(mid, n))
    return cancelled if cancelled["chunks"] else None


def _record_cancel(mid: str, n: int) -> Callable[[Pipeline, dict[str, str]], None]:
    return lambda pipe, before: store.record(pipe, mid, n, "cancelled")
