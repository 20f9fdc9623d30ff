"""Unit tests of caller notifications: events queue per message, one claim per message at a
time, a signed batch, and a bounded retry window that ends in ``abandoned``. The delivery's
deadline, its bounded read and a worker killed mid-delivery are tested against real receivers
in ``tests/test_callbacks_apart.py``."""

from __future__ import annotations

import hashlib
import hmac
import json

import fakeredis

from tests.conftest import make_settings
from workers import notifications
from workers.runtime import Runtime
from workers.storage import schema
from workers.storage.schema import Message


def runtime(**env: str) -> Runtime:
    return Runtime(make_settings(**env), fakeredis.FakeRedis())


def test_events_queue_on_the_message_and_make_it_due_once():
    rt = runtime()
    rt.conn.hset(schema.message_key("m1"), mapping=Message(id="m1", callback_url="http://example.invalid/cb").to_hash())
    for i in range(3):
        notifications.queue_event(rt, "m1", {"type": "reply", "n": i})
    assert rt.conn.llen(schema.callback_queue_key("m1")) == 3
    assert rt.conn.zrange(schema.CALLBACKS_DUE, 0, -1) == [b"m1"]  # one entry per message
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


def test_a_claim_hides_a_message_until_it_runs_out_then_any_worker_takes_it_again():
    rt = runtime()
    rt.conn.zadd(schema.CALLBACKS_DUE, {"m1": 100.0, "m2": 100.0, "later": 500.0})
    assert sorted(notifications.claim(rt.conn, 200.0, 300.0, 10)) == ["m1", "m2"]
    assert notifications.claim(rt.conn, 250.0, 350.0, 10) == []  # held by the first claim
    assert sorted(notifications.claim(rt.conn, 301.0, 400.0, 1)) == ["m1"]  # the claim ran out: a worker died


def test_an_event_queued_while_a_delivery_settles_is_never_stranded():
    rt = runtime()
    rt.conn.hset(schema.message_key("m1"), mapping=Message(id="m1", callback_url="http://example.invalid/cb").to_hash())
    notifications.queue_event(rt, "m1", {"type": "reply"})
    assert notifications.claim(rt.conn, 1e12, 2e12, 10) == ["m1"]
    notifications.queue_event(rt, "m1", {"type": "reply"})  # NX: the claim keeps its time
    assert rt.conn.zscore(schema.CALLBACKS_DUE, "m1") == 2e12
    notifications._settle(rt.conn, "m1", 5.0)  # events left: due again, not removed
    assert rt.conn.zscore(schema.CALLBACKS_DUE, "m1") == 5.0
    rt.conn.delete(schema.callback_queue_key("m1"))
    notifications._settle(rt.conn, "m1", 5.0)
    assert rt.conn.zcard(schema.CALLBACKS_DUE) == 0


def test_events_trimmed_past_the_pending_bound_are_counted_as_dropped(monkeypatch):
    rt = runtime()
    monkeypatch.setattr(notifications, "PENDING_MAX", 2)
    rt.conn.hset(schema.message_key("m1"), mapping=Message(id="m1", callback_url="http://example.invalid/cb").to_hash())
    for i in range(5):
        notifications.queue_event(rt, "m1", {"type": "reply", "n": i})
    assert rt.conn.llen(schema.callback_queue_key("m1")) == 2
    assert Message.load(rt.conn, "m1").callbacks_dropped == 3


def test_callback_jobs_an_older_smsgw_left_on_its_queue_become_due_deliveries(redis_conn):
    from datetime import timedelta

    from rq import Queue

    from workers.queues import LEGACY_CALLBACK_QUEUE

    queue = Queue(LEGACY_CALLBACK_QUEUE, connection=redis_conn)
    queue.enqueue("workers.notifications.deliver", "m1")
    queue.enqueue_in(timedelta(seconds=30), "workers.notifications.deliver", "m2")
    assert notifications.adopt_legacy(redis_conn) == 2
    assert sorted(redis_conn.zrange(schema.CALLBACKS_DUE, 0, -1)) == [b"m1", b"m2"]
    assert queue.count == 0 and notifications.adopt_legacy(redis_conn) == 0
