"""Unit tests of caller notifications: events queue per message, one delivery job at a time,
a signed batch, and a bounded retry window that ends in ``abandoned``."""

from __future__ import annotations

import hashlib
import hmac
import json

import fakeredis
from rq import Queue

from tests.conftest import make_settings
from workers import notifications, schema
from workers.queues import CALLBACK_QUEUE
from workers.runtime import Runtime
from workers.schema import Message


def runtime(**env: str) -> Runtime:
    return Runtime(make_settings(**env), fakeredis.FakeRedis())


def test_events_queue_on_the_message_and_schedule_one_delivery_job():
    rt = runtime()
    rt.conn.hset(schema.message_key("m1"), mapping=Message(id="m1", callback_url="http://example.invalid/cb").to_hash())
    for i in range(3):
        notifications.queue_event(rt, "m1", {"type": "reply", "n": i})
    assert rt.conn.llen(schema.callback_queue_key("m1")) == 3
    assert Queue(CALLBACK_QUEUE, connection=rt.conn).count == 1  # one job per message at a time
    first = json.loads(rt.conn.lindex(schema.callback_queue_key("m1"), 0))
    assert first["message_id"] == "m1" and first["reference"] is None


def test_no_callback_url_no_event():
    rt = runtime()
    rt.conn.hset(schema.message_key("m1"), mapping=Message(id="m1", state="sending").to_hash())
    notifications.queue_event(rt, "m1", {"type": "reply"})
    assert not rt.conn.exists(schema.callback_queue_key("m1"))


def test_a_dead_receiver_is_retried_then_abandoned_with_the_count_dropped():
    rt = runtime(SMSGW_CALLBACK_RETRY_SECONDS="1")
    rt.conn.hset(schema.message_key("m1"), mapping=Message(id="m1", callback_url="http://127.0.0.1:9/cb").to_hash())
    notifications.queue_event(rt, "m1", {"type": "reply"})
    assert notifications.deliver_now(rt, "m1") == "retry"
    rt.conn.hset(schema.message_key("m1"), Message.field_of("callback_fail_since"), "1")  # the window is over
    assert notifications.deliver_now(rt, "m1") == "abandoned"
    msg = Message.load(rt.conn, "m1")
    assert msg.callback_state == "abandoned" and msg.callbacks_dropped == 1
    assert rt.conn.hget(schema.ALERTS, "callback_abandoned") == b"1"
    assert rt.conn.llen(schema.callback_log_key("m1")) == 2


def test_signature_is_hmac_over_timestamp_and_body():
    body = b'{"events": []}'
    expected = hmac.new(b"s", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert notifications.sign("s", 1700000000, body) == expected
