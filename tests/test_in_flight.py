"""Several provider calls in flight per worker (``SMSGW_SENDS_IN_FLIGHT``): a campaign's chunks
share send jobs and go out together from one real worker process, each on its own linkid and
state machine; a worker killed with calls in flight loses nothing and sends no linkid twice."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.conftest import AUTH, chunks_of, sent_or_unconfirmed, sim_admin, sim_submissions, wait_for
from workers.settings import settings_from_env
from workers.storage.schema import Message

pytestmark = pytest.mark.slow
MOBILES = [f"1350000{i:04d}" for i in range(80)]


@pytest.fixture
def campaign_env(settings_env):
    # Ten mobiles a chunk: 80 recipients are 8 submissions; the rate does not bind.
    return {**settings_env, "SMSGW_PROVIDER_CHUNK_SIZE": "10", "SMSGW_PROVIDER_RATE": "1000"}


def _post(settings_env, **extra):
    from gateway import create_app

    api = create_app(settings_from_env(settings_env)).test_client()
    r = api.post("/v1/messages", json={"to": MOBILES, "text": "会员日八折", "priority": "bulk", **extra}, headers=AUTH)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def test_one_worker_keeps_four_calls_in_flight(campaign_env, simulator, workers, redis_conn):
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=1.0)
    workers.env.update({**campaign_env, "SMSGW_SENDS_IN_FLIGHT": "4"})
    mid = _post(campaign_env)
    workers.start("in-flight-1")
    started = time.monotonic()
    wait_for(lambda: len(sim_submissions(simulator)) >= 8, timeout=30, what="8 submissions")
    took = time.monotonic() - started
    # One call at a time would take 8 s of provider latency; four at once take two rounds.
    assert took < 5.5, took
    subs = sim_submissions(simulator)
    assert sorted(m for s in subs for m in s["mobiles"]) == sorted(MOBILES)
    assert len({s["linkid"] for s in subs}) == 8  # a linkid per submission, none twice
    starts = sorted(float(s["at"]) for s in subs)
    assert starts[3] - starts[0] < 0.9  # the first four were with the provider together
    wait_for(lambda: _final(redis_conn, mid) == 8, what="all submitted")


@pytest.mark.faults
def test_a_worker_killed_with_calls_in_flight_loses_nothing_and_sends_no_linkid_twice(
    campaign_env, simulator, workers, redis_conn
):
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=2.0)
    env = {**campaign_env, "SMSGW_SENDS_IN_FLIGHT": "4", "SMSGW_AMBIGUOUS_WAIT_SECONDS": "1"}
    workers.env.update(env)
    mid = _post(env)
    victim = workers.start("in-flight-victim")
    wait_for(lambda: _submitting(redis_conn, mid) >= 2, timeout=30, what="calls in flight")
    workers.kill(victim)  # SIGKILL with calls in flight
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=0.0)
    workers.start("in-flight-rescuer")
    wait_for(lambda: _final(redis_conn, mid) == 8, timeout=120, what="every chunk final")
    subs = sim_submissions(simulator)
    linkids = Counter(s["linkid"] for s in subs)
    assert max(linkids.values()) == 1  # no linkid reached the provider twice
    got = Counter(sent_or_unconfirmed(redis_conn, simulator, [mid]))
    assert set(got) == set(MOBILES) and max(got.values()) == 1  # nothing lost; bulk never twice
    assert all(c.possible_duplicates == 0 for c in chunks_of(redis_conn, mid))
    assert sum(c.state == "submitted" for c in chunks_of(redis_conn, mid)) == 8


def _submitting(conn, mid: str) -> int:
    return sum(c.state == "submitting" for c in chunks_of(conn, mid))


def _final(conn, mid: str) -> int:
    msg = Message.load(conn, mid)
    return sum((msg.chunks_final or {}).values()) - msg.chunks_final.get("split", 0) if msg else 0
