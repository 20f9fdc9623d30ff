"""Validity: nothing is sent after it stops being useful (issue 21 §2).

A message's validity runs from when it is due (``send_at`` or its accept). Past it, a
recipient ends ``expired``: never sent, never billed, its cap slot given back; checked at
every point that can submit (a pool's batch, a chunk's send and every retry, a resume after a
hold, a ``send_at`` release) and by the maintenance round for whatever holds it meanwhile.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from tests.conftest import AUTH, drain, sim_admin, sim_submissions
from workers import lifecycle, maintenance
from workers.storage import schema


def send(api, body) -> dict:
    r = api.post("/v1/messages", json=body, headers=AUTH)
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def view(api, mid) -> dict:
    return api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()


def code(api, mobile, valid_for=None) -> dict:
    body = {"to": [mobile], "text": "验证码 123456", "priority": "high"}
    return send(api, body if valid_for is None else {**body, "valid_for": valid_for})


def test_a_code_valid_a_few_seconds_behind_a_longer_hold_is_never_sent_and_reads_expired(api, runtime, simulator):
    sim_admin(simulator, "config", frozen=True)
    answer = code(api, "13800138000", valid_for=2)
    assert answer["valid_until"] is not None
    drain(runtime)
    assert view(api, answer["id"])["status"] == "sending"  # held behind the frozen account
    time.sleep(2.2)
    sim_admin(simulator, "config", frozen=False)
    assert lifecycle.resume_account(runtime.settings, runtime.conn, "default", by="test") == 1
    drain(runtime)
    v = view(api, answer["id"])
    assert v["status"] == "expired" and v["recipients"]["by_state"]["expired"] == 1
    assert v["chunks"][0]["state"] == "expired"
    assert simulator.state.calls["post_send_md5"] == 1  # the call that answered 8, and no other
    assert sim_submissions(simulator) == []
    assert code(api, "13800138000")["status"] == "accepted"  # its cap slot was given back


def test_the_maintenance_round_expires_what_a_hold_keeps_and_a_resume_sends_none_of_it(api, runtime, simulator):
    """2,000 codes valid 300 s behind a frozen account; 20 minutes later (the round's clock)
    they read expired, and the resume makes no provider call for them."""
    sim_admin(simulator, "config", frozen=True)
    mids = [code(api, f"138{i:08d}", valid_for=300)["id"] for i in range(2000)]
    drain(runtime, timeout=120)
    calls = simulator.state.calls["post_send_ddt"] + simulator.state.calls["post_send_md5"]
    assert calls <= 2  # the calls that answered 8
    out = maintenance.run_once(runtime, now=time.time() + 1200)
    assert out["expired"] >= 1
    sim_admin(simulator, "config", frozen=False)
    lifecycle.resume_account(runtime.settings, runtime.conn, "default", by="test")
    drain(runtime, timeout=60)
    assert simulator.state.calls["post_send_ddt"] + simulator.state.calls["post_send_md5"] == calls
    assert {view(api, m)["status"] for m in mids[::100]} == {"expired"}
    counts = runtime.conn.hgetall(schema.COUNTS)
    assert int(counts[b"recipients_expired"]) == 2000


def test_members_past_their_own_validity_leave_a_batch_and_the_rest_is_sent(api, runtime, simulator):
    sim_admin(simulator, "config", frozen=True)
    short = send(api, {"to": ["13800138000"], "text": "您的订单已发货", "valid_for": 1})
    lasting = send(api, {"to": ["13900139000"], "text": "您的订单已发货"})  # normal: no validity
    drain(runtime)
    time.sleep(1.2)
    sim_admin(simulator, "config", frozen=False)
    lifecycle.resume_account(runtime.settings, runtime.conn, "default", by="test")
    drain(runtime)
    assert view(api, short["id"])["status"] == "expired"
    assert view(api, lasting["id"])["status"] == "submitted"
    [sub] = sim_submissions(simulator)
    assert sub["mobiles"] == ["13900139000"]
    assert sim_admin(simulator, "config")["repeated_linkids"] == {}


def test_a_scheduled_message_is_valid_from_its_send_at_not_its_accept(api, runtime, simulator):
    at = datetime.now(UTC) + timedelta(seconds=2)
    answer = send(api, {"to": ["13800138000"], "text": "x", "send_at": at.isoformat(), "valid_for": 1})
    assert datetime.fromisoformat(answer["valid_until"]) >= at + timedelta(seconds=1) - timedelta(milliseconds=5)
    drain(runtime, until=lambda: view(api, answer["id"])["status"] != "scheduled")
    drain(runtime)
    assert view(api, answer["id"])["status"] in ("submitted", "delivered")


def test_validity_defaults_per_priority_and_is_bounded_at_the_door(api, runtime):
    high = code(api, "13800138000")
    until = datetime.fromisoformat(high["valid_until"]).timestamp()
    assert 590 < until - time.time() <= 600  # SMSGW_VALID_FOR_HIGH, 600 by default
    assert send(api, {"to": ["13900139000"], "text": "x"})["valid_until"] is None  # normal: none
    too_long = api.post("/v1/messages", json={"to": ["13700137000"], "text": "x", "valid_for": 259201}, headers=AUTH)
    assert too_long.status_code == 422 and too_long.get_json()["errors"][0]["pointer"] == "/valid_for"


def test_the_callers_callback_hears_of_a_recipient_that_expired(api, runtime, simulator, receiver):
    from tests.conftest import Receiver

    sim_admin(simulator, "config", frozen=True)
    body = {
        "to": ["13800138000"],
        "text": "验证码 123456",
        "priority": "high",
        "valid_for": 1,
        "callback_url": receiver,
    }
    mid = send(api, body)["id"]
    drain(runtime)
    time.sleep(1.2)
    maintenance.run_once(runtime)
    drain(runtime)
    events = [e for _, b in Receiver.bodies for e in b["events"]]
    assert [(e["message_id"], e["type"], e["state"], e["mobile"]) for e in events] == [
        (mid, "recipient.final", "expired", "13800138000")
    ]
