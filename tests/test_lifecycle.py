"""Unit tests of a chunk's life on fakeredis: the state machine, making chunks, holds, cancels."""

from __future__ import annotations

import threading

import fakeredis
import pytest
from rq import Queue

from tests.conftest import make_settings
from workers import accounts, lifecycle
from workers.lifecycle import CANCELLED, FAILED, HELD, PENDING, RETRY, SUBMITTED, SUBMITTING
from workers.queues import QUEUE_NAMES
from workers.storage import schema
from workers.storage.schema import Chunk, Message


@pytest.fixture
def conn() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def settings():
    return make_settings()  # no Redis URL that resolves: nothing here may use it


def make_message(conn, mid: str = "m1", mobiles: int = 3, priority: str = "normal") -> list[int]:
    """A planned message with one chunk per mobile, as the plan job leaves it."""
    conn.hset(
        schema.message_key(mid), mapping=Message(id=mid, state="sending", chunks=mobiles, chunk_seq=mobiles).to_hash()
    )
    parts = [(n, [f"1380013800{n}"]) for n in range(mobiles)]
    with conn.pipeline() as pipe:
        lifecycle.create_chunks(pipe, conn, make_settings(), mid, parts, account="default", priority=priority, ttl=60)
        pipe.execute()
    return [n for n, _ in parts]


def test_create_chunks_writes_chunk_linkid_watch_history_and_job(conn):
    make_message(conn, mobiles=2)
    chunk = Chunk.load(conn, "m1", 1)
    assert chunk is not None and chunk.state == PENDING and chunk.recipients == 1
    assert conn.get(schema.linkid_key(chunk.linkid)) == b"m1:1"
    assert conn.zscore(schema.WATCH, schema.chunk_ref("m1", 1)) is not None
    # Consecutive chunks share one send job (SMSGW_SENDS_IN_FLIGHT, 4), and each names it.
    assert chunk.job == Chunk.load(conn, "m1", 0).job == lifecycle.job_id(lifecycle.SEND_MANY, "m1", 0, 1) == "g-m1-0-1"
    assert Queue(QUEUE_NAMES["normal"], connection=conn).job_ids == ["g-m1-0-1"]
    assert conn.llen(schema.history_key("m1", 1)) == 1


def test_chunks_are_grouped_by_sends_in_flight_and_a_lone_one_keeps_its_own_job(conn):
    conn.hset(schema.message_key("m2"), mapping=Message(id="m2", state="sending", chunks=6, chunk_seq=6).to_hash())
    parts = [(n, [f"1380013800{n}"]) for n in range(6)]
    with conn.pipeline() as pipe:
        settings = make_settings(SMSGW_SENDS_IN_FLIGHT="4")
        lifecycle.create_chunks(pipe, conn, settings, "m2", parts, account="default", priority="normal", ttl=60)
        pipe.execute()
    queue = Queue(QUEUE_NAMES["normal"], connection=conn)
    assert queue.job_ids == ["g-m2-0-1", "g-m2-4-1"]
    assert [queue.fetch_job(j).args for j in queue.job_ids] == [("m2", [0, 1, 2, 3]), ("m2", [4, 5])]
    assert [Chunk.load(conn, "m2", n).job for n in range(6)] == ["g-m2-0-1"] * 4 + ["g-m2-4-1"] * 2
    make_message(conn, "m3", mobiles=1)
    assert Chunk.load(conn, "m3", 0).job == "s-m3-0-1"


def test_transition_moves_only_from_allowed_states_and_with_the_right_linkid(conn):
    make_message(conn, mobiles=1)
    linkid = Chunk.load(conn, "m1", 0).linkid
    assert lifecycle.transition(conn, "m1", 0, {RETRY}, SUBMITTING) is None
    assert lifecycle.transition(conn, "m1", 0, {PENDING}, SUBMITTING, linkid="other") is None
    before = lifecycle.transition(conn, "m1", 0, {PENDING}, SUBMITTING, {"attempts": 1}, linkid=linkid)
    assert before is not None and before.state == PENDING
    chunk = Chunk.load(conn, "m1", 0)
    assert chunk.state == SUBMITTING and chunk.attempts == 1
    assert lifecycle.transition(conn, "m1", 9, {PENDING}, SUBMITTING) is None  # no such chunk


def test_a_final_state_is_counted_once_on_the_message_and_leaves_the_watch_set(conn):
    make_message(conn, mobiles=1)
    lifecycle.transition(conn, "m1", 0, {PENDING}, SUBMITTING)
    assert lifecycle.transition(conn, "m1", 0, {SUBMITTING}, SUBMITTED) is not None
    assert lifecycle.transition(conn, "m1", 0, {SUBMITTING}, SUBMITTED) is None
    msg = Message.load(conn, "m1")
    assert msg.chunks_final == {SUBMITTED: 1} and msg.recipients_final == {SUBMITTED: 1}
    assert conn.zscore(schema.WATCH, schema.chunk_ref("m1", 0)) is None
    assert lifecycle.message_state(msg) == "submitted"


def test_concurrent_transitions_from_one_state_let_exactly_one_win(conn):
    make_message(conn, mobiles=1)
    wins = []

    def race() -> None:
        wins.append(lifecycle.transition(conn, "m1", 0, {PENDING}, SUBMITTING) is not None)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_enqueue_next_bumps_the_job_sequence_and_names_the_new_owner(conn, settings):
    make_message(conn, mobiles=1)
    assert lifecycle.enqueue_next(conn, settings, "m1", 0, from_states={PENDING}, to_state=RETRY, event="retry")
    chunk = Chunk.load(conn, "m1", 0)
    assert chunk.state == RETRY and chunk.job_seq == 2 and chunk.job == "s-m1-0-2"
    assert "s-m1-0-2" in Queue(QUEUE_NAMES["normal"], connection=conn).job_ids
    assert not lifecycle.enqueue_next(conn, settings, "m1", 0, from_states={PENDING}, event="again")


def test_park_and_resume_sends_each_held_chunk_once(conn, settings):
    make_message(conn, mobiles=2)
    accounts.hold(settings, conn, "default", 2, "insufficient balance")
    for n in (0, 1):
        lifecycle.park_held(conn, settings, Chunk.load(conn, "m1", n), {PENDING})
    assert {Chunk.load(conn, "m1", n).state for n in (0, 1)} == {HELD}
    assert lifecycle.resume_account(settings, conn, "default", by="test") == 2
    assert lifecycle.resume_account(settings, conn, "default", by="test") == 0
    assert {Chunk.load(conn, "m1", n).state for n in (0, 1)} == {PENDING}
    assert conn.zcard(schema.held_key("default")) == 0


def test_park_after_a_concurrent_resume_never_strands_the_chunk(conn, settings):
    make_message(conn, mobiles=1)
    lifecycle.park_held(conn, settings, Chunk.load(conn, "m1", 0), {PENDING})  # the account is active
    assert Chunk.load(conn, "m1", 0).state == PENDING


def test_fail_then_requeue_uncounts_the_failure(conn, settings):
    make_message(conn, mobiles=1)
    lifecycle.fail(conn, settings, Chunk.load(conn, "m1", 0), "gave up", {})
    assert Message.load(conn, "m1").chunks_final == {FAILED: 1}
    assert lifecycle.latest_failures(conn, 5)[0]["state"] == FAILED
    assert lifecycle.requeue_failed(conn, settings, "m1", 0, by="test")
    assert not lifecycle.requeue_failed(conn, settings, "m1", 0, by="test")
    assert Message.load(conn, "m1").chunks_final == {FAILED: 0}
    assert Chunk.load(conn, "m1", 0).attempts == 0


def test_cancel_takes_what_is_not_submitted_and_leaves_the_rest(conn, settings):
    make_message(conn, mobiles=3)
    lifecycle.transition(conn, "m1", 0, {PENDING}, SUBMITTING)
    accounts.hold(settings, conn, "default", 8, "frozen")
    lifecycle.park_held(conn, settings, Chunk.load(conn, "m1", 2), {PENDING})
    assert lifecycle.cancel_message(conn, "m1") == {"chunks": 2, "recipients": 2}
    assert [Chunk.load(conn, "m1", n).state for n in range(3)] == [SUBMITTING, CANCELLED, CANCELLED]
    assert conn.zcard(schema.held_key("default")) == 0
    assert lifecycle.cancel_message(conn, "m1") is None


def test_job_ids_are_named_in_one_place():
    assert lifecycle.job_id(lifecycle.PLAN, "m", None, 2) == "p-m-2"
    assert lifecycle.job_id(lifecycle.CHECK, "m", 3, 4) == "k-m-3-4"
