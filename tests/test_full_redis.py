"""A full Redis (``maxmemory`` reached, ``noeviction``) is waited out like a lost one (issue 19).

Redis refuses every write that may grow memory once it is full, while PING and reads still
answer. Two real worker processes run into it mid-work; the API says it is not ready, the push
receiver refuses and counts; when memory frees, everything accepted reaches a final state and no
linkid reaches the provider twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
import requests

from tests.conftest import AUTH, sim_admin, sim_submissions, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def free(conn: redis.Redis) -> None:
    fillers = list(conn.scan_iter(match="filler:*"))
    if fillers:
        conn.delete(*fillers)


@pytest.fixture
def full(redis_conn: redis.Redis) -> Iterator[Iterator[None]]:
    """Fills our Redis to its limit on demand; frees and lifts the limit afterwards."""

    def fill() -> Iterator[None]:
        for i in range(16):  # what the rest of the test frees
            redis_conn.set(f"filler:{i}", b"x" * 2**20)
        # The limit below what is used: every write that may grow memory is refused until the
        # fillers go, however much the workers free meanwhile.
        redis_conn.config_set("maxmemory", redis_conn.info("memory")["used_memory"] - 8 * 2**20)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            redis_conn.set("probe", 1)
        yield

    try:
        yield fill()
    finally:
        free(redis_conn)
        redis_conn.config_set("maxmemory", 0)


def test_workers_survive_a_full_redis_and_nothing_accepted_is_lost(
    app, workers, simulator, runtime, redis_conn, full, settings_env
):
    api = app.test_client()
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=0.5, times=1000)
    procs = [workers.start(name) for name in ("w1", "w2")]
    mids = []
    for i in range(20):
        r = api.post("/v1/messages", json={"to": [f"1380013{i:04d}"], "text": f"订单{i}已发货"}, headers=AUTH)
        assert r.status_code == 202
        mids.append(r.get_json()["id"])
    wait_for(lambda: len(sim_submissions(simulator)) >= 1, what="the first sends")
    next(full)  # Redis is full from here, with work in flight

    assert api.get("/readyz").status_code == 503
    refused = api.post("/v1/messages", json={"to": ["13900139000"], "text": "x"}, headers=AUTH)
    assert refused.status_code == 503 and "full" in refused.get_json()["detail"]
    push = f"/callbacks/provider/{settings_env['SMSGW_CALLBACK_SECRET']}"
    pushed = {"Class": "rpt", "SmsName": "test", "Mobile": "13800138000", "LinkId": "x", "Report": "DELIVRD"}
    assert api.get(push, query_string={**pushed, "ReportTime": "2030-01-01 10:00:00"}).status_code == 503
    assert "smsgw_push_refused_total 1.0" in api.get("/metrics").get_data(as_text=True)
    time.sleep(8)  # long enough for every worker to run into the refusal, more than once
    assert [p.poll() for p in procs] == [None, None], "a worker quit on a full Redis"

    free(redis_conn)
    assert api.get("/readyz").status_code == 200

    def final() -> bool:
        states = [api.get(f"/v1/messages/{m}", headers=AUTH).get_json()["status"] for m in mids]
        return all(s in ("submitted", "delivered") for s in states)

    wait_for(final, timeout=120, what="every accepted message sent once memory freed")
    assert requests.get(f"{simulator.url}/_sim/state", timeout=5).json()["repeated_linkids"] == {}
    sent = sorted(m for s in sim_submissions(simulator) for m in s["mobiles"])
    assert sent == sorted(f"1380013{i:04d}" for i in range(20))


def test_reports_the_push_receiver_refused_are_recovered_by_the_pullers(app, runtime, simulator, full, redis_conn):
    import threading

    from werkzeug.serving import make_server

    from tests.conftest import drain
    from tests.test_reports import PUSH, pull_all

    api = app.test_client()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sim_admin(simulator, "config", push_url=f"http://127.0.0.1:{server.port}{PUSH}", report_delay=3.0)
        mids = [
            api.post("/v1/messages", json={"to": [f"1380013800{i}"], "text": "x"}, headers=AUTH).get_json()["id"]
            for i in range(3)
        ]
        drain(runtime)
        next(full)
        state = lambda: requests.get(f"{simulator.url}/_sim/state", timeout=5).json()  # noqa: E731
        wait_for(lambda: state()["pushes_refused"] == 3, timeout=20, what="three pushes refused")
        free(redis_conn)
        pull_all(runtime)
    finally:
        server.shutdown()
        server.server_close()
    assert [api.get(f"/v1/messages/{m}", headers=AUTH).get_json()["status"] for m in mids] == ["delivered"] * 3
