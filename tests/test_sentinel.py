"""Redis that survives losing its host: a real master, replica and three Sentinels; the master
SIGKILLed while messages flow. Every 202 reaches a final state; no linkid goes twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import redis

from tests.conftest import AUTH, TEST_ENV, Workers, sim_submissions, wait_for
from tests.sentinel_cluster import PASSWORD, SentinelCluster
from workers.settings import SettingsError, parse_sentinel_url, settings_from_env
from workers.storage.schema import Message

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.fixture
def cluster(tmp_path):
    c = SentinelCluster(tmp_path / "cluster").start()
    yield c
    c.stop()


def test_the_sentinel_url_is_parsed_or_refused_naming_the_setting():
    url = parse_sentinel_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/mymaster/2")
    assert url.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380)) and url.service == "mymaster"
    assert url.db == 2 and url.password.reveal() == "pw"
    for bad in ("redis+sentinel://10.0.0.1:26379", "redis+sentinel://host/svc", "redis+sentinel:///svc"):
        with pytest.raises(SettingsError, match="SMSGW_REDIS_URL"):
            settings_from_env({"SMSGW_REDIS_URL": bad})


def test_master_sigkilled_while_messages_flow(cluster, simulator, tmp_path):
    from gateway import create_app

    env = {
        **TEST_ENV,
        "SMSGW_REDIS_URL": cluster.url,
        "SMSGW_PROVIDER_URL": simulator.api_url,
        "SMSGW_REDIS_REPLICA_ACKS": "1",
        "SMSGW_REDIS_REPLICA_TIMEOUT_MS": "500",
        "SMSGW_REDIS_SOCKET_TIMEOUT": "1",
        "SMSGW_ACCEPT_SETTLE_SECONDS": "3",
        "SMSGW_SWEEP_SECONDS": "1",
        "SMSGW_JOB_GRACE_SECONDS": "2",
        "SMSGW_PULL_GAP_SECONDS": "0.01",
        "SMSGW_PULL_INTERVAL_SECONDS": "1",
        "SMSGW_LEASE_SECONDS": "2",
        "SMSGW_AMBIGUOUS_WAIT_SECONDS": "8",
    }
    api = create_app(settings_from_env(env)).test_client()
    pool = Workers(env, str(tmp_path))
    accepted: dict[str, str] = {}
    refused: list[str] = []
    unknown: list[str] = []  # answered "Outcome unknown" first, then settled by a retry
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            mobile = f"1381234{i:04d}"
            i += 1
            # As a client must: an unknown outcome is asked again with the same Idempotency-Key
            # until it is a 202 (accepted, perhaps by the first request) or a plain 503 (nothing
            # was accepted). Only the latter is a refusal the test may hold the gateway to.
            headers = {**AUTH, "Idempotency-Key": f"flow-{mobile}"}
            settled_by = time.monotonic() + 60
            while True:
                r = api.post("/v1/messages", json={"to": [mobile], "text": f"m{i}"}, headers=headers)
                title = r.get_json().get("title")
                if r.status_code == 202 or (r.status_code, title) == (503, "Service Unavailable"):
                    break
                assert (r.status_code, title) in {(503, "Outcome unknown"), (409, "Request in progress")}, r.get_json()
                assert time.monotonic() < settled_by, f"{mobile}: no settled answer in 60 s"
                unknown.append(mobile)
                time.sleep(0.5)
            if r.status_code == 202:
                accepted[r.get_json()["id"]] = mobile
            else:
                refused.append(mobile)
            time.sleep(0.05)

    try:
        pool.start("s1")
        pool.start("s2")
        sender = threading.Thread(target=traffic)
        sender.start()
        wait_for(lambda: len(sim_submissions(simulator)) >= 10, what="traffic before the failover")
        old = cluster.master()
        cluster.kill_master()
        wait_for(lambda: cluster.master() != old, 30, "a new master")
        before = len(accepted)
        time.sleep(2)  # no replica left: a 202 promises one, so the API answers 503 meanwhile
        cluster.add_replica()
        wait_for(lambda: len(accepted) >= before + 10, 30, "accepts again once a replica is back")
        stop.set()
        sender.join()

        def final(mid: str) -> bool:
            r = api.get(f"/v1/messages/{mid}", headers=AUTH)
            return r.status_code == 200 and r.get_json()["status"] in {"submitted", "delivered", "partially_delivered"}

        try:
            wait_for(lambda: all(final(m) for m in accepted), 120, "every accepted message final")
        except AssertionError:
            late = {m: api.get(f"/v1/messages/{m}", headers=AUTH).get_json() for m in accepted if not final(m)}
            raise AssertionError(
                {m: (v.get("status"), [c["state"] for c in v.get("chunks", [])]) for m, v in late.items()}
            ) from None
        assert all(p.poll() is None for p in pool.procs)
    finally:
        stop.set()
        pool.stop_all()
    subs = sim_submissions(simulator)
    linkids = [s["linkid"] for s in subs]
    assert len(linkids) == len(set(linkids))  # no linkid twice
    sent = [m for s in subs for m in s["mobiles"]]
    assert set(accepted.values()) <= set(sent)
    assert not set(refused) & set(sent)  # a 503 was the truth
    assert len(accepted) > 20 and refused
    print(  # noqa: T201
        f"failover: {len(accepted)} accepted, {len(refused)} refused, {len(set(unknown))} unknown at first, "
        f"{len(subs)} submissions"
    )


def test_a_withdrawn_accept_is_refused_only_once_the_replicas_hold_the_withdrawal(cluster):
    """A 202 waits for a replica; without one in time the accept is withdrawn and the client
    told nothing was accepted. That is true only once the withdrawal reached every replica the
    accept may have reached: here the replica is stopped (SIGSTOP), so its promotion would send
    the message, and the answer is "Outcome unknown" until it acknowledges. With no replica
    connected at all, the withdrawal is as durable as the accept was, and the 503 is plain."""
    from gateway import create_app

    env = {
        **TEST_ENV,
        "SMSGW_REDIS_URL": cluster.url,
        "SMSGW_REDIS_REPLICA_ACKS": "1",
        "SMSGW_REDIS_REPLICA_TIMEOUT_MS": "300",
    }
    api = create_app(settings_from_env(env)).test_client()
    master = redis.Redis(port=cluster.master_port, password=PASSWORD)
    replica = redis.Redis(port=cluster.replica_port, password=PASSWORD)

    def post(mobile: str) -> tuple[int, dict[str, Any]]:
        r = api.post("/v1/messages", json={"to": [mobile], "text": "hi"}, headers={**AUTH, "Idempotency-Key": mobile})
        return r.status_code, r.get_json()

    assert post("13800000001")[0] == 202
    stopped = cluster.procs["replica"]
    stopped.send_signal(signal.SIGSTOP)
    try:
        status, body = post("13800000002")
    finally:
        stopped.send_signal(signal.SIGCONT)
    assert (status, body["title"]) == (503, "Outcome unknown"), body
    mid = re.search(r"message (\S+) may", body["detail"]).group(1)
    withdrawn = Message.read(master, mid)
    assert withdrawn is not None and withdrawn.state == "cancelled"
    idem = [k for k in master.scan_iter("sg:idem:*")]
    assert len(idem) == 1  # the first message's; the withdrawn one's went with it
    wait_for(lambda: (m := Message.read(replica, mid)) is not None and m.state == "cancelled", 30, "the replica")
    assert post("13800000002")[0] == 202  # the key is free again: a retry is a new accept

    stopped.kill()
    stopped.wait()
    wait_for(lambda: not master.execute_command("ROLE")[2], 30, "the master to see no replica")
    status, body = post("13800000003")
    assert (status, body["title"]) == (503, "Service Unavailable"), body


def test_a_wrong_redis_password_is_one_line_naming_the_setting(cluster):
    url = cluster.url.replace(":cluster-pass-123@", ":wrong@")
    env = {**os.environ, **TEST_ENV, "SMSGW_REDIS_URL": url}
    for role in ("worker", "api"):
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", role], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0
        assert "SMSGW_REDIS_URL" in done.stderr and "password" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "wrong" not in done.stderr


def test_dashboards_cli_and_leases_work_through_sentinel(cluster):
    import base64

    from gateway import create_app
    from workers import pullers
    from workers.runtime import connect

    env = {**TEST_ENV, "SMSGW_REDIS_URL": cluster.url, "SMSGW_OPERATOR_PASSWORD": "operator-pass-123"}
    settings = settings_from_env(env)
    api = create_app(settings).test_client()
    operator = {"Authorization": "Basic " + base64.b64encode(b"operator:operator-pass-123").decode()}
    assert api.get("/dashboard/", headers=operator).status_code == 200
    rq_page = api.get("/dashboard/rq/", headers=operator, follow_redirects=True)
    assert rq_page.status_code == 200
    assert api.get("/readyz").status_code == 200
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "accounts", "list"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and '"account": "default"' in done.stdout, done.stderr
    assert pullers.hold_lease(connect(settings), "pull:default", "me", 5)
