"""Caller notifications: telling the calling service, by events POSTed as JSON to the message's ``callback_url``.

Events (a recipient reached a final state, a reply came) queue per message in Redis and go out
in batches of up to ``SMSGW_CALLBACK_MAX_BATCH`` on their own RQ queue, so a slow receiver never
delays a send or report ingestion. Each POST is signed: ``X-Smsgw-Signature: v1=<hex>`` is
HMAC-SHA256 over ``<timestamp>.<raw body>`` with the API key's callback secret, and
``X-Smsgw-Timestamp`` lets the receiver refuse replays. A receiver that fails is retried with
backoff for ``SMSGW_CALLBACK_RETRY_SECONDS``, then abandoned (the message says so); a message
keeps at most ``PENDING_MAX`` undelivered events, so a dead URL cannot fill Redis.

The callback secret of a key is ``sha256("smsgw-callback:" + key)`` in hex: the calling service
derives it from its own API key; it never travels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from rq import Queue

from workers import egress, schema
from workers.alerts import alert
from workers.policy import backoff
from workers.queues import CALLBACK_QUEUE
from workers.runtime import Runtime, current
from workers.schema import Message, callback_job_key, callback_log_key, callback_queue_key

log = logging.getLogger("smsgw.notifications")
PENDING_MAX = 10_000
HISTORY_MAX = 50
DELIVER = "workers.notifications.deliver"


def _post(url: str, body: bytes, headers: dict[str, str], networks: tuple[egress.Network, ...]) -> tuple[bool, str]:
    """POST to the caller's URL at an address checked just now (workers.egress); no redirects."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        address = egress.resolve(host, parts.port or (443 if parts.scheme == "https" else 80), networks)
    except egress.Refused as e:
        log.warning("callback refused: %s", e)
        return False, f"refused: {e}"
    with requests.Session() as session:
        adapter = egress.PinnedAdapter(host, address)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            response = session.post(
                url,
                data=body,
                headers={**headers, "Host": parts.netloc.rpartition("@")[2]},
                timeout=(3, 10),
                allow_redirects=False,
            )
        except requests.RequestException as e:
            return False, type(e).__name__
    return 200 <= response.status_code < 300, f"HTTP {response.status_code}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def _sender(rt: Runtime, mid: str) -> tuple[Message | None, int]:
    """The message (live or folded: a reply can come after ``workers.archive`` folded it) and
    the seconds its records have left."""
    msg = Message.read(rt.conn, mid)
    home = schema.folded_key(mid) if msg is not None and msg.folded is not None else schema.message_key(mid)
    return msg, schema.ttl_of(rt.conn, home, rt.settings.retention_seconds)


def _unfold_counters(pipe: Any, msg: Message, ttl: int) -> None:
    """A folded message's callback counters move to a live hash (without a state: ``Message.read``
    lays it over the folded record) before the delivery job changes them."""
    key = schema.message_key(msg.id)
    for name in Message.CALLBACK_FIELDS:
        if getattr(msg, name):
            pipe.hsetnx(key, Message.field_of(name), *Message.short(**{name: getattr(msg, name)}).values())
    pipe.expire(key, ttl)


def queue_event(rt: Runtime, mid: str, event: dict[str, Any]) -> None:
    conn = rt.conn
    msg, ttl = _sender(rt, mid)
    if msg is None or not msg.callback_url:
        return
    event = {**event, "message_id": mid, "reference": msg.reference or None}
    with conn.pipeline(transaction=False) as pipe:
        pipe.rpush(callback_queue_key(mid), json.dumps(event, ensure_ascii=False))
        pipe.ltrim(callback_queue_key(mid), -PENDING_MAX, -1)
        pipe.expire(callback_queue_key(mid), ttl)
        pipe.execute()
    _schedule(rt, mid, 0.0)


def _schedule(rt: Runtime, mid: str, delay: float, *, force: bool = False) -> None:
    """One delivery job per message at a time (a marker with expiry, in case a job is lost)."""
    conn = rt.conn
    marker = callback_job_key(mid)
    if force:
        conn.set(marker, 1, ex=int(delay) + 120)
    elif not conn.set(marker, 1, nx=True, ex=int(delay) + 120):
        return
    queue = Queue(CALLBACK_QUEUE, connection=conn)
    if delay > 0:
        queue.enqueue_in(timedelta(seconds=delay), DELIVER, mid, job_timeout=30, result_ttl=60)
    else:
        queue.enqueue(DELIVER, mid, job_timeout=30, result_ttl=60)


def deliver(mid: str) -> str:
    return deliver_now(current(), mid)


def deliver_now(rt: Runtime, mid: str) -> str:
    conn, settings = rt.conn, rt.settings
    raw = conn.lrange(callback_queue_key(mid), 0, settings.callback_max_batch - 1)
    msg_key = schema.message_key(mid)
    if not raw:
        conn.delete(callback_job_key(mid))
        return "empty"
    msg, ttl = _sender(rt, mid)
    url, key_name = (msg.callback_url, msg.api_key) if msg is not None else ("", "")
    secret = next((k.callback_secret.reveal() for k in settings.api_keys if k.name == key_name), "")
    body = json.dumps({"events": [json.loads(e) for e in raw]}, ensure_ascii=False).encode()
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Smsgw-Timestamp": str(stamp),
        "X-Smsgw-Signature": f"v1={sign(secret, stamp, body)}",
    }
    ok, outcome = _post(url, body, headers, settings.callback_allow_networks)
    attempt = {"at": round(time.time(), 3), "events": len(raw), "outcome": outcome, "ok": ok}
    with conn.pipeline(transaction=False) as pipe:
        if msg is not None and msg.folded is not None:
            _unfold_counters(pipe, msg, ttl)
        pipe.rpush(callback_log_key(mid), json.dumps(attempt))
        pipe.ltrim(callback_log_key(mid), -HISTORY_MAX, -1)
        pipe.expire(callback_log_key(mid), ttl)
        if ok:
            pipe.ltrim(callback_queue_key(mid), len(raw), -1)
            pipe.hdel(msg_key, Message.field_of("callback_fail_since"), Message.field_of("callback_fails"))
            pipe.hincrby(msg_key, Message.field_of("callbacks_sent"), len(raw))
        pipe.execute()
    if ok:
        if conn.llen(callback_queue_key(mid)):
            _schedule(rt, mid, 0.0, force=True)
        else:
            conn.delete(callback_job_key(mid))
        return "delivered"
    now = time.time()
    conn.hsetnx(msg_key, Message.field_of("callback_fail_since"), f"{now:.3f}")
    fails = conn.hincrby(msg_key, Message.field_of("callback_fails"), 1)
    since = float(conn.hget(msg_key, Message.field_of("callback_fail_since")) or now)
    if now - since >= settings.callback_retry_seconds:
        dropped = conn.llen(callback_queue_key(mid))
        conn.delete(callback_queue_key(mid), callback_job_key(mid))
        conn.hset(msg_key, mapping=Message.short(callback_state="abandoned", callbacks_dropped=dropped))
        alert(settings, conn, "callback_abandoned", message_id=mid, events=dropped, last=outcome)
        return "abandoned"
    _schedule(rt, mid, backoff(fails, settings.retry_base_seconds, settings.retry_max_seconds), force=True)
    return "retry"
