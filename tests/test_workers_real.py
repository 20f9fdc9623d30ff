"""Real `smsgw worker` processes against our Redis and the simulator: sharing, crashes, restarts."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
from werkzeug.serving import make_server

from devkit.redis_server import RedisServer
from tests.conftest import API_KEY, AUTH, Workers, sim_admin, sim_submissions, wait_for
from workers.queues import QUEUE_NAMES
from workers.storage import schema
from workers.sweeper import sweep

pytestmark = pytest.mark.slow


def send(api, body, headers=None) -> str:
    r = api.post(
        "/v1/messages", data=json.dumps(body), headers={**AUTH, "Content-Type": "application/json", **(headers or {})}
    )
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def status(api, mid):
    return api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()


SENT = {"submitted", "partially_delivered", "delivered"}  # workers pull reports as they go


def test_two_workers_share_a_10000_recipient_request(api, workers, simulator):
    # The suite's 2 s provider timeout and 1 s report wait (TEST_ENV) turn a call slowed past
    # 2 s by a loaded machine into an ambiguous outcome, and no report within 1 s into a
    # resubmission under a new linkid, as designed for normal and bulk (900 s in production):
    # once, on a machine running a soak and a second suite, 16 submissions were seen for 10
    # chunks. This test is about two workers sharing chunks, so its calls never time out.
    workers.env["SMSGW_PROVIDER_TIMEOUT"] = "60"
    workers.start("w1")
    workers.start("w2")
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=0.2)
    mid = send(api, {"to": [f"135{i:08d}" for i in range(10_000)], "text": "campaign", "priority": "bulk"})
    wait_for(lambda: status(api, mid)["status"] in SENT, what="all chunks submitted")
    chunks = status(api, mid)["chunks"]
    by_worker = {next(h["worker"] for h in c["history"] if h["event"] == "submitting") for c in chunks}
    assert by_worker == {"w1", "w2"}
    subs = sim_submissions(simulator)
    # What each chunk went through, shown when the count is wrong (once, on a machine loaded
    # with a soak and another suite, 16 submissions were accepted for 10 chunks).
    seen = [[(h["event"], h.get("linkid"), h.get("worker")) for h in c["history"]] for c in status(api, mid)["chunks"]]
    assert sim_admin(simulator, "config")["repeated_linkids"] == {}, seen
    assert not [h for c in seen for h in c if "ambiguous" in h[0] or "resubmit" in h[0]], seen
    assert sum(len(s["mobiles"]) for s in subs) == 10_000 and len(subs) == 10, ([s["linkid"] for s in subs], seen)
    for name in ("w1", "w2"):  # each froze its startup heap before its loop (workers.worker.run_worker)
        text = Path(workers.logdir, f"{name}.log").read_text()
        assert int(text.split("startup heap frozen: ")[1].split()[0]) > 10_000, text[-2000:]


def test_worker_killed_mid_call_loses_nothing_and_repeats_no_linkid(api, workers, simulator, runtime, settings_env):
    w1 = workers.start("victim")
    # The provider takes 3 s and then accepts: the worker dies while it waits.
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=3, times=1)
    mid = send(api, {"to": ["13800138000", "13900139000"], "text": "hi"})
    wait_for(
        lambda: status(api, mid)["chunks"] and status(api, mid)["chunks"][0]["state"] == "submitting",
        what="the call to start",
    )
    killed_at = time.monotonic()
    workers.kill(w1)
    workers.env["SMSGW_AMBIGUOUS_WAIT_SECONDS"] = "2"
    workers.start("rescuer")
    wait_for(lambda: status(api, mid)["status"] in SENT, what="the message to complete")
    recovered = time.monotonic() - killed_at
    [chunk] = status(api, mid)["chunks"]
    events = [h["event"] for h in chunk["history"]]
    assert "sweeper_revived" in events and "awaiting_report" in events
    # The provider accepted during the crash; the rescuer pulled its reports, which confirmed
    # the linkid: nothing was sent again.
    assert "confirmed_by_report" in events
    assert [s["linkid"] for s in sim_submissions(simulator)] == [chunk["linkid"]]
    assert sim_admin(simulator, "config")["repeated_linkids"] == {}
    print(f"recovery after SIGKILL mid-call: {recovered:.1f} s")  # noqa: T201


def test_job_lost_between_blpop_and_registration_is_swept(api, runtime, simulator, workers):
    mid = send(api, {"to": ["13800138000", "13900139000"], "text": "hi"})  # two: a plan job of its own
    queue_key = f"rq:queue:{QUEUE_NAMES['normal']}"
    assert runtime.conn.lpop(queue_key) is not None  # what a worker killed right after BLPOP leaves
    time.sleep(runtime.settings.job_grace_seconds + 0.1)
    assert sweep(runtime.conn, runtime.settings) == 1
    workers.start("w1")
    wait_for(lambda: status(api, mid)["status"] in SENT, what="the swept message")
    assert len(sim_submissions(simulator)) == 1


def test_high_priority_jumps_200_bulk_chunks(api, runtime, simulator, workers):
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=0.02)
    runtime.conn.hset(schema.account_key("default"), "chunk_size", 1)
    bulk = send(api, {"to": [f"135{i:08d}" for i in range(200)], "text": "bulk", "priority": "bulk"})
    # plan the bulk message first, so its 200 chunk jobs are queued before the high one arrives
    from workers.lifecycle import plan

    plan(runtime.conn, runtime.settings, bulk)
    runtime.conn.lrem(f"rq:queue:{QUEUE_NAMES['bulk']}", 1, f"p-{bulk}-1")
    high = send(api, {"to": ["13800138000"], "text": "code", "priority": "high"})
    workers.start("w1")
    wait_for(lambda: status(api, bulk)["status"] in SENT and status(api, high)["status"] in SENT)
    order = [s["texts"][0] for s in sim_submissions(simulator)]
    assert order.index("code") < 20


def test_concurrent_duplicates_with_one_idempotency_key_make_one_message(app, runtime):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.port}/v1/messages"
    body = json.dumps({"to": ["13800138000"], "text": "once"})
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", "Idempotency-Key": "same"}

    def post(_: int) -> tuple[int, str]:
        r = requests.post(url, data=body, headers=headers, timeout=30)
        return r.status_code, r.json().get("id", "")

    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(post, range(1000)))
    finally:
        server.shutdown()
        thread.join()
    assert len(runtime.conn.keys("sg:m:*")) == 1
    ids = {i for code, i in results if code == 202}
    assert len(ids) == 1 and all(code in (202, 409) for code, _ in results)
    assert sum(code == 202 for code, _ in results) >= 990


def test_redis_killed_and_restarted_loses_no_accepted_message(tmp_path, simulator, settings_env):
    server = RedisServer(str(tmp_path / "r")).start()
    env = {**settings_env, "SMSGW_REDIS_URL": server.url}
    from gateway import create_app
    from workers.settings import settings_from_env

    app = create_app(settings_from_env(env))
    api = app.test_client()
    mid = send(api, {"to": ["13800138000"], "text": "durable"})
    time.sleep(1.5)  # appendfsync everysec
    server.kill()
    server.start()
    pool = Workers(env, str(tmp_path))
    try:
        pool.start("after-restart")
        wait_for(lambda: status(api, mid)["status"] in SENT, what="the message after a Redis restart")
    finally:
        pool.stop_all()
        server.stop()
    assert len(sim_submissions(simulator)) == 1


def test_puller_killed_mid_loop_another_takes_over_and_nothing_is_lost(api, workers, simulator):
    w1 = workers.start("puller-1")
    sim_admin(simulator, "fault", endpoint="report", mode="latency", seconds=0.05)
    mid = send(api, {"to": [f"133{i:08d}" for i in range(2000)], "text": "pull me"})
    delivered = lambda: status(api, mid)["recipients"]["by_state"].get("delivered", 0)  # noqa: E731
    wait_for(lambda: delivered() >= 200, what="the first pulls")
    # Freeze the provider's report endpoint, wait for the puller to be inside a call, kill it.
    sim_admin(simulator, "fault", endpoint="report", mode="hang", seconds=60)
    calls = simulator.state.calls["report"]
    wait_for(lambda: simulator.state.calls["report"] > calls, what="a pull in flight")
    workers.kill(w1)
    sim_admin(simulator, "fault", endpoint="report", mode="none")
    killed_at = time.monotonic()
    calls = simulator.state.calls["report"]
    workers.start("puller-2")
    wait_for(lambda: simulator.state.calls["report"] > calls, what="the new puller's first call")
    takeover = time.monotonic() - killed_at
    wait_for(lambda: delivered() == 2000, what="every report")
    assert status(api, mid)["status"] == "delivered"
    # one lease period (2 s) after the kill, plus the new worker's start-up and first tick
    assert takeover < 10
    conn = redis.Redis.from_url(workers.env["SMSGW_REDIS_URL"])
    assert conn.llen("sg:dead") == 0
    print(f"puller takeover after SIGKILL: {takeover:.1f} s")  # noqa: T201
