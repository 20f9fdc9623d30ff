"""Caller notifications: telling the calling service, by events POSTed as JSON to the message's ``callback_url``.

Events (a recipient reached a final state, a reply came) queue per message in Redis
(``schema.callback_queue_key``) and go out in batches of up to ``SMSGW_CALLBACK_MAX_BATCH``.
Each POST is signed: ``X-Smsgw-Signature: v1=<hex>`` is HMAC-SHA256 over ``<timestamp>.<raw
body>`` with the API key's callback secret, and ``X-Smsgw-Timestamp`` lets the receiver refuse
replays. A receiver that fails is retried with backoff for ``SMSGW_CALLBACK_RETRY_SECONDS``,
then abandoned (the message says so, with the events dropped); a message keeps at most
``PENDING_MAX`` undelivered events, so a dead URL cannot fill Redis (what is trimmed is counted
as dropped too).

**Apart from sending.** A receiver is someone else's server: it may trickle a byte a second or
answer gigabytes. Deliveries therefore never run on the send workers' RQ queues: each ``smsgw
worker`` delivers on a bounded pool of threads of its own (:func:`start`,
``SMSGW_CALLBACK_CONCURRENCY``, 0 for none), each delivery has one deadline for the whole
exchange (``SMSGW_CALLBACK_DEADLINE_SECONDS``: connect, send, status line and headers) after
which its socket is shut, and the answer's body is never read. A send's latency does not
depend on any receiver.

**Nothing lost to a dead delivery.** Which messages have events to deliver, and when, is one
sorted set (``schema.CALLBACKS_DUE``). A delivery claims a message by moving its time past the
delivery's deadline (``scripts.CLAIM_DUE``); finishing moves it to the next attempt or
removes it (``scripts.SETTLE_CALLBACKS``, which looks at the queue in the same step, so an event
queued meanwhile is never stranded). A worker killed mid-delivery leaves the claim to run out,
and any worker delivers the events again: at least once, never silently lost.

The callback secret of a key is ``sha256("smsgw-callback:" + key)`` in hex: the calling service
derives it from its own API key; it never travels.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import redis

from workers import egress
from workers.alerts import alert
from workers.policy import backoff
from workers.queues import take_legacy_callbacks
from workers.runtime import Runtime
from workers.storage import schema, scripts
from workers.storage.schema import Message, callback_log_key, callback_queue_key
from workers.times import rfc3339

log = logging.getLogger("smsgw.notifications")
PENDING_MAX = 10_000
HISTORY_MAX = 50
#: How long a dispatcher sleeps when nothing is due.
IDLE = 0.2
#: A claim outlives the delivery's deadline by this much before another worker may take it.
CLAIM_MARGIN = 5.0


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    deadline: float,
    networks: Sequence[egress.Network] = (),
    loopback: bool = False,
) -> tuple[bool, str]:
    """POST to the caller's URL at an address checked just now (``workers.egress``), within
    ``deadline`` seconds for the whole exchange; no redirects, the body of the answer unread.

    ``requests`` bounds each socket operation, not an exchange (a receiver trickling a byte
    every few seconds holds it for ever), so this opens the socket itself, to the address it
    checked, and a timer shuts it at the deadline whatever the call is doing."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = egress.resolve(host, port, networks, loopback=loopback)
    except egress.Refused as e:
        log.warning("callback refused: %s", e)
        return False, f"refused: {e}"
    ends = time.monotonic() + deadline
    sock: socket.socket | None = None
    shut = threading.Event()

    def cut() -> None:
        shut.set()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(deadline, cut)
    timer.start()
    try:
        sock = socket.create_connection((address, port), timeout=max(0.1, ends - time.monotonic()))
        if shut.is_set():
            raise TimeoutError
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.settimeout(max(0.1, ends - time.monotonic()))
        conn = http.client.HTTPConnection(host, port)
        conn.sock = sock
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers={**headers, "Host": parts.netloc.rpartition("@")[2]})
        status = conn.getresponse().status  # headers only: the body is never read
    except (OSError, http.client.HTTPException) as e:
        return False, "deadline" if shut.is_set() else type(e).__name__
    finally:
        timer.cancel()
        if sock is not None:
            sock.close()
    return 200 <= status < 300, f"HTTP {status}"


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
    lays it over the folded record) before the delivery changes them."""
    key = schema.message_key(msg.id)
    for name in Message.CALLBACK_FIELDS:
        if getattr(msg, name):
            pipe.hsetnx(key, Message.field_of(name), *Message.short(**{name: getattr(msg, name)}).values())
    pipe.expire(key, ttl)


def queue_event(rt: Runtime, mid: str, event: dict[str, Any]) -> None:
    """Queue one event for the message's callback URL (none: nothing) and make it due now,
    unless a delivery or a retry is already scheduled for the message."""
    conn = rt.conn
    msg, ttl = _sender(rt, mid)
    if msg is None or not msg.callback_url:
        return
    event = {**event, "message_id": mid, "reference": msg.reference or None}
    with conn.pipeline(transaction=False) as pipe:
        pipe.rpush(callback_queue_key(mid), json.dumps(event, ensure_ascii=False))
        pipe.ltrim(callback_queue_key(mid), -PENDING_MAX, -1)
        pipe.expire(callback_queue_key(mid), ttl)
        pipe.zadd(schema.CALLBACKS_DUE, {mid: time.time()}, nx=True)
        length, *_ = pipe.execute()
    if length > PENDING_MAX:  # the oldest event was trimmed: say so
        conn.hincrby(schema.message_key(mid), Message.field_of("callbacks_dropped"), 1)


def recipient_expired(rt: Runtime, mid: str, mobile: str) -> None:
    """A recipient's validity ended before it could be sent: its final event."""
    event = {
        "type": "recipient.final",
        "mobile": mobile,
        "state": "expired",
        "operator_code": None,
        "reported_at": rfc3339(time.time()),
        "linkid": None,
    }
    queue_event(rt, mid, event)


def claim(conn: redis.Redis, now: float, until: float, count: int) -> list[str]:
    """Up to ``count`` messages whose callbacks are due, each now held until ``until``."""
    due = scripts.CLAIM_DUE(conn, due=schema.CALLBACKS_DUE, now=f"{now:.3f}", until=f"{until:.3f}", count=count)
    return [m.decode() for m in due]


def _settle(conn: redis.Redis, mid: str, at: float) -> None:
    scripts.SETTLE_CALLBACKS(conn, due=schema.CALLBACKS_DUE, queue=callback_queue_key(mid), mid=mid, next=f"{at:.3f}")


def deliver_now(rt: Runtime, mid: str) -> str:
    """One delivery attempt of a claimed message's oldest events; the outcome's name."""
    conn, settings = rt.conn, rt.settings
    raw = conn.lrange(callback_queue_key(mid), 0, settings.callback_max_batch - 1)
    msg_key = schema.message_key(mid)
    if not raw:
        _settle(conn, mid, time.time())
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
    ok, outcome = post(
        url,
        body,
        headers,
        deadline=settings.callback_deadline_seconds,
        networks=settings.callback_allow_networks,
        loopback=settings.callback_allow_loopback,
    )
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
    now = time.time()
    if ok:
        _settle(conn, mid, now)
        return "delivered"
    conn.hsetnx(msg_key, Message.field_of("callback_fail_since"), f"{now:.3f}")
    fails = conn.hincrby(msg_key, Message.field_of("callback_fails"), 1)
    since = float(conn.hget(msg_key, Message.field_of("callback_fail_since")) or now)
    if now - since >= settings.callback_retry_seconds:
        dropped = conn.llen(callback_queue_key(mid))
        conn.delete(callback_queue_key(mid))
        conn.hset(msg_key, mapping=Message.short(callback_state="abandoned"))
        conn.hincrby(msg_key, Message.field_of("callbacks_dropped"), dropped)
        _settle(conn, mid, now)
        alert(settings, conn, "callback_abandoned", message_id=mid, events=dropped, last=outcome)
        return "abandoned"
    _settle(conn, mid, now + backoff(fails, settings.retry_base_seconds, settings.retry_max_seconds))
    return "retry"


def deliver_due(rt: Runtime, limit: int = 100) -> int:
    """Deliver what is due now, one after another in this thread (tests, and ``smsgw`` tools);
    returns how many deliveries were made."""
    now = time.time()
    mids = claim(rt.conn, now, now + rt.settings.callback_deadline_seconds + CLAIM_MARGIN, limit)
    for mid in mids:
        deliver_now(rt, mid)
    return len(mids)


class Dispatcher:
    """A worker's callback deliveries: at most ``size`` at once, on threads of their own."""

    def __init__(self, rt: Runtime, size: int) -> None:
        self.rt, self.size = rt, size
        self.busy = 0
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="smsgw-callback")

    def fill(self) -> int:
        """Claim as many due messages as there are free threads and start their deliveries."""
        with self.lock:
            free = self.size - self.busy
        if free <= 0:
            return 0
        now = time.time()
        mids = claim(self.rt.conn, now, now + self.rt.settings.callback_deadline_seconds + CLAIM_MARGIN, free)
        for mid in mids:
            with self.lock:
                self.busy += 1
            self.pool.submit(self._deliver, mid)
        return len(mids)

    def _deliver(self, mid: str) -> None:
        try:
            deliver_now(self.rt, mid)
        except Exception:  # nothing is dropped: the claim runs out and a later delivery takes it
            log.exception("callback delivery for %s failed", mid, extra={"message_id": mid})
        finally:
            with self.lock:
                self.busy -= 1

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                started = self.fill()
            except redis.RedisError as e:
                log.warning("callback dispatcher: %s; retrying", type(e).__name__)
                started = 0
                stop.wait(1.0)
            if not started:
                stop.wait(IDLE)
        self.pool.shutdown(wait=True, cancel_futures=True)


def adopt_legacy(conn: redis.Redis) -> int:
    """Callback jobs an older smsgw left on its RQ queue become due deliveries here."""
    mids = take_legacy_callbacks(conn)
    if mids:
        conn.zadd(schema.CALLBACKS_DUE, dict.fromkeys(mids, time.time()), nx=True)
        log.warning("%d callback deliveries taken over from the old callback queue", len(mids))
    return len(mids)


def start(rt: Runtime) -> tuple[threading.Thread | None, threading.Event]:
    """The worker's callback dispatcher (none with ``SMSGW_CALLBACK_CONCURRENCY=0``)."""
    stop = threading.Event()
    if not rt.settings.callback_concurrency:
        return None, stop
    dispatcher = Dispatcher(rt, rt.settings.callback_concurrency)
    thread = threading.Thread(target=dispatcher.loop, args=(stop,), name="smsgw-callbacks", daemon=True)
    thread.start()
    return thread, stop
