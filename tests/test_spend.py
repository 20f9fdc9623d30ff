"""Spend limits per account and China day (issue 21 §4): what fits is sent, the rest waits
with the account held, never sent past the limit and never failed."""

from __future__ import annotations

import time

from gateway import create_app
from tests.conftest import AUTH, drain, sim_submissions
from workers import accounts, maintenance
from workers.settings import settings_from_env
from workers.storage import schema


def test_a_daily_limit_of_5_parts_sends_5_and_holds_the_rest_saying_why(settings_env, runtime, simulator):
    env = {**settings_env, "SMSGW_DAILY_LIMIT": "5", "SMSGW_DAILY_WARN": "3"}
    runtime.settings = settings_from_env(env)
    api = create_app(runtime.settings).test_client()
    mids = []
    for i in range(7):
        r = api.post("/v1/messages", json={"to": [f"1380013800{i}"], "text": "您的订单已发货"}, headers=AUTH)
        mids.append(r.get_json()["id"])
    drain(runtime)
    sent = [m for s in sim_submissions(simulator) for m in s["mobiles"]]
    assert len(sent) == 5 and len(set(sent)) == 5
    states = [api.get(f"/v1/messages/{m}", headers=AUTH).get_json() for m in mids]
    held = [s for s in states if s["chunks"][0]["state"] == "held"]
    assert len(held) == 2 and not [s for s in states if s["status"] == "failed"]
    account = accounts.state(runtime.conn, "default")
    assert account.state == "held" and account.code == accounts.DAILY_LIMIT and "daily limit of 5" in account.reason
    assert runtime.conn.hget("sg:alerts", "daily_spend_warning") == b"1"
    assert accounts.spent_today(runtime.conn, "default", time.time()) == 5
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'smsgw_account_parts_today{account="default"} 5.0' in metrics

    # The next China day (its counter starts at 0): the account resumes by itself, the rest goes.
    runtime.conn.delete(schema.spend_key("default", schema.usage_day(time.time())))
    maintenance.run_once(runtime)
    drain(runtime)
    assert len([m for s in sim_submissions(simulator) for m in s["mobiles"]]) == 7
    assert simulator.state.summary()["repeated_linkids"] == {}


def test_a_refused_call_gives_its_parts_back(settings_env, runtime, simulator):
    from tests.conftest import sim_admin

    runtime.settings = settings_from_env({**settings_env, "SMSGW_DAILY_LIMIT": "3"})
    api = create_app(runtime.settings).test_client()
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[6])
    api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH)
    drain(runtime)
    assert simulator.state.calls["post_send_md5"] == 1
    assert accounts.spent_today(runtime.conn, "default", time.time()) == 0  # refused: not billed
