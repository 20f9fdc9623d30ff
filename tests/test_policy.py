"""Each row of the error policy table, driven by the simulator's fault injection."""

from __future__ import annotations

import json

import pytest

from tests.conftest import AUTH, carrier, drain, sim_admin, sim_submissions
from workers import accounts, lifecycle, maintenance, reports
from workers import provider as p
from workers.policy import POLICY, Action, backoff, classify
from workers.storage import schema
from workers.storage.schema import report_seen_key


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (None, Action.SUBMITTED),
        (p.ConnectError("x"), Action.RETRY),
        (p.HTTPStatusError("x", status=502), Action.AMBIGUOUS),
        (p.HTTPStatusError("x", status=500), Action.AMBIGUOUS),
        (p.UnknownAnswer("x"), Action.AMBIGUOUS),
        (p.TransportError("x"), Action.AMBIGUOUS),
        (p.ReadTimeout("x"), Action.AMBIGUOUS),
        (p.InsufficientBalance("x"), Action.HOLD),
        (p.AccountFrozen("x"), Action.HOLD),
        (p.BadCredentials("x"), Action.HOLD),
        (p.NotAllowed("x"), Action.HOLD),
        (p.TooManyRecipients("x"), Action.SPLIT),
        (p.EmptyMessage("x"), Action.FAIL),
        (p.TextTooLong("x"), Action.FAIL),
    ],
)
def test_policy_table(error, action):
    assert classify(error) is action


def test_every_exception_class_has_a_row():
    def leaves(cls):
        subs = cls.__subclasses__()
        return [cls] if not subs else [leaf for s in subs for leaf in leaves(s)]

    assert all(any(c in POLICY for c in leaf.__mro__) for leaf in leaves(p.ProviderError))


def test_backoff_grows_is_capped_and_jittered():
    delays = [backoff(a, 1.0, 10.0) for a in range(1, 8)]
    assert all(0.5 <= d <= 10 for d in delays) and delays[-1] >= 5
    assert len({backoff(3, 1.0, 10.0) for _ in range(20)}) > 1


def send(api, body):
    r = api.post("/v1/messages", data=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 202
    return r.get_json()["id"]


def view(api, mid):
    return api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()


@pytest.mark.parametrize(("code", "reason"), [(8, "account frozen"), (1, "wrong uid"), (4, "not allowed")])
def test_hold_codes_hold_the_account_and_burn_nothing(api, runtime, simulator, code, reason):
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[code])
    first = send(api, {"to": ["13800138000"], "text": "a"})
    drain(runtime)
    second = send(api, {"to": ["13900139000"], "text": "b"})
    drain(runtime)
    state = accounts.state(runtime.conn, "default")
    assert state.state == "held" and reason in state.reason
    for mid in (first, second):
        [chunk] = view(api, mid)["chunks"]
        assert chunk["state"] == "held" and chunk["attempts"] == 0
    assert sim_submissions(simulator) == []
    assert runtime.conn.hget("sg:alerts", "account_held") == b"1"  # one alert per state change
    assert lifecycle.resume_account(runtime.settings, runtime.conn, "default", by="test") == 2
    drain(runtime)
    assert [view(api, m)["status"] for m in (first, second)] == ["submitted", "submitted"]
    assert len(sim_submissions(simulator)) == 2
    assert sim_admin(simulator, "config")["repeated_linkids"] == {}


def test_balance_hold_resumes_by_itself_when_topped_up(api, runtime, simulator):
    sim_admin(simulator, "config", balance=0)
    mids = [send(api, {"to": [f"1380000000{i}"], "text": f"x{i}"}) for i in range(3)]  # 3 texts: 3 submissions
    drain(runtime)
    assert accounts.state(runtime.conn, "default").code == "2"
    assert maintenance.run_once(runtime)["resumed"] == 0  # still no money
    assert accounts.state(runtime.conn, "default").balance == "0"
    sim_admin(simulator, "config", balance=100)
    runtime.conn.hset(schema.account_key("default"), "checked", 0)
    assert maintenance.run_once(runtime)["resumed"] == 3
    drain(runtime)
    assert [view(api, m)["status"] for m in mids] == ["submitted"] * 3
    subs = sim_submissions(simulator)
    assert len(subs) == 3 and len({s["linkid"] for s in subs}) == 3


def test_chunks_held_too_long_fail_with_the_reason(api, runtime, simulator):
    sim_admin(simulator, "config", frozen=True)
    mid = send(api, {"to": ["13800138000"], "text": "x"})
    drain(runtime)
    import time

    maintenance.run_once(runtime, now=time.time() + runtime.settings.hold_max_age_seconds + 1)
    [chunk] = view(api, mid)["chunks"]
    assert chunk["state"] == "failed" and "frozen" in chunk["reason"]


@pytest.fixture
def short_wait(runtime, monkeypatch):
    import dataclasses

    monkeypatch.setattr(runtime, "settings", dataclasses.replace(runtime.settings, ambiguous_wait_seconds=1))
    return runtime


def test_ambiguous_normal_waits_for_a_report_then_counts_it_accepted(api, short_wait, simulator):
    runtime = short_wait
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="hang", seconds=3, accept=True, times=1)
    mid = send(api, {"to": ["13800138000"], "text": "hi"})
    drain(runtime, until=lambda: view(api, mid)["chunks"][0]["state"] == "unconfirmed", timeout=30)
    linkid = view(api, mid)["chunks"][0]["linkid"]
    runtime.conn.set(report_seen_key(linkid), 1)  # what report ingestion does
    drain(runtime, timeout=10)
    [chunk] = view(api, mid)["chunks"]
    assert chunk["state"] == "submitted" and chunk["linkid"] == linkid
    assert [s["linkid"] for s in sim_submissions(simulator)] == [linkid]
    assert "confirmed_by_report" in [h["event"] for h in chunk["history"]]


def test_ambiguous_normal_without_report_is_never_sent_again(api, short_wait, simulator):
    """The provider may have taken it and lost the report: a normal chunk is not resent under
    any linkid. It ends submitted on its one linkid, which stays mapped so a late report counts."""
    runtime = short_wait
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="hang", seconds=3, accept=True, times=1)
    sim_admin(simulator, "config", report_delay=3600)  # its report comes too late
    mid = send(api, {"to": ["13800138000"], "text": "hi"})
    drain(runtime, timeout=30)
    [chunk] = view(api, mid)["chunks"]
    assert chunk["state"] == "submitted"
    events = [h["event"] for h in chunk["history"]]
    assert "awaiting_report" in events and "no_report_not_resent" in events
    [sub] = sim_submissions(simulator)  # delivered once, never twice
    assert sub["linkid"] == chunk["linkid"] and chunk["unconfirmed"] is True
    assert runtime.conn.get(schema.linkid_key(chunk["linkid"])) == carrier(runtime.conn, mid)

    # Its report comes late after all: the linkid still names it, and it is unconfirmed no more.
    report = {"kind": "rpt", "mobile": "13800138000", "linkid": sub["linkid"], "status": "DELIVRD", "time": ""}
    reports.receive(runtime, [report])
    reports.ingest(runtime)
    later = view(api, mid)
    assert later["status"] == "delivered" and later["chunks"][0]["unconfirmed"] is False
    assert "confirmed_by_late_report" in [h["event"] for h in later["chunks"][0]["history"]]
    assert runtime.conn.hget(schema.COUNTS, "unconfirmed") == b"1"  # the wait did end without one


def test_rate_limit_is_shared_through_redis(runtime):
    import time

    started = time.monotonic()
    for _ in range(25):
        assert accounts.acquire_rate(runtime.conn, "default", 10)
    assert time.monotonic() - started >= 1.0  # 25 calls at 10/s need at least two second boundaries


# -- no linkid twice: every outcome, with the simulator's faults, counted exactly ------------------

ACCEPT_THEN_FAIL = {
    "502": {"mode": "http", "status": 502},
    "500": {"mode": "http", "status": 500},
    "garbage": {"mode": "garbage"},
    "reset": {"mode": "drop"},
    "read timeout": {"mode": "hang", "seconds": 3},
}


def linkids(simulator) -> list[str]:
    return [s["linkid"] for s in sim_submissions(simulator)]


@pytest.mark.parametrize("outcome", list(ACCEPT_THEN_FAIL))
def test_accepted_then_failed_normal_waits_for_the_report_and_never_resends(api, runtime, simulator, outcome):
    from tests.test_reports import pull_all

    sim_admin(simulator, "fault", endpoint="post_send_md5", accept=True, times=1, **ACCEPT_THEN_FAIL[outcome])
    mid = send(api, {"to": ["13800138000"], "text": "order shipped"})
    drain(runtime, until=lambda: view(api, mid)["chunks"][0]["state"] == "unconfirmed", timeout=30)
    pull_all(runtime)  # the provider's report on the linkid proves it was accepted
    drain(runtime)
    [chunk] = view(api, mid)["chunks"]
    assert chunk["state"] == "submitted" and "confirmed_by_report" in [h["event"] for h in chunk["history"]]
    assert linkids(simulator) == [chunk["linkid"]]
    assert view(api, mid)["status"] == "delivered"


@pytest.mark.parametrize("outcome", list(ACCEPT_THEN_FAIL))
def test_accepted_then_failed_high_resubmits_under_a_new_linkid_and_counts_it(api, runtime, simulator, outcome):
    sim_admin(simulator, "fault", endpoint="post_send_md5", accept=True, times=1, **ACCEPT_THEN_FAIL[outcome])
    mid = send(api, {"to": ["13800138000"], "text": "code 1234", "priority": "high"})
    drain(runtime, timeout=30)
    [chunk] = view(api, mid)["chunks"]
    sent = linkids(simulator)
    assert len(sent) == 2 and len(set(sent)) == 2  # delivered twice, never one linkid twice
    assert chunk["state"] == "submitted" and chunk["linkid"] == sent[1] and chunk["possible_duplicates"] == 1
    assert "ambiguous_resubmit_new_linkid" in [h["event"] for h in chunk["history"]]
    for linkid in sent:  # a report on either linkid reaches the message
        assert runtime.conn.get(schema.linkid_key(linkid)) == carrier(runtime.conn, mid)
    assert runtime.conn.hget(schema.COUNTS, "possible_duplicates") == b"1"


@pytest.mark.parametrize("outcome", ["502", "garbage"])
def test_refused_then_failed_normal_is_not_resent_and_is_counted(api, runtime, simulator, outcome):
    """The provider did not take it (a proxy's 502), but smsgw cannot know that: no report
    comes, and the chunk ends submitted unconfirmed on its first linkid, counted, never resent."""
    sim_admin(simulator, "fault", endpoint="post_send_md5", accept=False, times=1, **ACCEPT_THEN_FAIL[outcome])
    mid = send(api, {"to": ["13800138000"], "text": "hello"})
    drain(runtime, timeout=30)
    [chunk] = view(api, mid)["chunks"]
    events = [h["event"] for h in chunk["history"]]
    assert chunk["state"] == "submitted" and "no_report_not_resent" in events
    first = next(h["linkid"] for h in chunk["history"] if h["event"] == "planned")
    assert linkids(simulator) == [] and chunk["linkid"] == first
    assert runtime.conn.hget(schema.COUNTS, "unconfirmed") == b"1"


def test_connection_refused_retries_under_the_same_linkid(redis_server, redis_conn):
    """Nothing reached the provider (its port was closed): the same linkid is safe to send."""
    from devkit.simulator import SimState, SimulatorServer
    from gateway import create_app
    from tests.conftest import make_settings
    from workers.runtime import Runtime, install

    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/smsmarketing/wwwroot/api/"
    settings = make_settings(redis_server.url, SMSGW_PROVIDER_URL=url)
    rt = Runtime.from_settings(settings)
    install(rt)
    try:
        api = create_app(settings).test_client()
        mid = send(api, {"to": ["13800138000"], "text": "hi"})
        drain(rt, until=lambda: view(api, mid)["chunks"] and view(api, mid)["chunks"][0]["state"] == "retry")
        first = view(api, mid)["chunks"][0]["linkid"]
        sim = SimulatorServer(SimState(uid="test", password="s3cret+%pass"), port=port).start()
        try:
            drain(rt)
            [chunk] = view(api, mid)["chunks"]
            assert chunk["state"] == "submitted" and chunk["linkid"] == first
            assert linkids(sim) == [first]
        finally:
            sim.stop()
    finally:
        install(None)
