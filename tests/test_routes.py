"""Failover between accounts, and back (issue 21 §1): two simulators as two providers' accounts,
over real HTTP on loopback; the primary frozen, or stopped outright."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from devkit.simulator import SimState, SimulatorServer
from gateway import create_app
from tests.conftest import AUTH, drain, make_settings, sim_admin, sim_submissions
from workers import accounts, maintenance, routes
from workers.settings import SettingsError, settings_from_env


@pytest.fixture
def backup_sim() -> Iterator[SimulatorServer]:
    server = SimulatorServer(SimState(uid="second", password="backup-pass")).start()
    yield server
    server.stop()


@pytest.fixture
def failover(settings_env, runtime, backup_sim):
    """The default account fails over to ``backup`` (another provider's account)."""
    env = {**settings_env, **_failover_env(backup_sim)}
    runtime.settings = settings_from_env(env)
    runtime._clients.clear()
    return create_app(runtime.settings).test_client()


def send(api, mobile, priority="high", text="验证码 123456") -> str:
    r = api.post("/v1/messages", json={"to": [mobile], "text": text, "priority": priority}, headers=AUTH)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def view(api, mid) -> dict:
    return api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()


def every_linkid(*sims) -> list[str]:
    return [s["linkid"] for sim in sims for s in sim_submissions(sim)]


def test_codes_move_to_the_backup_when_the_primary_is_frozen_and_bulk_waits(failover, runtime, simulator, backup_sim):
    api = failover
    sim_admin(simulator, "config", frozen=True)
    code = send(api, "13800138000")
    notice = send(api, "13900139000", priority="normal", text="您的订单已发货")
    bulk = send(api, "13700137000", priority="bulk", text="双十二促销，回T退订")
    drain(runtime)
    assert accounts.state(runtime.conn, "default").state == "held"
    sent_by_backup = sorted(m for s in sim_submissions(backup_sim) for m in s["mobiles"])
    assert sent_by_backup == ["13800138000", "13900139000"]
    assert view(api, code)["status"] == "submitted" and view(api, code)["chunks"][0]["account"] == "backup"
    assert view(api, notice)["chunks"][0]["account"] == "backup"
    [held] = view(api, bulk)["chunks"]
    assert held["state"] == "held" and held["account"] == "default"  # bulk waits for its own account
    linkids = every_linkid(simulator, backup_sim)
    assert len(linkids) == len(set(linkids))
    assert int(runtime.conn.hget("sg:counts", "route_switches")) >= 1
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'smsgw_route{account="default",priority="high",to="backup"} 1.0' in metrics
    assert runtime.conn.hget("sg:alerts", "route_switched") is not None


def test_a_stopped_provider_moves_codes_after_three_failed_connections_and_traffic_returns(
    failover, runtime, simulator, backup_sim, request
):
    api = failover
    port = simulator._server.port
    simulator.stop()  # the primary's provider is gone: every call is refused before it is sent
    code = send(api, "13800138000")
    drain(runtime, timeout=60)
    assert view(api, code)["chunks"][0]["account"] == "backup"
    assert [s["mobiles"] for s in sim_submissions(backup_sim)] == [["13800138000"]]
    assert accounts.state(runtime.conn, "default").fails >= runtime.settings.failover_errors
    assert routes.route(runtime.conn, runtime.settings, "default", "high") == "backup"
    again = SimulatorServer(simulator.state, port=port).start()  # restarted, on its address
    request.addfinalizer(again.stop)
    # The provider is back: the probe finds it healthy; traffic returns after SMSGW_FAILBACK_SECONDS.
    runtime._clients.clear()
    maintenance.run_once(runtime)
    assert routes.route(runtime.conn, runtime.settings, "default", "high") == "backup"  # not yet
    time.sleep(2.1)
    assert routes.route(runtime.conn, runtime.settings, "default", "high") == "default"
    back = send(api, "13900139000")
    drain(runtime)
    assert view(api, back)["chunks"][0]["account"] == "default"


def test_held_chunks_already_parked_move_when_their_account_gets_a_backup_route(
    failover, runtime, simulator, backup_sim
):
    api = failover
    accounts.hold(runtime.settings, runtime.conn, "default", "op", "operator hold")
    mids = [send(api, f"1380013800{i}") for i in range(3)]
    drain(runtime)  # the first send found the hold and moved at once
    assert {view(api, m)["chunks"][0]["account"] for m in mids} == {"backup"}
    assert sim_submissions(simulator) == []


def test_an_operator_pins_a_route_and_unpins_it(failover, runtime, simulator, backup_sim):
    api = failover
    routes.pin(runtime.conn, runtime.settings, "default", "backup", by="test")
    first = send(api, "13800138000", priority="bulk", text="回T退订")
    drain(runtime)
    assert view(api, first)["chunks"][0]["account"] == "backup"  # pinned: every priority
    routes.unpin(runtime.conn, runtime.settings, "default", by="test")
    second = send(api, "13900139000", priority="bulk", text="回T退订")
    drain(runtime)
    assert view(api, second)["chunks"][0]["account"] == "default"


def test_failover_settings_are_checked_at_start():
    with pytest.raises(SettingsError, match="SMSGW_FAILOVER"):
        make_settings(SMSGW_FAILOVER="nowhere")
    with pytest.raises(SettingsError, match="SMSGW_FAILOVER_PRIORITIES"):
        make_settings(SMSGW_FAILOVER_PRIORITIES="high,urgent")


def test_an_account_whose_reports_come_late_is_unhealthy_until_they_come_on_time(failover, runtime):
    settings, conn, now = runtime.settings, runtime.conn, time.time()
    for i in range(40):
        routes.count_report(conn, settings, "default", 600 if i % 4 == 0 else 30, now)  # 25 % late
    assert routes.check_speed(conn, settings, "default", now) is True
    assert routes.route(conn, settings, "default", "high") == "backup"
    assert routes.route(conn, settings, "default", "bulk") == "default"
    for _ in range(200):
        routes.count_report(conn, settings, "default", 30, now)  # late ones are now under 15 %
    assert routes.check_speed(conn, settings, "default", now) is False
    time.sleep(2.1)  # SMSGW_FAILBACK_SECONDS in this test
    assert routes.route(conn, settings, "default", "high") == "default"


def test_a_few_late_reports_say_nothing(failover, runtime):
    for _ in range(10):
        routes.count_report(runtime.conn, runtime.settings, "default", 900, time.time())
    assert routes.check_speed(runtime.conn, runtime.settings, "default", time.time()) is False


def test_a_route_whose_reports_say_late_deliveries_moves_codes_to_the_backup(
    failover, runtime, simulator, backup_sim, settings_env
):
    from tests.test_reports import pull_all

    runtime.settings = settings_from_env(
        {**settings_env, **_failover_env(backup_sim), "SMSGW_FAILOVER_SLOW_SECONDS": "1"}
    )
    api = create_app(runtime.settings).test_client()
    sim_admin(simulator, "config", report_delay=1.5)  # every delivery takes 1.5 s: slow here
    for i in range(routes.SLOW_MIN_REPORTS):
        send(api, f"1380013{i:04d}", priority="normal", text=f"订单{i}已发货")
    drain(runtime)
    time.sleep(1.6)
    pull_all(runtime)
    maintenance.run_once(runtime)
    assert accounts.state(runtime.conn, "default").slow == 1
    code = send(api, "13900139000")
    drain(runtime)
    assert view(api, code)["chunks"][0]["account"] == "backup"


def _failover_env(backup_sim) -> dict[str, str]:
    return {
        "SMSGW_ACCOUNTS": "backup",
        "SMSGW_ACCOUNT_BACKUP_URL": backup_sim.api_url,
        "SMSGW_ACCOUNT_BACKUP_UID": "second",
        "SMSGW_ACCOUNT_BACKUP_PASSWORD": "backup-pass",
        "SMSGW_FAILOVER": "backup",
        "SMSGW_FAILBACK_SECONDS": "2",
    }
