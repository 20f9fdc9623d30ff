"""Coalescing (issue 12): many one-recipient requests, one provider submission.

Everything runs for real: the API's accept, the pools in our Redis, the claim, the plan, the
send to the simulator over loopback, reports pulled back. ``drain`` flushes pools at once (the
window is tested on its own); the crash test uses real worker processes.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from gateway import create_app
from tests.conftest import AUTH, carrier, drain, sim_admin, sim_submissions, wait_for
from tests.test_reports import pull_all
from workers import accounts, coalesce, lifecycle, maintenance, reports
from workers.runtime import Runtime
from workers.settings import settings_from_env
from workers.storage import schema


def send(api, body, headers=None) -> str:
    r = api.post("/v1/messages", json=body, headers={**AUTH, **(headers or {})})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def view(api, mid):
    return api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()


def no_linkid_twice(simulator) -> None:
    assert sim_admin(simulator, "config")["repeated_linkids"] == {}


def test_one_text_to_many_phones_is_one_submission_and_each_message_gets_its_own_report(api, runtime, simulator):
    sim_admin(simulator, "config", undelivered_share=0.3)
    mobiles = [f"1380000{i:04d}" for i in range(50)]
    mids = {send(api, {"to": [m], "text": "您的订单已发货"}): m for m in mobiles}
    drain(runtime)
    [sub] = sim_submissions(simulator)
    assert sorted(sub["mobiles"]) == sorted(mobiles) and set(sub["texts"]) == {"您的订单已发货"}
    pull_all(runtime)
    states = Counter()
    for mid, mobile in mids.items():
        v = view(api, mid)
        [chunk] = v["chunks"]
        assert chunk["linkid"] == sub["linkid"] and chunk["recipients"] == 1
        assert chunk["submission_recipients"] == 50
        [row] = api.get(f"/v1/messages/{mid}/recipients", headers=AUTH).get_json()["items"]
        assert row["mobile"] == mobile and row["linkid"] == sub["linkid"]
        assert v["status"] == row["state"]  # the message's state is its one recipient's report
        assert v["recipients"]["by_state"] == {row["state"]: 1}
        states[row["state"]] += 1
    assert set(states) == {"delivered", "undelivered"} and sum(states.values()) == 50
    assert runtime.conn.hget(schema.COUNTS, "reports") == b"50"
    no_linkid_twice(simulator)


def test_a_pushed_report_costs_the_same_in_a_batch_of_any_size(api, runtime, simulator):
    """Reports pushed one at a time are applied one ingest each: each looks up the member it
    names, not every member of its batch (which cost Redis members² reads a batch; issue 24)."""
    from tests.test_reports import push

    def commands_a_report(size: int) -> float:
        mobiles = [f"13{size:03d}00{i:04d}" for i in range(size)]
        for m in mobiles:
            send(api, {"to": [m], "text": f"批次 {size}"})
        drain(runtime)
        [sub] = [s for s in sim_submissions(simulator) if set(s["texts"]) == {f"批次 {size}"}]
        runtime.conn.config_resetstat()
        for m in mobiles:
            form = {"Class": "rpt", "SmsName": "test", "Mobile": m, "LinkId": sub["linkid"]}
            assert push(api, {**form, "Report": "DELIVRD", "ReportTime": "2026-12-05 10:00:00"}).status_code == 200
            while reports.ingest(runtime):
                pass
        stats = runtime.conn.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_config|resetstat") / size

    small, large = commands_a_report(5), commands_a_report(60)
    assert large <= small * 1.2 and large < 30, (small, large)  # members² made it 120+ at 60


def test_reports_waiting_together_are_merged_in_one_script_call(api, runtime, simulator):
    """Forty reports in the inbox: forty merges in one script call, not a call each (a call's own
    cost was more than its merge; issue 24) nor a round trip each; each counted and applied as
    alone."""
    from tests.test_reports import push

    mobiles = [f"1350000{i:04d}" for i in range(40)]
    mids = {send(api, {"to": [m], "text": "一起"}): m for m in mobiles}
    drain(runtime)
    [sub] = [s for s in sim_submissions(simulator) if set(s["texts"]) == {"一起"}]
    for m in mobiles:
        form = {"Class": "rpt", "SmsName": "test", "Mobile": m, "LinkId": sub["linkid"]}
        assert push(api, {**form, "Report": "DELIVRD", "ReportTime": "2026-12-05 10:00:00"}).status_code == 200
    runtime.conn.config_resetstat()
    assert reports.ingest(runtime) == 40  # the inbox's entries, a push each
    stats = runtime.conn.info("commandstats")
    evalsha = stats["cmdstat_evalsha"]  # a first call on this server fails NOSCRIPT, then loads it
    assert evalsha["calls"] - evalsha["failed_calls"] == 1, stats
    assert all(view(api, mid)["status"] == "delivered" for mid in mids)
    assert runtime.conn.hget(schema.COUNTS, "reports_delivered") == b"40"


def test_more_reports_than_a_script_call_takes_go_in_several_calls_answered_in_order(runtime, monkeypatch):
    """Past :data:`reports.MERGE_GROUP` the merges split into calls (a script holds Redis while
    it runs), sent in one pipeline; the answers come back in order."""
    from workers.storage.codecs import ReportValue

    monkeypatch.setattr(reports, "MERGE_GROUP", 3)
    for i in range(7):
        runtime.conn.hset(schema.message_key(f"m{i}"), "st", "sending")
    merging = [
        reports._Merging("r", f"m{i}", f"1380013800{i}", ReportValue(schema.ReportState.DELIVERED, "DELIVRD", "9"), 7)
        for i in range(7)
    ]
    runtime.conn.config_resetstat()
    outs = reports._merge_all(runtime, merging)
    assert [out[0] for out in outs] == [1] * 6 + [2]  # in order: the seventh is the chunk's last
    assert runtime.conn.info("commandstats")["cmdstat_evalsha"]["calls"] == 3


def test_a_phone_is_at_most_once_in_a_submission(api, runtime, simulator):
    for mobile in ["13800138000"] * 3 + ["13900139000", "13700137000"]:
        send(api, {"to": [mobile], "text": "same"})
    drain(runtime)
    subs = sim_submissions(simulator)
    assert all(len(set(s["mobiles"])) == len(s["mobiles"]) for s in subs)
    assert sum(s["mobiles"].count("13800138000") for s in subs) == 3 and len(subs) == 3
    assert sum(len(s["mobiles"]) for s in subs) == 5
    no_linkid_twice(simulator)


def test_texts_and_priorities_do_not_mix(api, runtime, simulator):
    send(api, {"to": ["13800138000"], "text": "a"})
    send(api, {"to": ["13800138001"], "text": "a", "priority": "bulk"})
    send(api, {"to": ["13800138002"], "text": "b"})
    send(api, {"to": ["13800138003"], "text": "a"})
    drain(runtime)
    groups = sorted(sorted(s["mobiles"]) for s in sim_submissions(simulator))
    assert groups == [["13800138000", "13800138003"], ["13800138001"], ["13800138002"]]


def test_a_cancelled_message_leaves_the_submission_before_it_is_sent_never_after(api, runtime, simulator):
    mids = [send(api, {"to": [f"1380013800{i}"], "text": "sale"}) for i in range(3)]
    assert coalesce.flush_due(runtime, now=float("inf")) == 1  # one batch, planned, not yet sent
    answer = api.delete(f"/v1/messages/{mids[1]}", headers=AUTH)
    assert answer.status_code == 200 and answer.get_json()["status"] == "cancelled"
    drain(runtime)
    [sub] = sim_submissions(simulator)
    assert sorted(sub["mobiles"]) == ["13800138000", "13800138002"]
    assert [view(api, m)["status"] for m in mids] == ["submitted", "cancelled", "submitted"]
    assert api.delete(f"/v1/messages/{mids[0]}", headers=AUTH).status_code == 409  # sent: too late


def test_a_cancel_before_the_claim_never_reaches_a_batch(api, runtime, simulator):
    mid = send(api, {"to": ["13800138000"], "text": "x"})
    assert api.delete(f"/v1/messages/{mid}", headers=AUTH).status_code == 200
    drain(runtime)
    assert sim_submissions(simulator) == [] and view(api, mid)["status"] == "cancelled"
    assert runtime.conn.zcard(schema.POOLS) == 0


def test_answer_3_splits_the_submission_and_every_message_follows_its_half(api, runtime, simulator):
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[3])
    mids = {send(api, {"to": [f"1380013800{i}"], "text": "x"}): f"1380013800{i}" for i in range(4)}
    drain(runtime)
    subs = sim_submissions(simulator)
    assert sorted(len(s["mobiles"]) for s in subs) == [2, 2]
    by_mobile = {m: s["linkid"] for s in subs for m in s["mobiles"]}
    for mid, mobile in mids.items():
        [chunk] = view(api, mid)["chunks"]  # the half that carried it, not the split one
        assert chunk["state"] == "submitted" and chunk["linkid"] == by_mobile[mobile]
        assert view(api, mid)["status"] == "submitted"
    assert accounts.chunk_size(runtime.conn, runtime.settings, "default") == 2
    no_linkid_twice(simulator)


def test_a_hold_on_answer_2_parks_the_submission_and_a_top_up_sends_it_once(api, runtime, simulator):
    sim_admin(simulator, "config", balance=0)
    mids = [send(api, {"to": [f"1380013800{i}"], "text": "x"}) for i in range(3)]
    drain(runtime)
    assert [view(api, m)["chunks"][0]["state"] for m in mids] == ["held"] * 3
    assert sim_submissions(simulator) == []
    sim_admin(simulator, "config", balance=100)
    runtime.conn.hset(schema.account_key("default"), "checked", 0)
    assert maintenance.run_once(runtime)["resumed"] == 1  # one submission carries all three
    drain(runtime)
    [sub] = sim_submissions(simulator)
    assert len(sub["mobiles"]) == 3 and [view(api, m)["status"] for m in mids] == ["submitted"] * 3


def test_an_ambiguous_answer_on_a_normal_submission_waits_for_reports_and_never_resends(api, runtime, simulator):
    sim_admin(simulator, "fault", endpoint="post_send_md5", accept=True, times=1, mode="http", status=502)
    mids = [send(api, {"to": [f"1380013800{i}"], "text": "x"}) for i in range(3)]
    drain(runtime, until=lambda: view(api, mids[0])["chunks"][0]["state"] == "unconfirmed", timeout=30)
    pull_all(runtime)
    drain(runtime)
    [sub] = sim_submissions(simulator)
    assert [view(api, m)["status"] for m in mids] == ["delivered"] * 3
    assert {view(api, m)["chunks"][0]["linkid"] for m in mids} == {sub["linkid"]}


def test_an_ambiguous_answer_on_a_high_submission_resends_under_a_new_linkid_counted(api, runtime, simulator):
    sim_admin(simulator, "fault", endpoint="post_send_md5", accept=True, times=1, mode="garbage")
    mids = [send(api, {"to": [f"1380013800{i}"], "text": "code", "priority": "high"}) for i in range(3)]
    drain(runtime, timeout=30)
    subs = sim_submissions(simulator)
    assert len(subs) == 2 and subs[0]["linkid"] != subs[1]["linkid"]
    assert sorted(subs[0]["mobiles"]) == sorted(subs[1]["mobiles"])
    [chunk] = view(api, mids[0])["chunks"]
    assert chunk["possible_duplicates"] == 1 and chunk["linkid"] == subs[1]["linkid"]
    assert runtime.conn.hget(schema.COUNTS, "possible_duplicates") == b"1"  # one submission, counted once
    for linkid in (s["linkid"] for s in subs):  # a report on either linkid reaches the messages
        assert runtime.conn.get(schema.linkid_key(linkid)) == carrier(runtime.conn, mids[0])


def test_one_idempotency_key_is_one_recipient_in_the_submission(api, runtime, simulator):
    first = send(api, {"to": ["13800138000"], "text": "x"}, {"Idempotency-Key": "k1"})
    again = send(api, {"to": ["13800138000"], "text": "x"}, {"Idempotency-Key": "k1"})
    drain(runtime)
    assert first == again and [s["mobiles"] for s in sim_submissions(simulator)] == [["13800138000"]]


def test_replies_reach_the_message_of_the_phone_that_replied(api, runtime, simulator):
    mids = {send(api, {"to": [m], "text": "rate us"}): m for m in ("13800138000", "13900139000")}
    drain(runtime)
    [sub] = sim_submissions(simulator)
    sim_admin(simulator, "reply", mobile="13900139000", content="5 stars", linkid=sub["linkid"])
    pull_all(runtime)
    for mid, mobile in mids.items():
        texts = [r["text"] for r in view(api, mid)["replies"]]
        assert texts == (["5 stars"] if mobile == "13900139000" else [])


def test_a_template_is_one_ddt_submission_with_each_phones_values(api, runtime, simulator):
    for i in range(3):
        body = {
            "template": "验证码{code}，5分钟内有效",
            "recipients": [{"to": f"1380013800{i}", "vars": {"code": f"00{i}"}}],
        }
        send(api, body)
    drain(runtime)
    [sub] = sim_submissions(simulator)
    assert sub["endpoint"].startswith("post_send_ddt")
    assert sorted(sub["texts"]) == [f"验证码00{i}，5分钟内有效" for i in range(3)]


def test_plain_texts_that_differ_ride_one_ddt_as_value0_when_the_account_opts_in(settings_env, runtime, simulator):
    api = create_app(settings_from_env({**settings_env, "SMSGW_PROVIDER_COALESCE_PLAIN": "1"})).test_client()
    texts = {f"1380013800{i}": f"您的验证码是{1000 + i}。请勿告诉他人！" for i in range(3)}
    mids = {send(api, {"to": [m], "text": t, "priority": "high"}): m for m, t in texts.items()}
    comma = send(api, {"to": ["13900139000"], "text": "验证码 1234, 请勿外传", "priority": "high"})
    drain(runtime)
    [ddt] = [s for s in sim_submissions(simulator) if "ddt" in s["endpoint"]]
    assert dict(zip(ddt["mobiles"], ddt["texts"], strict=True)) == texts  # exactly the caller's texts
    [plain] = [s for s in sim_submissions(simulator) if "ddt" not in s["endpoint"]]
    assert plain["mobiles"] == ["13900139000"] and plain["texts"] == ["验证码 1234, 请勿外传"]
    for mid in [*mids, comma]:
        v = view(api, mid)
        assert v["status"] == "submitted" and v["text"] == "[redacted]"  # high: codes are dropped
        assert v["text_length"] == len(texts.get(mids.get(mid, ""), "验证码 1234, 请勿外传"))
    batch, _ = carrier(runtime.conn, next(iter(mids))).decode().rsplit(":", 1)
    for key in runtime.conn.scan_iter(match=schema.chunk_key(batch, "*")):
        assert b"1000" not in runtime.conn.hget(key, schema.Chunk.field_of("items"))  # codes gone


def test_a_full_pool_leaves_at_once_and_a_partial_one_waits_its_window(settings_env, runtime, simulator):
    env = {**settings_env, "SMSGW_COALESCE_MS_NORMAL": "60000", "SMSGW_PROVIDER_CHUNK_SIZE": "3"}
    api = create_app(settings_from_env(env)).test_client()
    worker = Runtime.from_settings(settings_from_env(env))  # API and workers share the settings
    for i in range(4):
        send(api, {"to": [f"1380013800{i}"], "text": "x"})
    assert coalesce.flush_due(worker) == 1  # three: full, gone now; the fourth waits a minute
    assert coalesce.flush_due(worker) == 0
    [pool] = runtime.conn.zrange(schema.POOLS, 0, -1, withscores=True)
    assert pool[1] > time.time() + 50
    assert coalesce.flush_due(worker, now=pool[1]) == 1


def test_an_idle_coalescer_waits_for_a_pool_and_a_new_one_wakes_it_at_once(
    settings_env, runtime, simulator, monkeypatch
):
    """With no pool at all a coalescer blocks on the accept's token instead of looking at the
    pools every 50 ms (an idle fleet's largest share of Redis's work); the pool an accept makes
    wakes it at once, not at the end of its wait (made long here, so only the token can)."""
    monkeypatch.setattr(coalesce, "WAIT_NEW", 30.0)
    env = {**settings_env, "SMSGW_COALESCE_MS_HIGH": "100", "SMSGW_REDIS_SOCKET_TIMEOUT": "120"}
    api = create_app(settings_from_env(env)).test_client()
    worker = Runtime.from_settings(settings_from_env(env))
    thread, stop = coalesce.start(worker)
    try:
        time.sleep(0.3)  # its first look: nothing there
        runtime.conn.config_resetstat()
        time.sleep(2.0)
        calls = sum(int(v["calls"]) for v in runtime.conn.info("commandstats").values())
        assert calls <= 2, runtime.conn.info("commandstats")  # waiting, not looking (80 when it polled)
        t0 = time.monotonic()
        send(api, {"to": ["13800138000"], "text": "您的验证码是123456", "priority": "high"})
        assert runtime.conn.zcard(schema.POOLS) == 1
        wait_for(lambda: runtime.conn.zcard(schema.POOLS) == 0, timeout=10, what="the claim")
        assert time.monotonic() - t0 < 2.0  # its window and a claim
    finally:
        stop.set()
        runtime.conn.lpush(schema.POOLS_NEW, 1)  # what a new pool does: the wait ends, and the loop
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_the_first_coalescer_woken_wakes_the_others_while_pools_wait(settings_env, runtime, simulator, monkeypatch):
    """One token wakes one coalescer; finding pools, it passes the token on, so the whole quiet
    fleet is looking within moments, not one coalescer alone until the others' waits end."""
    monkeypatch.setattr(coalesce, "WAIT_NEW", 30.0)
    env = {**settings_env, "SMSGW_COALESCE_MS_HIGH": "3000", "SMSGW_REDIS_SOCKET_TIMEOUT": "120"}
    api = create_app(settings_from_env(env)).test_client()
    started = [coalesce.start(Runtime.from_settings(settings_from_env(env))) for _ in range(3)]

    def waiting() -> int:
        return int(runtime.conn.info("clients")["blocked_clients"])

    try:
        wait_for(lambda: waiting() == 3, timeout=5, what="three coalescers waiting")
        send(api, {"to": ["13800138000"], "text": "您的验证码是123456", "priority": "high"})
        wait_for(lambda: waiting() == 0, timeout=2, what="every coalescer looking")  # the pool waits 3 s
    finally:
        for _, stop in started:
            stop.set()
        for _ in started:
            runtime.conn.lpush(schema.POOLS_NEW, 1)
        for thread, _ in started:
            thread.join(timeout=10)
    assert not any(thread.is_alive() for thread, _ in started)


def test_the_window_is_the_accepting_processes_not_the_claiming_ones(settings_env, runtime, simulator):
    """A worker configured with another window must not re-date sends it leaves in a pool: each
    entry carries the time its own API process gave it."""
    env = {**settings_env, "SMSGW_COALESCE_MS_NORMAL": "60000", "SMSGW_PROVIDER_CHUNK_SIZE": "3"}
    api = create_app(settings_from_env(env)).test_client()
    worker = Runtime.from_settings(settings_from_env({**env, "SMSGW_COALESCE_MS_NORMAL": "1"}))
    for i in range(4):
        send(api, {"to": [f"1380013800{i}"], "text": "x"})
    assert coalesce.flush_due(worker) == 1  # the full three leave; the fourth stays
    [pool] = runtime.conn.zrange(schema.POOLS, 0, -1, withscores=True)
    assert pool[1] > time.time() + 50  # the API's minute, not the worker's millisecond
    assert coalesce.flush_due(worker) == 0


def test_bulk_pools_that_spend_the_pace_never_hold_back_a_high_one(settings_env, runtime, simulator):
    """Issue 12 §1: a ``high`` submission never waits behind bulk. Ten different bulk texts are
    due together with one verification code, on an account of 5 calls a second: the bulk
    pools spend the pace the non-high share allows this second, and the code still leaves."""
    env = {**settings_env, "SMSGW_PROVIDER_RATE": "5", "SMSGW_COALESCE_MS_BULK": "1", "SMSGW_COALESCE_MS_HIGH": "1"}
    api = create_app(settings_from_env(env)).test_client()
    worker = Runtime.from_settings(settings_from_env(env))
    bulk = [send(api, {"to": [f"1380013800{i}"], "text": f"促销 {i}", "priority": "bulk"}) for i in range(10)]
    time.sleep(0.01)
    code = send(api, {"to": ["13900139000"], "text": "验证码 1234", "priority": "high"})
    time.sleep(int(time.time()) + 1.75 - time.time())  # 3/4 into a second: 4 bulk shares are open
    second = int(time.time())
    for _ in range(3):  # bulk, due first, takes the shared pace; more coalescer ticks change nothing
        coalesce.flush_due(worker, now=float("inf"))
    end = time.time()
    one_second = int(end) == second  # a slow machine may cross into the next one

    def planned(mid: str) -> bool:
        return runtime.conn.hget(schema.message_key(mid), schema.Message.field_of("state")) != b"accepted"

    assert planned(code)
    sent_bulk = [m for m in bulk if planned(m)]
    assert accounts.rate_limit("bulk", 5) == 4
    if one_second:
        assert len(sent_bulk) == 4  # the bulk share of this second; the rest grow until the next
        assert accounts.take_pace(runtime.conn, "default", 5, end, "high")  # high's own share is left
        assert not accounts.take_pace(runtime.conn, "default", 5, end, "bulk")
    else:
        assert 1 <= len(sent_bulk) <= 8  # four shares in each of the two seconds at most


def test_an_expired_or_vanished_member_is_dropped_by_the_claim(api, runtime, simulator):
    keep = send(api, {"to": ["13800138000"], "text": "x"})
    gone = send(api, {"to": ["13800138001"], "text": "x"})
    runtime.conn.delete(schema.message_key(gone))  # its retention ended before any worker ran
    drain(runtime)
    assert [s["mobiles"] for s in sim_submissions(simulator)] == [["13800138000"]]
    assert view(api, keep)["status"] == "submitted"


@pytest.mark.parametrize("sends", [2, 1])
def test_a_coalescer_that_dies_after_its_claim_leaves_a_batch_the_sweeper_plans(api, runtime, simulator, sends):
    """Two sends make a batch; one alone is claimed as itself. Either way the claim leaves it on
    the sweeper's watch, and the sweeper plans what the dead coalescer did not."""
    from workers.sweeper import sweep

    mids = [send(api, {"to": [f"1380013800{i}"], "text": "x"}) for i in range(sends)]
    [pool] = runtime.conn.zrange(schema.POOLS, 0, -1)
    planned = coalesce.claim(runtime, pool.decode())  # claimed, and the process died before planning
    assert planned and runtime.conn.zcard(pool) == 0
    assert planned.startswith("b") == (sends > 1)
    assert sweep(runtime.conn, runtime.settings, time.time() + runtime.settings.job_grace_seconds + 1) == 1
    drain(runtime)
    [sub] = sim_submissions(simulator)
    assert len(sub["mobiles"]) == sends and [view(api, m)["status"] for m in mids] == ["submitted"] * sends
    no_linkid_twice(simulator)


def test_a_send_alone_in_its_pool_goes_as_its_own_message_not_in_a_batch_of_one(api, runtime, simulator):
    """A batch of one would only add keys: the message, its chunk, its history, per send."""
    mid = send(api, {"to": ["13800138000"], "text": "只有我"})
    drain(runtime)
    assert carrier(runtime.conn, mid) == f"{mid}:0".encode()
    assert list(runtime.conn.scan_iter(match=schema.message_key("b*"))) == []
    [sub] = sim_submissions(simulator)
    assert sub["mobiles"] == ["13800138000"] and sub["texts"] == ["只有我"]
    shown = view(api, mid)
    assert shown["status"] == "submitted" and [c["linkid"] for c in shown["chunks"]] == [sub["linkid"]]


@pytest.mark.slow
def test_a_worker_killed_mid_call_on_a_batch_loses_nothing_and_repeats_no_linkid(api, workers, simulator, runtime):
    victim = workers.start("victim")
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=3, times=1)
    mids = [send(api, {"to": [f"1380013800{i}"], "text": "hi"}) for i in range(5)]

    def submitting() -> bool:
        chunks = view(api, mids[0])["chunks"]
        return bool(chunks) and chunks[0]["state"] == "submitting"

    wait_for(submitting, what="the batch's call to start")
    # Killed mid-call: once the call has reached the provider (it answers 3 s later). The chunk
    # reads submitting just before the call leaves, and a kill in between is another case (the
    # call never made: sent again under a new linkid once the report window ends).
    wait_for(lambda: sim_admin(simulator, "config")["calls"].get("post_send_md5", 0) >= 1, what="the call to arrive")
    workers.kill(victim)
    workers.start("rescuer")
    wait_for(
        lambda: all(view(api, m)["status"] in ("submitted", "delivered") for m in mids),
        timeout=90,
        what="every message submitted after the crash",
    )
    subs = sim_submissions(simulator)
    assert len(subs) == 1 and sorted(subs[0]["mobiles"]) == [f"1380013800{i}" for i in range(5)]
    no_linkid_twice(simulator)
    [chunk] = view(api, mids[0])["chunks"]
    assert "awaiting_report" in [h["event"] for h in chunk["history"]]


@pytest.mark.slow
def test_sends_from_two_api_processes_leave_together_when_the_window_ends(settings_env, workers, simulator, runtime):
    """Two app instances and one real worker: the pool and its due time live in Redis, so the
    window and the batch span API processes and worker hosts."""
    workers.start("w1")
    env = {**settings_env, "SMSGW_COALESCE_MS_HIGH": "2000"}
    apis = [create_app(settings_from_env(env)).test_client() for _ in range(2)]
    started = time.monotonic()
    for i in range(6):
        send(apis[i % 2], {"to": [f"1380013800{i}"], "text": "otp", "priority": "high"})
    wait_for(lambda: sum(len(s["mobiles"]) for s in sim_submissions(simulator)) == 6, timeout=30, what="sent")
    waited = time.monotonic() - started
    assert len(sim_submissions(simulator)) == 1
    assert 1.9 < waited < 5.0, waited  # the window, then at once


# -- one caller's refused text never fails another's message (issue 19) -------------------------


def two_keyed(settings_env, **env: str):
    from tests.conftest import API_KEY, OTHER_KEY

    keys = {"SMSGW_API_KEYS": f"tester:{API_KEY},other:{OTHER_KEY}"}
    return create_app(settings_from_env({**settings_env, **keys, **env})).test_client()


def test_a_shared_template_refused_for_one_keys_value_fails_only_that_message(settings_env, runtime, simulator):
    from tests.conftest import THEIRS

    api = two_keyed(settings_env)
    template = "您好{name}，您的订单已发货"
    culprit = send(api, {"template": template, "recipients": [{"to": "13800138000", "vars": {"name": "开发票"}}]})
    innocents = [
        send(
            api, {"template": template, "recipients": [{"to": f"1390013900{i}", "vars": {"name": f"客户{i}"}}]}, THEIRS
        )
        for i in range(3)
    ]
    drain(runtime)
    assert view(api, culprit)["status"] == "failed"
    assert "sensitive" in view(api, culprit)["chunks"][0]["reason"]
    sent = {m for s in sim_submissions(simulator) for m in s["mobiles"]}
    assert sent == {f"1390013900{i}" for i in range(3)}
    for mid in innocents:
        v = api.get(f"/v1/messages/{mid}", headers=THEIRS).get_json()
        assert v["status"] == "submitted", v
    assert runtime.conn.hget(schema.COUNTS, "culprit_splits") is not None
    no_linkid_twice(simulator)


def test_a_shared_submission_refused_as_too_long_fails_only_the_long_one(settings_env, runtime, simulator):
    from tests.conftest import THEIRS

    sim_admin(simulator, "config", max_chars=20)  # the channel is shorter than smsgw was told
    api = two_keyed(settings_env)
    template = "您好{name}"
    long_one = send(api, {"template": template, "recipients": [{"to": "13800138000", "vars": {"name": "长" * 30}}]})
    short_one = send(api, {"template": template, "recipients": [{"to": "13900139000", "vars": {"name": "王"}}]}, THEIRS)
    drain(runtime)
    assert view(api, long_one)["status"] == "failed"
    assert api.get(f"/v1/messages/{short_one}", headers=THEIRS).get_json()["status"] == "submitted"
    assert [s["mobiles"] for s in sim_submissions(simulator)] == [["13900139000"]]
    no_linkid_twice(simulator)


def test_plain_texts_on_one_ddt_refused_for_one_text_fail_only_that_one(settings_env, runtime, simulator):
    from tests.conftest import THEIRS

    api = two_keyed(settings_env, SMSGW_PROVIDER_COALESCE_PLAIN="1")
    culprit = send(api, {"to": ["13800138000"], "text": "验证码1234，赌博", "priority": "high"})
    fine = send(api, {"to": ["13900139000"], "text": "验证码5678", "priority": "high"}, THEIRS)
    drain(runtime)
    assert view(api, culprit)["status"] == "failed"
    assert api.get(f"/v1/messages/{fine}", headers=THEIRS).get_json()["status"] == "submitted"
    no_linkid_twice(simulator)


def test_a_template_refused_for_its_own_words_fails_every_member_at_once(settings_env, runtime, simulator):
    api = two_keyed(settings_env)
    mids = [
        send(api, {"template": "开发票{name}", "recipients": [{"to": f"1380013800{i}", "vars": {"name": "x"}}]})
        for i in range(4)
    ]
    drain(runtime)
    assert [view(api, m)["status"] for m in mids] == ["failed"] * 4
    assert simulator.state.calls["post_send_ddt"] == 1  # everyone's fault: no search


class ReadNothing:
    """A connection that fails the test if anything is read through it."""

    def pipeline(self, *args, **kwargs):
        raise AssertionError("a member was read for its redaction")


def test_a_batch_of_codes_redacts_its_members_without_reading_them(api, runtime, simulator):
    """Every member redacted (high): the batch says so (2) and each member got its text's length
    when claimed, so the final write reads no member (issue 24: five writes a member were two);
    a batch that mixes kept and redacted texts reads its members, and keeps the kept ones."""
    codes = [send(api, {"to": [f"1380013800{i}"], "text": "您的验证码已发送", "priority": "high"}) for i in range(3)]
    coalesce.flush_due(runtime, time.time() + 60)
    batch, _ = carrier(runtime.conn, codes[0]).decode().rsplit(":", 1)
    assert runtime.conn.hget(schema.message_key(batch), "rd") == b"2"
    read = lifecycle._member_texts
    lifecycle._member_texts = lambda conn, chunk: read(ReadNothing(), chunk)  # type: ignore[assignment]
    try:
        drain(runtime)
    finally:
        lifecycle._member_texts = read
    for mid in codes:
        v = view(api, mid)
        assert v["status"] == "submitted" and v["text"] == "[redacted]" and v["text_length"] == len("您的验证码已发送")
    kept = send(api, {"to": ["13900139001"], "text": "晚上好", "redact": False})
    gone = send(api, {"to": ["13900139002"], "text": "晚上好", "redact": True})
    coalesce.flush_due(runtime, time.time() + 60)
    mixed, _ = carrier(runtime.conn, kept).decode().rsplit(":", 1)
    assert runtime.conn.hget(schema.message_key(mixed), "rd") == b"1"
    drain(runtime)
    assert view(api, kept)["text"] == "晚上好" and view(api, gone)["text"] == "[redacted]"
    assert view(api, gone)["text_length"] == 3
