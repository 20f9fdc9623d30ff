"""Failover with real processes (issue 21 §1): two worker processes, the primary provider as a
process of its own, frozen and then SIGKILLed and restarted; a second provider as the backup.
0 messages lost, no linkid twice at either provider, and the time to move measured."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from devkit.run import wait_http
from devkit.simulator import SimState, SimulatorServer
from tests.conftest import AUTH, Workers, sim_submissions, wait_for
from tests.test_metrics import free_port

pytestmark = [pytest.mark.slow, pytest.mark.faults]


class Primary:
    """The primary account's provider: a simulator process that can be killed and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["--port", str(self.port), "--uid", "test", "--password", "s3cret+%pass"]
        self.proc = subprocess.Popen([sys.executable, "-m", "devkit.simulator", *args], stdout=subprocess.DEVNULL)
        wait_http(f"{self.url}/_sim/state", timeout=20)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def submissions(self) -> list[dict]:
        return requests.get(f"{self.url}/_sim/submissions", timeout=5).json()


@pytest.fixture
def primary() -> Iterator[Primary]:
    sim = Primary()
    sim.start()
    yield sim
    if sim.proc is not None and sim.proc.poll() is None:
        sim.kill()


@pytest.fixture
def backup() -> Iterator[SimulatorServer]:
    server = SimulatorServer(SimState(uid="second", password="backup-pass")).start()
    yield server
    server.stop()


def send(api, mobile: str) -> str:
    r = api.post("/v1/messages", json={"to": [mobile], "text": "验证码 123456", "priority": "high"}, headers=AUTH)
    assert r.status_code == 202
    return r.get_json()["id"]


def all_sent(api, mids: list[str]) -> bool:
    states = [api.get(f"/v1/messages/{m}", headers=AUTH).get_json()["status"] for m in mids]
    return all(s in ("submitted", "delivered") for s in states)


def test_codes_move_off_a_frozen_then_dead_provider_and_come_back(settings_env, redis_conn, tmp_path, primary, backup):
    from gateway import create_app
    from workers.settings import settings_from_env

    env = {
        **settings_env,
        "SMSGW_PROVIDER_URL": f"{primary.url}/smsmarketing/wwwroot/api/",
        "SMSGW_ACCOUNTS": "backup",
        "SMSGW_ACCOUNT_BACKUP_URL": backup.api_url,
        "SMSGW_ACCOUNT_BACKUP_UID": "second",
        "SMSGW_ACCOUNT_BACKUP_PASSWORD": "backup-pass",
        "SMSGW_FAILOVER": "backup",
        "SMSGW_FAILBACK_SECONDS": "5",
    }
    api = create_app(settings_from_env(env)).test_client()
    pool = Workers(env, str(tmp_path))
    try:
        for name in ("w1", "w2"):
            pool.start(name)
        send(api, "13800000000")
        wait_for(lambda: len(primary.submissions()) == 1, 30, what="the first code on the primary")

        # 1. Frozen: every code sent from the freeze on reaches the backup.
        requests.post(f"{primary.url}/_sim/config", json={"frozen": True}, timeout=5)
        frozen_at = time.monotonic()
        mids = [send(api, f"1381000{i:04d}") for i in range(10)]
        wait_for(lambda: all_sent(api, mids), timeout=40, what="codes on the backup after the freeze")
        moved_after_freeze = time.monotonic() - frozen_at

        # 2. The provider's process dies: an operator resumed the account, then it is SIGKILLed.
        requests.post(f"{primary.url}/_sim/config", json={"frozen": False}, timeout=5)
        from workers.lifecycle import resume_account
        from workers.runtime import Runtime

        rt = Runtime.from_settings(settings_from_env(env))
        resume_account(rt.settings, rt.conn, "default", by="test")
        time.sleep(6)  # past the failback time: traffic is back on the primary
        back = send(api, "13820000000")
        wait_for(lambda: all_sent(api, [back]), timeout=30, what="a code on the primary again")
        on_primary = [m for s in primary.submissions() for m in s["mobiles"]]
        assert "13820000000" in on_primary
        before_kill = primary.submissions()
        primary.kill()
        killed_at = time.monotonic()
        mids_dead = [send(api, f"1383000{i:04d}") for i in range(10)]
        wait_for(lambda: all_sent(api, mids_dead), timeout=60, what="codes on the backup after the kill")
        moved_after_kill = time.monotonic() - killed_at

        # 3. Restarted on its address: probed healthy, traffic returns after the failback time.
        primary.start()
        deadline = time.monotonic() + 60
        for i in range(30):  # a code every 2 s until one goes to the restarted primary
            send(api, f"1384000{i:04d}")
            if primary.submissions() or time.monotonic() > deadline:
                break
            time.sleep(2)
        wait_for(lambda: bool(primary.submissions()), timeout=10, what="traffic back on the restarted primary")
    finally:
        pool.stop_all()
    on_backup = [m for s in sim_submissions(backup) for m in s["mobiles"]]
    assert set(on_backup) >= {f"1381000{i:04d}" for i in range(10)} | {f"1383000{i:04d}" for i in range(10)}
    linkids = [s["linkid"] for s in sim_submissions(backup)] + [s["linkid"] for s in before_kill]
    linkids += [s["linkid"] for s in primary.submissions()]
    assert len(linkids) == len(set(linkids)), "a linkid reached a provider twice"
    assert backup.state.summary()["repeated_linkids"] == {}
    print(f"moved {moved_after_freeze:.1f} s after the freeze, {moved_after_kill:.1f} s after the kill")  # noqa: T201
