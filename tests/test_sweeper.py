"""Unit tests of the sweeper on fakeredis: a chunk whose job is gone gets a new one, once."""

from __future__ import annotations

import time

import fakeredis
from rq import Queue

from tests.conftest import make_settings
from tests.test_lifecycle import make_message
from workers import lifecycle
from workers.lifecycle import PENDING, SUBMITTING, UNCONFIRMED
from workers.queues import QUEUE_NAMES
from workers.storage import schema
from workers.storage.schema import Chunk, Message
from workers.sweeper import sweep


def due(conn) -> None:
    """Make every watched ref due now (a sweep pushes a healthy one a grace period ahead)."""
    for ref in conn.zrange(schema.WATCH, 0, -1):
        conn.zadd(schema.WATCH, {ref: 0})


def test_a_chunk_whose_job_is_alive_is_left_alone_until_its_job_is_lost():
    conn, settings = fakeredis.FakeRedis(), make_settings()
    make_message(conn, mobiles=1)
    later = time.time() + 3600
    assert sweep(conn, settings, now=later) == 0  # the job is queued
    Queue(QUEUE_NAMES["normal"], connection=conn).empty()  # lost, as to a BLPOP crash
    due(conn)
    assert sweep(conn, settings, now=later) == 1
    chunk = Chunk.load(conn, "m1", 0)
    assert chunk.state == PENDING and chunk.job == "s-m1-0-2"
    due(conn)
    assert sweep(conn, settings, now=later) == 0  # the new job is alive


def test_a_submitting_chunk_is_revived_only_after_its_call_deadline():
    conn, settings = fakeredis.FakeRedis(), make_settings()
    make_message(conn, mobiles=1)
    deadline = time.time() + 100
    lifecycle.transition(conn, "m1", 0, {PENDING}, SUBMITTING, {"deadline": deadline})
    conn.zadd(schema.WATCH, {schema.chunk_ref("m1", 0): 0})
    assert sweep(conn, settings, now=deadline - 1) == 0
    due(conn)
    assert sweep(conn, settings, now=deadline + 1) == 1
    assert Chunk.load(conn, "m1", 0).state == SUBMITTING  # the new run takes the ambiguous path


def test_an_unconfirmed_chunk_waits_for_its_report_window():
    conn, settings = fakeredis.FakeRedis(), make_settings()
    make_message(conn, mobiles=1)
    Queue(QUEUE_NAMES["normal"], connection=conn).empty()
    until = time.time() + 50
    lifecycle.transition(conn, "m1", 0, {PENDING}, UNCONFIRMED, {"wait_until": until})
    due(conn)
    assert sweep(conn, settings, now=until - 1) == 0
    due(conn)
    assert sweep(conn, settings, now=until + 1) == 1
    assert Chunk.load(conn, "m1", 0).job.startswith("k-")


def test_an_unplanned_message_without_its_plan_job_gets_a_new_one():
    conn, settings = fakeredis.FakeRedis(), make_settings()
    conn.hset(
        schema.message_key("m2"),
        mapping=Message(
            id="m2", state="accepted", account="default", priority="high", job="p-m2-1", job_seq=1
        ).to_hash(),
    )
    conn.zadd(schema.WATCH, {schema.message_ref("m2"): 0})
    assert sweep(conn, settings, now=time.time()) == 1
    assert Message.load(conn, "m2").job == "p-m2-2"
    assert Queue(QUEUE_NAMES["high"], connection=conn).job_ids == ["p-m2-2"]


def test_final_and_held_chunks_leave_the_watch_set():
    conn, settings = fakeredis.FakeRedis(), make_settings()
    make_message(conn, mobiles=2)
    lifecycle.transition(conn, "m1", 0, {PENDING}, lifecycle.CANCELLED)
    lifecycle.transition(conn, "m1", 1, {PENDING}, lifecycle.HELD)
    conn.zadd(schema.WATCH, {schema.chunk_ref("m1", 0): 0, schema.chunk_ref("m1", 1): 0})
    assert sweep(conn, settings, now=time.time()) == 0
    assert conn.zcard(schema.WATCH) == 0
