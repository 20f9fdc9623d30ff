"""Issue 11's guardrails that are built: full-width digits, billable parts, signatures, answer 6."""

from __future__ import annotations

import hashlib

import pytest

from gateway import create_app
from tests.conftest import AUTH, drain, sim_admin, sim_submissions, stored_values, waiting
from workers.mobiles import normalise
from workers.settings import settings_from_env
from workers.text import billable_parts


def test_full_width_digits_from_a_chinese_input_method_are_normalised():
    assert normalise("１３８００１３８０００") == "13800138000"
    assert normalise("＋８６ １３８－００１３－８０００") == "13800138000"
    assert normalise("١٣٨٠٠١٣٨٠٠٠") is None  # other scripts' digits stay invalid


@pytest.mark.parametrize(("length", "parts"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (500, 8)])
def test_billable_parts(length, parts):
    assert billable_parts("字" * length) == parts


def test_the_answer_and_the_message_show_billable_parts(settings_env, runtime):
    api = create_app(settings_from_env({**settings_env, "SMSGW_MAX_CHARS": "500"})).test_client()
    r = api.post("/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "x" * 100}, headers=AUTH)
    assert r.status_code == 202 and r.get_json()["billable_parts"] == 4
    assert api.get(r.headers["Location"], headers=AUTH).get_json()["billable_parts"] == 4
    body = {
        "template": "{a}",
        "recipients": [{"to": "13800138000", "vars": {"a": "x"}}, {"to": "13900139000", "vars": {"a": "y" * 80}}],
    }
    assert api.post("/v1/messages", json=body, headers=AUTH).get_json()["billable_parts"] == 3


def signed_app(settings_env, mode: str):
    env = {**settings_env, "SMSGW_SIGNATURE": "【某某科技】", "SMSGW_SIGNATURE_MODE": mode, "SMSGW_MAX_CHARS": "20"}
    return create_app(settings_from_env(env)).test_client()


def test_a_required_signature_is_refused_naming_it_when_missing(settings_env, runtime):
    api = signed_app(settings_env, "require")
    missing = api.post("/v1/messages", json={"to": ["13800138000"], "text": "您好"}, headers=AUTH)
    assert missing.status_code == 422 and "【某某科技】" in missing.get_json()["errors"][0]["detail"]
    assert (
        api.post("/v1/messages", json={"to": ["13800138000"], "text": "【某某科技】您好"}, headers=AUTH).status_code
        == 202
    )
    two = api.post("/v1/messages", json={"to": ["13800138000"], "text": "【某某科技】您好【别家】"}, headers=AUTH)
    assert two.status_code == 422 and "signatures" in two.get_json()["errors"][0]["detail"]


def test_an_appended_signature_is_sent_and_counted_in_the_length(settings_env, runtime, simulator):
    api = signed_app(settings_env, "append")
    assert api.post("/v1/messages", json={"to": ["13800138000"], "text": "您好"}, headers=AUTH).status_code == 202
    too_long = api.post("/v1/messages", json={"to": ["13800138000"], "text": "字" * 15}, headers=AUTH)
    assert too_long.status_code == 422  # 15 + 6 > 20
    drain(runtime)
    assert [s["texts"][0] for s in sim_submissions(simulator)] == ["您好【某某科技】"]


def test_answer_6_fails_the_chunk_with_the_words_and_never_retries(api, runtime, simulator):
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[6])
    r = api.post("/v1/messages", json={"to": ["13800138000"], "text": "开发票找我"}, headers=AUTH)
    drain(runtime)
    [chunk] = api.get(r.headers["Location"], headers=AUTH).get_json()["chunks"]
    assert chunk["state"] == "failed" and chunk["attempts"] == 1
    assert "sensitive" in chunk["reason"] and "发票" in chunk["reason"]
    assert sim_submissions(simulator) == []


# -- frequency caps ---------------------------------------------------------------------------


def app_with(settings_env, **env):
    return create_app(settings_from_env({**settings_env, **env})).test_client()


def code(api, mobile="13800138000"):
    r = api.post("/v1/messages", json={"to": [mobile], "text": "验证码 1234", "priority": "high"}, headers=AUTH)
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def test_the_default_high_cap_allows_one_code_a_minute(api, runtime):
    assert code(api)["recipients"]["suppressed"] == []
    second = code(api)
    assert second["status"] == "suppressed" and second["recipients"]["suppressed"] == [
        {"mobile": "13800138000", "reason": "frequency_cap"}
    ]
    assert code(api, "13900139000")["recipients"]["suppressed"] == []  # another phone, its own budget


def test_the_5th_code_in_an_hour_goes_and_the_6th_is_suppressed(settings_env, runtime, simulator):
    api = app_with(settings_env, SMSGW_MOBILE_CAPS_HIGH="5/3600")
    answers = [code(api) for _ in range(6)]
    assert [a["status"] for a in answers] == ["accepted"] * 5 + ["suppressed"]
    drain(runtime)
    assert len(sim_submissions(simulator)) == 5  # the suppressed one is neither sent nor charged
    view = api.get(f"/v1/messages/{answers[5]['id']}", headers=AUTH).get_json()
    assert view["status"] == "suppressed" and view["recipients"]["by_state"] == {"suppressed": 1}


def test_a_code_checks_its_cap_inside_its_accept_in_one_round_trip(api, runtime):
    def evalsha() -> int:
        return int(runtime.conn.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    code(api, "13700137000")  # scripts loaded, the day's index dated
    before = evalsha()
    assert code(api)["status"] == "accepted"
    assert evalsha() - before == 1  # caps and accept together (they were two scripts)
    assert runtime.conn.get("sg:cap:default:high:13800138000")


def test_a_code_over_its_cap_is_stored_suppressed_and_its_parts_go_back(settings_env, runtime):
    api = app_with(settings_env, SMSGW_KEY_TESTER_DAILY="2")
    assert code(api)["status"] == "accepted"
    capped = code(api)  # over the cap inside its accept: stored suppressed, its part not charged
    assert capped["status"] == "suppressed" and capped["billable_parts"] == 0
    assert capped["recipients"]["suppressed"] == [{"mobile": "13800138000", "reason": "frequency_cap"}]
    view = api.get(f"/v1/messages/{capped['id']}", headers=AUTH).get_json()
    assert view["status"] == "suppressed" and view["recipients"]["by_state"] == {"suppressed": 1}
    assert code(api, "13900139000")["status"] == "accepted"  # the quota's second part was given back
    assert api.get("/v1/usage", headers=AUTH).get_json()["limits"]["daily_parts_left"] == 0


def test_a_cap_handed_to_an_accept_that_makes_no_pool_is_still_checked(runtime):
    """``messages.accept`` checks a cap it is given even for a send that does not join a pool
    (here a scheduled one), before it stores anything."""
    from datetime import UTC, datetime, timedelta

    from gateway import messages
    from gateway.validation import Accepted
    from workers import guardrails
    from workers.storage import schema

    settings = runtime.settings
    at = datetime.now(UTC) + timedelta(minutes=5)

    def scheduled(mid: str) -> dict:
        msg = Accepted(kind="t", account="default", text="码 1", items=["13800138000"], duplicates=0, item_parts=[1])
        msg.send_at = at
        caps = guardrails.caps_for(
            settings, account="default", priority="high", mobiles=["13800138000"], ref=mid, at=at.timestamp()
        )
        options = {"priority": "high", "reference": None, "callback_url": None, "key_name": "tester"}
        return messages.accept(runtime, mid, msg, chunk_size=1000, caps=caps, **options)

    assert scheduled(schema.new_message_id())["status"] == "scheduled"
    second = schema.new_message_id()
    with pytest.raises(messages.Capped):
        scheduled(second)
    assert not runtime.conn.exists(schema.message_key(second))


def test_a_request_keeps_its_other_recipients_when_one_is_capped(api, runtime):
    code(api)
    r = api.post(
        "/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "x", "priority": "high"}, headers=AUTH
    )
    body = r.get_json()
    assert body["recipients"]["accepted"] == 1 and body["recipients"]["suppressed"][0]["mobile"] == "13800138000"


def test_an_empty_setting_turns_caps_off(settings_env, runtime):
    api = app_with(settings_env, SMSGW_MOBILE_CAPS_HIGH="")
    assert [code(api)["status"] for _ in range(3)] == ["accepted"] * 3


def test_two_codes_accepted_a_minute_apart_for_the_same_moment_cannot_both_go(api, runtime):
    import time
    from datetime import UTC, datetime

    from workers import guardrails

    moment = time.time() + 300
    # The first was accepted 61 s ago for that moment (the cap counts it at the moment it goes).
    first = guardrails.check(
        runtime.conn,
        runtime.settings,
        account="default",
        priority="high",
        mobiles=["13800138000"],
        ref="earlier",
        at=moment,
        now=time.time() - 61,
    )
    assert first == []
    body = {"to": ["13800138000"], "text": "验证码 1234", "priority": "high"}
    second = {**body, "send_at": datetime.fromtimestamp(moment + 1, UTC).isoformat()}
    assert api.post("/v1/messages", json=second, headers=AUTH).get_json()["status"] == "suppressed"
    assert code(api)["status"] == "accepted"  # a code now is five minutes from the scheduled one


def test_a_test_key_never_uses_up_a_real_users_cap(settings_env, runtime):
    from tests.conftest import API_KEY, OTHER_KEY

    keys = f"tester:{API_KEY},other:{OTHER_KEY}"
    api = app_with(settings_env, SMSGW_API_KEYS=keys, SMSGW_TEST_KEYS="other")
    test_send = {"to": ["13800138000"], "text": "验证码 1234", "priority": "high"}
    assert api.post("/v1/messages", json=test_send, headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 202
    assert code(api)["status"] == "accepted"  # the real user's first code of the minute


def test_a_request_refused_with_429_gives_its_cap_slots_back(settings_env, runtime):
    api = app_with(settings_env, SMSGW_KEY_TESTER_DAILY="1", SMSGW_MOBILE_CAPS_NORMAL="1/60")
    two = {"to": ["13800138000", "13900139000"], "text": "x"}
    assert api.post("/v1/messages", json=two, headers=AUTH).status_code == 429  # 2 parts > 1
    one = api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH)
    assert one.status_code == 202 and one.get_json()["status"] == "accepted"


def test_the_daily_quota_starts_at_midnight_in_china(settings_env, runtime):
    from gateway.problems import Problem
    from gateway.quotas import Quotas, next_china_midnight
    from workers.settings import settings_from_env

    key = next(k for k in settings_from_env({**settings_env, "SMSGW_KEY_TESTER_DAILY": "3"}).api_keys)
    quotas = Quotas(runtime)
    before = 1_767_196_799.0  # 2025-12-31 23:59:59 in China
    quotas.take_parts(key, 3, now=before)
    with pytest.raises(Problem) as refused:
        quotas.take_parts(key, 1, now=before)
    assert refused.value.headers["Retry-After"]
    assert next_china_midnight(before) == before + 1
    quotas.take_parts(key, 3, now=before + 1)  # a new day in China: a full quota


# -- opt-outs ----------------------------------------------------------------------------------


def test_a_pulled_td_reply_suppresses_normal_but_not_high(api, runtime, simulator):
    from tests.test_reports import pull_all

    sim_admin(simulator, "reply", mobile="13800138000", content=" td ", linkid="")
    pull_all(runtime)
    normal = api.post("/v1/messages", json={"to": ["13800138000"], "text": "促销"}, headers=AUTH).get_json()
    assert normal["status"] == "suppressed" and normal["recipients"]["suppressed"][0]["reason"] == "opted_out"
    assert code(api)["status"] == "accepted"  # a code the person asked for still goes
    listed = api.get("/v1/suppressions", headers=AUTH).get_json()["items"]
    assert [i["mobile"] for i in listed] == ["13800138000"] and "td" in listed[0]["reason"]


def test_a_pushed_reply_opts_out_too(api, runtime):
    from urllib.parse import urlencode

    from workers import reports

    query = urlencode({"Class": "mo", "Mobile": "13900139000", "Message": "退订", "SmsName": "test"}, encoding="gb2312")
    assert api.get(f"/callbacks/provider/push-secret-123?{query}").status_code == 200
    while reports.ingest(runtime):
        pass
    r = api.post("/v1/messages", json={"to": ["13900139000"], "text": "活动"}, headers=AUTH).get_json()
    assert r["recipients"]["suppressed"] == [{"mobile": "13900139000", "reason": "opted_out"}]


def test_suppressions_can_be_added_listed_and_removed(api, runtime):
    assert (
        api.post(
            "/v1/suppressions", json={"mobile": "+86 137-0013-7000", "reason": "asked by phone"}, headers=AUTH
        ).status_code
        == 201
    )
    assert api.post("/v1/suppressions", json={"mobile": "12345"}, headers=AUTH).status_code == 422
    items = api.get("/v1/suppressions", headers=AUTH).get_json()["items"]
    assert items[0]["mobile"] == "13700137000" and items[0]["reason"] == "asked by phone"
    assert api.delete("/v1/suppressions/13700137000", headers=AUTH).status_code == 200
    assert api.delete("/v1/suppressions/13700137000", headers=AUTH).status_code == 404
    assert api.get("/v1/suppressions", headers=AUTH).get_json()["items"] == []


def test_a_bulk_text_without_the_opt_out_hint_is_refused(settings_env, runtime):
    api = app_with(settings_env, SMSGW_OPTOUT_HINT="回T退订")
    body = {"to": ["13800138000"], "text": "大促销", "priority": "bulk"}
    r = api.post("/v1/messages", json=body, headers=AUTH)
    assert r.status_code == 422 and "回T退订" in r.get_json()["errors"][0]["detail"]
    assert api.post("/v1/messages", json={**body, "text": "大促销 回T退订"}, headers=AUTH).status_code == 202
    assert api.post("/v1/messages", json={**body, "priority": "normal"}, headers=AUTH).status_code == 202


def test_suppressions_csv_import_and_export(settings_env, redis_conn, tmp_path):
    import os
    import subprocess
    import sys

    csv_in = tmp_path / "in.csv"
    csv_in.write_text(
        "mobile,reason\n13800138000,complaint\nnot-a-mobile,x\n１３９００１３９０００,\n", encoding="utf-8"
    )
    env = {**os.environ, **settings_env}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "suppressions", *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "2 suppressed, 1 invalid" in run("import", str(csv_in))
    exported = run("export").splitlines()
    assert exported[0] == "mobile,reason,source,at"
    assert sorted(line.split(",")[0] for line in exported[1:]) == ["13800138000", "13900139000"]


# -- per key: rate, daily quota, usage ---------------------------------------------------------


def test_over_the_rate_is_429_with_retry_after_and_nothing_queued(settings_env, runtime):
    api = app_with(settings_env, SMSGW_KEY_TESTER_RATE="2", SMSGW_KEY_TESTER_BURST="3", SMSGW_MOBILE_CAPS_HIGH="")
    answers = [api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH) for _ in range(5)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    refused = answers[3]
    assert refused.mimetype == "application/problem+json" and 1 <= int(refused.headers["Retry-After"]) <= 2
    assert waiting(runtime.conn) == 3


def test_the_daily_quota_counts_billable_parts(settings_env, runtime):
    api = app_with(settings_env, SMSGW_KEY_TESTER_DAILY="5", SMSGW_MAX_CHARS="300")
    three = {"to": ["13800138000", "13900139000", "13700137000"], "text": "x"}
    assert api.post("/v1/messages", json=three, headers=AUTH).status_code == 202  # 3 parts
    over = api.post("/v1/messages", json=three, headers=AUTH)  # 3 more would be 6
    assert (
        over.status_code == 429 and int(over.headers["Retry-After"]) > 0 and "daily quota" in over.get_json()["detail"]
    )
    two_parts = {"to": ["13800138000"], "text": "x" * 100}
    assert api.post("/v1/messages", json=two_parts, headers=AUTH).status_code == 202  # the refusal took nothing
    usage = api.get("/v1/usage", headers=AUTH).get_json()
    assert usage["limits"]["daily_parts_left"] == 0
    today = usage["days"][-1]
    assert (today["requests"], today["recipients"], today["parts"], today["suppressed"]) == (2, 4, 5, 0)


def test_usage_is_the_keys_own_by_day(api, runtime):
    api.post("/v1/messages", json={"to": ["13800138000"], "text": "x", "priority": "high"}, headers=AUTH)
    api.post("/v1/messages", json={"to": ["13800138000"], "text": "x", "priority": "high"}, headers=AUTH)  # capped
    [day] = api.get("/v1/usage", headers=AUTH).get_json()["days"]
    assert (day["requests"], day["recipients"], day["suppressed"]) == (2, 1, 1)
    assert api.get("/v1/usage?from=2026-01-01&to=2026-12-31", headers=AUTH).status_code == 400


# -- test mode ---------------------------------------------------------------------------------


def test_a_test_key_goes_through_everything_but_the_provider(settings_env, runtime, simulator, receiver):
    from tests.conftest import Receiver
    from tests.test_reports import pull_all
    from workers.jobs import TEST_NO_REPORT, TEST_UNDELIVERED

    api = app_with(settings_env, SMSGW_TEST_KEYS="tester")
    body = {"to": ["13800138000", TEST_UNDELIVERED, TEST_NO_REPORT], "text": "集成测试", "callback_url": receiver}
    answer = api.post("/v1/messages", json=body, headers=AUTH).get_json()
    assert answer["test"] is True
    drain(runtime)
    pull_all(runtime)  # ingests the simulated reports
    drain(runtime, timeout=30)
    view = api.get(f"/v1/messages/{answer['id']}", headers=AUTH).get_json()
    assert view["test"] is True and view["chunks"][0]["state"] == "submitted"
    assert view["recipients"]["by_state"] == {"submitted": 1, "delivered": 1, "undelivered": 1}
    events = sorted((e["mobile"], e["state"]) for _, b in Receiver.bodies for e in b["events"])
    assert events == [("13800138000", "delivered"), (TEST_UNDELIVERED, "undelivered")]
    assert sim_submissions(simulator) == [] and simulator.state.calls.get("post_send_md5", 0) == 0
    metrics = api.get("/metrics").get_data(as_text=True)
    assert "smsgw_provider_calls_total{" not in metrics  # nothing counted as a provider call


# -- codes are not kept ------------------------------------------------------------------------


def test_a_high_code_is_dropped_from_redis_once_sent(api, runtime, simulator):
    r = api.post(
        "/v1/messages", json={"to": ["13800138000"], "text": "验证码 482913", "priority": "high"}, headers=AUTH
    )
    mid = r.get_json()["id"]
    drain(runtime)
    view = api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()
    assert view["text"] == "[redacted]" and view["text_length"] == 10 and "text_sha256" not in view
    dump = stored_values(runtime.conn, f"sg:*{mid}*")
    assert b"482913" not in dump and "验证码".encode() not in dump
    assert hashlib.sha256("验证码 482913".encode()).digest() not in dump  # no digest to reverse either
    assert sim_submissions(simulator)[0]["texts"] == ["验证码 482913"]  # it was sent first


def test_a_high_text_never_sent_is_redacted_too(api, runtime, simulator):
    """Suppressed by a cap, cancelled while scheduled, cancelled in its pool: final without a
    send, and the code's text is gone all the same."""
    from datetime import UTC, datetime, timedelta

    def stored(mid: str) -> bytes:
        return stored_values(runtime.conn, f"sg:*{mid}*")

    first = {"to": ["13800138000"], "text": "验证码 482913", "priority": "high"}
    assert api.post("/v1/messages", json=first, headers=AUTH).status_code == 202
    capped = api.post("/v1/messages", json={**first, "text": "验证码 771205"}, headers=AUTH).get_json()
    assert capped["status"] == "suppressed" and b"771205" not in stored(capped["id"])
    view = api.get(f"/v1/messages/{capped['id']}", headers=AUTH).get_json()
    assert view["text"] == "[redacted]" and view["text_length"] == 10

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = {"to": ["13900139000"], "text": "验证码 559301", "priority": "high", "send_at": later}
    mid = api.post("/v1/messages", json=scheduled, headers=AUTH).get_json()["id"]
    assert b"559301" in stored(mid)  # kept until it is sent or ends
    assert api.delete(f"/v1/messages/{mid}", headers=AUTH).status_code == 200
    assert b"559301" not in stored(mid)

    pooled = {"to": ["13700137000"], "text": "验证码 640017", "priority": "high"}
    mid = api.post("/v1/messages", json=pooled, headers=AUTH).get_json()["id"]
    assert api.delete(f"/v1/messages/{mid}", headers=AUTH).status_code == 200
    assert b"640017" not in stored(mid)


def test_redact_drops_template_variables_and_normal_texts_stay(api, runtime, simulator):
    body = {
        "template": "您的验证码{code}",
        "recipients": [{"to": "13800138000", "vars": {"code": "771122"}}],
        "redact": True,
    }
    mid = api.post("/v1/messages", json=body, headers=AUTH).get_json()["id"]
    plain = api.post("/v1/messages", json={"to": ["13900139000"], "text": "发货通知"}, headers=AUTH).get_json()["id"]
    drain(runtime)
    dump = stored_values(runtime.conn, f"sg:*{mid}*")
    assert b"13800138000" in dump and b"771122" not in dump
    assert api.get(f"/v1/messages/{plain}", headers=AUTH).get_json()["text"] == "发货通知"


# -- low balance -------------------------------------------------------------------------------


def test_the_low_balance_alert_fires_once_per_crossing(settings_env, redis_conn, simulator):
    import time

    from workers import maintenance
    from workers.runtime import Runtime
    from workers.storage import schema

    rt = Runtime.from_settings(settings_from_env({**settings_env, "SMSGW_LOW_BALANCE": "1000"}))
    api = create_app(rt.settings).test_client()
    now = time.time()

    def tick(balance: int, minutes: int) -> None:
        sim_admin(simulator, "config", balance=balance)
        maintenance.run_once(rt, now=now + 61 * minutes + 1)

    for minute, balance in enumerate([5000, 900, 800, 700, 1500, 2000, 500]):
        tick(balance, minute)
    alerts = {k.decode(): int(v) for k, v in redis_conn.hgetall(schema.ALERTS).items()}
    assert alerts.get("balance_low") == 2 and alerts.get("balance_recovered") == 1
    assert simulator.state.calls["user_info"] == 7  # one call a minute, no more
    assert 'smsgw_account_balance_low{account="default"} 1.0' in api.get("/metrics").get_data(as_text=True)


def test_a_balance_that_runs_out_within_the_runway_at_the_last_hours_pace_alerts_once(
    settings_env, redis_conn, simulator
):
    import time

    from workers import maintenance
    from workers.runtime import Runtime
    from workers.storage import schema

    rt = Runtime.from_settings(settings_from_env({**settings_env, "SMSGW_BALANCE_RUNWAY_HOURS": "24"}))
    api = create_app(rt.settings).test_client()
    now = time.time()
    # The balance is refreshed every 5 minutes: 1 000 spent each time is 12 000 an hour, over 80
    # hours left; then half of it goes in a few minutes, and what is left lasts well under a day.
    for step, balance in enumerate([1_000_000, 999_000, 998_000, 997_000]):
        sim_admin(simulator, "config", balance=balance)
        maintenance.run_once(rt, now=now + 301 * step)
    assert redis_conn.hget(schema.ALERTS, "balance_runway_short") is None
    for step, balance in enumerate([500_000, 490_000, 480_000], start=4):
        sim_admin(simulator, "config", balance=balance)
        maintenance.run_once(rt, now=now + 301 * step)
    alerts = {k.decode(): int(v) for k, v in redis_conn.hgetall(schema.ALERTS).items()}
    assert alerts.get("balance_runway_short") == 1 and "balance_runway_ok" not in alerts
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'smsgw_account_balance_runway_short{account="default"} 1.0' in metrics
    hours = float(redis_conn.hget(schema.account_key("default"), "rw"))
    assert 0 < hours < 24


# -- content check -----------------------------------------------------------------------------


def test_content_check_refuses_naming_the_words_or_flags_them(settings_env, runtime, simulator, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# ours\n加微信\n", encoding="utf-8")
    refuse = app_with(settings_env, SMSGW_CONTENT_CHECK="refuse", SMSGW_CONTENT_WORDS_FILE=str(words))
    r = refuse.post("/v1/messages", json={"to": ["13800138000"], "text": "开发票加微信"}, headers=AUTH)
    assert (
        r.status_code == 422
        and "发票" in r.get_json()["errors"][0]["detail"]
        and "加微信" in r.get_json()["errors"][0]["detail"]
    )
    assert refuse.post("/v1/messages", json={"to": ["13800138000"], "text": "您好"}, headers=AUTH).status_code == 202
    high = {"to": ["13800138000"], "text": "发票验证码 1", "priority": "high"}
    assert refuse.post("/v1/messages", json=high, headers=AUTH).status_code == 422  # high is checked too
    in_a_value = {"template": "您好{name}", "recipients": [{"to": "13800138000", "vars": {"name": "开发票"}}]}
    r = refuse.post("/v1/messages", json={**in_a_value, "priority": "high"}, headers=AUTH)
    assert r.status_code == 422 and r.get_json()["errors"][0]["pointer"] == "/recipients"
    code = {"template": "验证码{code}", "recipients": [{"to": "13800138000", "vars": {"code": "123456"}}]}
    calls = dict(simulator.state.calls)
    assert refuse.post("/v1/messages", json={**code, "priority": "high"}, headers=AUTH).status_code == 202
    assert refuse.post("/v1/messages", json={**code, "priority": "high"}, headers=AUTH).status_code == 202
    assert simulator.state.calls["mgz"] - calls.get("mgz", 0) == 1  # the template, cached; digits cost no call
    flag = app_with(settings_env, SMSGW_CONTENT_CHECK="flag")
    mid = flag.post("/v1/messages", json={"to": ["13900139000"], "text": "赌博"}, headers=AUTH).get_json()["id"]
    assert flag.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["flagged_words"] == ["赌博"]


# -- daily statistics --------------------------------------------------------------------------


def test_daily_statistics_per_key_and_account_as_json_csv_and_on_the_dashboard(settings_env, runtime, simulator):
    import base64
    import os
    import subprocess
    import sys

    from tests.test_reports import pull_all

    env = {**settings_env, "SMSGW_OPERATOR_PASSWORD": "operator-pass-123"}
    api = create_app(settings_from_env(env)).test_client()
    sim_admin(simulator, "config", undelivered_share=0.0)
    api.post("/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "x"}, headers=AUTH)
    drain(runtime)
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[5])
    api.post("/v1/messages", json={"to": ["13700137000"], "text": "y"}, headers=AUTH)
    drain(runtime)
    pull_all(runtime)
    [day] = api.get("/v1/usage", headers=AUTH).get_json()["days"]
    assert {k: day[k] for k in ("requests", "recipients", "delivered", "failed")} == {
        "requests": 2,
        "recipients": 3,
        "delivered": 2,
        "failed": 1,
    }
    csv_out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "usage", "--account", "default"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert csv_out[0].startswith("day,requests,recipients,parts") and csv_out[-1].split(",")[1:3] == ["2", "3"]
    operator = {"Authorization": "Basic " + base64.b64encode(b"operator:operator-pass-123").decode()}
    page = api.get("/dashboard/", headers=operator).get_data(as_text=True)
    assert 'id="usage"' in page and "<td>tester</td>" in page


def test_metrics_count_accepted_parts_and_suppressed_recipients(settings_env, runtime):
    api = app_with(settings_env, SMSGW_MAX_CHARS="300")
    api.post("/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "x" * 100}, headers=AUTH)
    code(api)
    code(api)  # capped
    text = api.get("/metrics").get_data(as_text=True)
    assert 'smsgw_accepted_total{unit="recipients"} 3.0' in text and 'smsgw_accepted_total{unit="parts"} 5.0' in text
    assert "smsgw_suppressed_recipients_total 1.0" in text


def test_concurrent_twins_with_one_idempotency_key_take_one_cap_slot(settings_env, runtime):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from werkzeug.serving import make_server

    app = create_app(settings_from_env({**settings_env, "SMSGW_MOBILE_CAPS_HIGH": "5/3600"}))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}/v1/messages"
    body = {"to": ["13800138000"], "text": "验证码 1", "priority": "high"}

    def twin(_: int) -> int:
        return requests.post(url, json=body, headers={**AUTH, "Idempotency-Key": "once"}, timeout=30).status_code

    try:
        with ThreadPoolExecutor(10) as pool:
            assert set(pool.map(twin, range(10))) <= {202, 409}
        fresh = [requests.post(url, json=body, headers=AUTH, timeout=30).json()["status"] for _ in range(5)]
    finally:
        server.shutdown()
    assert fresh == ["accepted"] * 4 + ["suppressed"]  # the ten twins used one slot of five


# -- opt-out replies as people type them (MIIT order 31) --------------------------------------

REFUSALS = [
    "T", "t", "TD", "td", "Td", " TD ", "退订", "取消", "N", "n", "R",
    "退订。", "退订！", "退订!", "退订.", "退订~", "退订～", "退订…", "【退订】", "“退订”", "退订🙏",
    "ＴＤ", "ｔｄ", "Ｔ", "ｎ", "ＴＤ。",
    "退訂", "退 订", "退\u3000订", "\u200b退订", "退\u200b订", "退订\ufeff", "t d",
    "回复退订", "回覆退訂", "回复TD", "请退订", "我要退订", "麻烦退订",
    "退订谢谢", "退订，谢谢", "退订 谢谢", "退订了", "取消吧", "谢谢",  # the last: not a refusal (below)
    "TD退订", "T退订", "退订TD", "td退订。",
]  # fmt: skip
NOT_REFUSALS = [
    "谢谢", "不要退订了", "不退订", "别退订", "好的", "收到", "OK", "TDD", "TNT", "退订会员卡怎么办",
    "怎么退订", "我的验证码是多少", "1", "Y", "是", "取消订单", "已取消", "", "   ", "TD TD TD 不要",
    "退订退订退订", "回复", "T恤", "退订单",
]  # fmt: skip


@pytest.mark.parametrize("reply", [r for r in REFUSALS if r != "谢谢"])
def test_a_refusal_typed_any_common_way_opts_out(reply):
    from tests.conftest import make_settings
    from workers.guardrails import is_optout

    assert is_optout(make_settings(), reply), repr(reply)


@pytest.mark.parametrize("reply", NOT_REFUSALS)
def test_a_reply_that_is_not_a_refusal_keeps_the_messages_coming(reply):
    from tests.conftest import make_settings
    from workers.guardrails import is_optout

    assert not is_optout(make_settings(), reply), repr(reply)


def test_the_table_holds_forty_real_world_replies_each_way():
    assert len(REFUSALS) - 1 + len(NOT_REFUSALS) >= 40 and len(NOT_REFUSALS) >= 20


def test_replies_typed_as_people_do_stop_the_next_bulk_send(settings_env, runtime, simulator):
    from tests.test_reports import pull_all

    api = app_with(settings_env, SMSGW_OPTOUT_HINT="")
    replies = {"13800138001": "退订。", "13800138002": "ＴＤ", "13800138003": "退订谢谢", "13800138004": "回复退订"}
    for mobile, content in replies.items():
        sim_admin(simulator, "reply", mobile=mobile, content=content, linkid="")
    pull_all(runtime)
    body = {"to": [*replies, "13800138005"], "text": "双十二促销，回T退订", "priority": "bulk"}
    answer = api.post("/v1/messages", json=body, headers=AUTH).get_json()
    assert sorted(s["mobile"] for s in answer["recipients"]["suppressed"]) == sorted(replies)
    assert answer["recipients"]["accepted"] == 1
