"""The fault suite, done for real: processes, signals and sockets on loopback. Every case ends
with 0 messages lost and an exact count of submissions and linkids at the provider."""

from __future__ import annotations

import os
import signal
import time

import pytest

from devkit.redis_server import RedisServer
from tests.conftest import AUTH, Workers, chunks_of, sent_or_unconfirmed, sim_admin, sim_submissions, wait_for
from tests.test_workers_real import SENT, send, status

pytestmark = [pytest.mark.slow, pytest.mark.faults]

FINAL = SENT | {"failed", "cancelled", "undelivered", "unknown"}


def exactly(simulator, submissions: int) -> list[str]:
    """The provider saw exactly this many submissions, each under its own linkid."""
    linkids = [s["linkid"] for s in sim_submissions(simulator)]
    assert len(linkids) == submissions, linkids
    assert len(set(linkids)) == len(linkids)
    return linkids


def all_final(api, mids: list[str], timeout: float = 90) -> None:
    wait_for(lambda: all(status(api, m)["status"] in FINAL for m in mids), timeout, "every message final")


@pytest.fixture
def own_redis(tmp_path, settings_env):
    server = RedisServer(str(tmp_path / "redis")).start()
    yield server, {**settings_env, "SMSGW_REDIS_URL": server.url}
    server.stop()


def app_for(env: dict[str, str], **extra: str):
    from gateway import create_app
    from workers.settings import settings_from_env

    return create_app(settings_from_env({**env, **extra})).test_client()


def test_redis_sigkilled_and_restarted_with_aof_while_messages_flow(own_redis, simulator, tmp_path):
    """Messages in every state when Redis dies: planned, submitting, submitted, awaiting reports.
    Redis comes back from its AOF; the same worker processes and RQ's scheduler carry on."""
    server, env = own_redis
    api = app_for(env, SMSGW_REDIS_SOCKET_TIMEOUT="0.5")
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=0.3)
    pool = Workers({**env, "SMSGW_AMBIGUOUS_WAIT_SECONDS": "3"}, str(tmp_path))
    try:
        pool.start("w1")
        pool.start("w2")
        mids = [send(api, {"to": [f"1380013{i:04d}"], "text": f"n{i}"}) for i in range(30)]
        wait_for(lambda: len(sim_submissions(simulator)) >= 5, what="traffic")
        time.sleep(1.2)  # appendfsync everysec: every 202 above is on disk
        server.kill()
        started = time.monotonic()
        assert api.get("/readyz").status_code == 503
        down = api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH)
        assert down.status_code == 503 and time.monotonic() - started < 5
        time.sleep(2)
        server.start()
        assert api.get("/readyz").status_code == 200  # no restart of anything
        mids.append(send(api, {"to": ["13900139999"], "text": "after"}))
        all_final(api, mids)
        assert all(p.poll() is None for p in pool.procs)  # the workers lived through it
    finally:
        pool.stop_all()
    exactly(simulator, len(mids))


def test_redis_sigstopped_for_10_seconds_while_messages_flow(own_redis, simulator, tmp_path):
    server, env = own_redis
    api = app_for(env, SMSGW_REDIS_SOCKET_TIMEOUT="0.5", SMSGW_ACCEPT_SETTLE_SECONDS="1")
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=0.2)
    pool = Workers({**env, "SMSGW_AMBIGUOUS_WAIT_SECONDS": "3"}, str(tmp_path))
    try:
        pool.start("w1")
        pool.start("w2")
        mids = [send(api, {"to": [f"1390013{i:04d}"], "text": f"s{i}"}) for i in range(20)]
        wait_for(lambda: len(sim_submissions(simulator)) >= 3, what="traffic")
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                started = time.monotonic()
                answer = api.post("/v1/messages", json={"to": ["13700137000"], "text": "x"}, headers=AUTH)
                assert answer.status_code == 503 and time.monotonic() - started < 5
            time.sleep(max(0.0, 10 - (time.monotonic() - started)))
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        all_final(api, mids)
        assert all(p.poll() is None for p in pool.procs)
    finally:
        pool.stop_all()
    # The three 503s were the truth: nothing of theirs reached the provider.
    assert not any("13700137000" in s["mobiles"] for s in sim_submissions(simulator))
    exactly(simulator, len(mids))


PROVIDER_FAULTS = {
    "hangs": ({"mode": "hang", "seconds": 4}, 1),
    "resets": ({"mode": "drop"}, 1),
    "accepts then hangs": ({"mode": "hang", "seconds": 4, "accept": True}, 1),
    "accepts then 502": ({"mode": "http", "status": 502, "accept": True}, 1),
    "accepts then garbage": ({"mode": "garbage", "accept": True}, 1),
}


@pytest.mark.parametrize("fault", list(PROVIDER_FAULTS))
def test_provider_faults_with_real_workers(api, simulator, workers, runtime, fault):
    """Each message's first call meets the fault; the provider then behaves. Normal priority
    waits for a report: one confirms what the provider took; with none the chunk is never sent
    again (the provider may have it), it ends unconfirmed and counted."""
    body, times = PROVIDER_FAULTS[fault]
    sim_admin(simulator, "fault", endpoint="post_send_md5", times=3 * times, **body)
    workers.env["SMSGW_AMBIGUOUS_WAIT_SECONDS"] = "6"  # the pullers bring the reports well before
    workers.start("w1")
    workers.start("w2")
    mids = [send(api, {"to": [f"1370013{i:04d}"], "text": f"f{i}"}) for i in range(3)]
    all_final(api, mids)
    assert all(status(api, m)["status"] in SENT for m in mids)
    took = body.get("accept", False)
    exactly(simulator, 3 if took else 0)
    chunks = [c for m in mids for c in chunks_of(runtime.conn, m)]
    assert [c.unconfirmed for c in chunks] == [0 if took else 1] * 3
    assert sorted(sent_or_unconfirmed(runtime.conn, simulator, mids)) == [f"1370013{i:04d}" for i in range(3)]


def test_provider_refuses_connections_until_it_is_back(api, settings_env, redis_conn, tmp_path):
    """Nothing reaches a closed port, so the same linkid goes again once the provider is back."""
    from devkit.simulator import SimState, SimulatorServer
    from tests.test_metrics import free_port

    port = free_port()
    env = {**settings_env, "SMSGW_PROVIDER_URL": f"http://127.0.0.1:{port}/smsmarketing/wwwroot/api/"}
    pool = Workers(env, str(tmp_path))
    sim = None
    try:
        pool.start("w1")
        mids = [send(api, {"to": [f"1360013{i:04d}"], "text": f"r{i}"}) for i in range(3)]

        def retrying(mid: str) -> bool:
            chunks = status(api, mid)["chunks"]
            return bool(chunks) and chunks[0]["state"] == "retry"

        wait_for(lambda: all(retrying(m) for m in mids), what="every chunk retrying")
        planned = {m: status(api, m)["chunks"][0]["linkid"] for m in mids}
        sim = SimulatorServer(SimState(uid="test", password="s3cret+%pass"), port=port).start()
        all_final(api, mids)
        assert sorted(exactly(sim, 3)) == sorted(planned.values())
    finally:
        pool.stop_all()
        if sim is not None:
            sim.stop()


def test_2_then_0_resumes_by_itself_and_8_waits_for_an_operator(api, simulator, workers, runtime):
    from workers.lifecycle import resume_account

    workers.start("w1")
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[2])
    balance = send(api, {"to": ["13500135000"], "text": "balance"})
    all_final(api, [balance])  # the balance check sees money and resumes the account
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[8])
    frozen = send(api, {"to": ["13500135001"], "text": "frozen"})
    wait_for(lambda: status(api, frozen)["chunks"] and status(api, frozen)["chunks"][0]["state"] == "held")
    time.sleep(3)
    assert status(api, frozen)["chunks"][0]["state"] == "held"  # 8 never resumes by itself
    resume_account(runtime.settings, runtime.conn, "default", by="test")
    all_final(api, [frozen])
    exactly(simulator, 2)


def test_workers_sigkilled_again_and_again_between_chunks_lose_nothing(api, simulator, workers, runtime):
    """A 40-chunk message while a worker is SIGKILLed every 0.7 s and replaced: kills land
    between chunks, inside calls and inside state writes."""
    from workers.storage import schema

    runtime.conn.hset(schema.account_key("default"), "chunk_size", 1)
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=0.1)
    workers.env["SMSGW_AMBIGUOUS_WAIT_SECONDS"] = "4"
    mid = send(api, {"to": [f"1330013{i:04d}" for i in range(40)], "text": "kill me"})
    victim = workers.start("k0")
    for round_ in range(8):
        time.sleep(0.7)
        workers.kill(victim)
        victim = workers.start(f"k{round_ + 1}")
    all_final(api, [mid], timeout=120)
    assert status(api, mid)["status"] in SENT
    exactly(simulator, len(sim_submissions(simulator)))  # no linkid twice
    # Each mobile reached the provider once, or is in a chunk a kill left unconfirmed (counted).
    mobiles = sent_or_unconfirmed(runtime.conn, simulator, [mid])
    assert sorted(mobiles) == [f"1330013{i:04d}" for i in range(40)]


def test_a_flood_of_unknown_malformed_and_replayed_pushes_is_bounded_and_counted(api, runtime):
    """20,000 pushed reports for linkids smsgw never sent, each twice, plus malformed ones:
    every one answered, the unknown kept as capped orphans, replays and malformed counted, and
    Redis grows by a bounded amount per item."""
    from urllib.parse import urlencode

    from workers import reports
    from workers.storage import schema

    conn = runtime.conn
    before = conn.info("memory")["used_memory"]
    path = "/callbacks/provider/push-secret-123"
    n = 20_000
    for i in range(n):
        query = urlencode({"Class": "rpt", "Mobile": f"138{i:08d}", "LinkId": f"nope{i}", "Report": "DELIVRD"})
        assert api.get(f"{path}?{query}").status_code == 200
        if i % 10 == 0:
            assert api.get(f"{path}?{query}").get_data(as_text=True) == "ok"  # a replay: stored again
            assert api.get(f"{path}?Class=rpt&Mobile=138{i:08d}").status_code == 400  # no Report
    while reports.ingest(runtime):
        pass
    counts = {k.decode(): int(v) for k, v in conn.hgetall(schema.COUNTS).items()}
    stored = n + n // 10  # a replay is stored, and its orphan kept, again
    assert counts["pushed"] == stored and counts["push_malformed"] == n // 10
    assert counts["orphan_reports"] == stored and conn.llen(schema.ORPHANS) == min(stored, reports.ORPHANS_MAX)
    assert conn.llen(schema.INBOX) == 0
    grown = (conn.info("memory")["used_memory"] - before) / stored
    assert grown < 400, f"{grown:.0f} bytes per pushed item"


def test_a_callback_url_down_for_its_whole_window_then_back(app, settings_env, runtime, simulator, tmp_path):
    """The receiver's port is closed for the whole retry window: its events are dropped and
    counted, an alert is raised; once it listens again, the next event reaches it."""
    import dataclasses
    from http.server import HTTPServer

    from tests.conftest import Receiver, drain
    from tests.test_metrics import free_port
    from tests.test_reports import pull_all

    runtime.settings = dataclasses.replace(runtime.settings, callback_retry_seconds=3)
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    api = app.test_client()
    mid = send(api, {"to": ["13800138000"], "text": "x", "callback_url": url})
    drain(runtime)
    pull_all(runtime)  # a report: one event for the dead URL
    drain(runtime, timeout=30)
    callbacks = status(api, mid)["callbacks"]
    assert callbacks["state"] == "abandoned" and callbacks["events_dropped"] == 1
    assert int(runtime.conn.hget("sg:alerts", "callback_abandoned")) == 1
    Receiver.calls, Receiver.bodies, Receiver.fail_first = 0, [], 0
    server = HTTPServer(("127.0.0.1", port), Receiver)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        linkid = status(api, mid)["chunks"][0]["linkid"]
        sim_admin(simulator, "reply", mobile="13800138000", content="收到", linkid=linkid)
        pull_all(runtime)
        drain(runtime, timeout=30)
        assert [e["type"] for _, body in Receiver.bodies for e in body["events"]] == ["reply"]
    finally:
        server.shutdown()
        server.server_close()
