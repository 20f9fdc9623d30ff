"""Every Lua script on its own, against our real Redis: what it reads, writes and returns,
failure branches included (rq's ``tests/test_scripts.py`` does the same for its own)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway import messages
from workers import guardrails
from workers.storage import scripts
from workers.storage.schema import ChunkState, Message, MessageState, ReportState

ROOT = Path(__file__).resolve().parent.parent


def test_redis_call_is_written_in_one_production_module():
    holders = {
        str(path.relative_to(ROOT))
        for top in ("gateway", "workers", "devkit")
        for path in (ROOT / top).rglob("*.py")
        if "redis.call" in path.read_text()
    }
    assert holders == {"workers/storage/scripts.py"}


def test_every_script_is_tested_here():
    source = Path(__file__).read_text()
    assert set(scripts.ALL) == {"ACCEPT", "CLAIM_POOL", "CAPS", "UNCAP", "LEASE", "MERGE_REPORTS", "STORE_REPLY",
                                "CLAIM_DUE", "SETTLE_CALLBACKS", "SWITCH_ROUTE",
                                "SETTLE_VERIFICATION"}  # fmt: skip
    for name in scripts.ALL:
        assert f"def test_{name.lower()}_" in source, name


def test_a_script_refuses_unknown_and_missing_arguments(redis_conn):
    with pytest.raises(TypeError, match="unknown"):
        scripts.LEASE(redis_conn, lease="l", owner="a", ttl_ms=1000, colour="red")
    with pytest.raises(TypeError, match="missing"):
        scripts.LEASE(redis_conn, lease="l", owner="a")


# -- ACCEPT ------------------------------------------------------------------------------------


def accept_args(**over):
    args = {
        "fence": "f",
        "message": "m",
        "index": "idx",
        "idempotency": "",
        "pool": "",
        "pools": "pools",
        "woken": "woken",
        "ttl": 100,
        "index_min_ms": 0,
        "index_ttl": 100,
        "idem_value": "",
        "idem_ttl": 10,
        "pool_entry": "",
        "pool_size": 3,
        "pool_due": "5.000",
        "fields": json.dumps({"st": "accepted"}),
        "id_ms": str(int("19a00000000", 16)),
        "id_random": str(int("0123456789ab", 16)),  # of "19a000000000123456789ab"
        "date_index": 1,
        **guardrails.Caps.NONE,
    }
    return {**args, **over}


def test_accept_writes_the_message_and_its_index_once(redis_conn):
    assert scripts.ACCEPT(redis_conn, **accept_args(idempotency="idem", idem_value="answer")) == 0
    assert redis_conn.hgetall("m") == {b"st": b"accepted"} and 0 < redis_conn.ttl("m") <= 100
    [(_, [(_, entry)])] = redis_conn.xread({"idx": 0})
    assert entry == {b"n": str(0x0123456789AB).encode(), b"t": str(0x19A00000000 % 2**20).encode()}
    for late in (0, 1, 7 * 60_000, -7 * 60_000):  # dated by Redis, up to 8 minutes from the id's time
        assert messages._indexed(f"{0x19A00000000 + late}-0", entry) == "19a000000000123456789ab"
    assert messages._indexed(f"{0x19A00000000}-0", {b"m": b"0123456789ab"}) == "19a000000000123456789ab"  # older
    assert redis_conn.get("idem") == b"answer" and 0 < redis_conn.ttl("idx") <= 100
    redis_conn.delete("m")
    redis_conn.set("m", "other")
    assert scripts.ACCEPT(redis_conn, **accept_args()) == 0  # a second run writes nothing again
    assert redis_conn.get("m") == b"other" and redis_conn.xlen("idx") == 1


def test_accept_dates_the_index_only_when_asked(redis_conn):
    assert scripts.ACCEPT(redis_conn, **accept_args()) == 0
    redis_conn.expire("idx", 50)  # as if the day's first request had been a while ago
    assert scripts.ACCEPT(redis_conn, **accept_args(message="m2", date_index=0)) == 0
    assert redis_conn.ttl("idx") <= 50  # not written again
    # The day's first in a process, or a message scheduled past the index's end, pushes it out.
    assert scripts.ACCEPT(redis_conn, **accept_args(message="m3", index_ttl=900)) == 0
    assert 800 < redis_conn.ttl("idx") <= 900
    assert scripts.ACCEPT(redis_conn, **accept_args(message="m4", index_ttl=100)) == 0
    assert 800 < redis_conn.ttl("idx") <= 900  # never shortened


def test_accept_stores_nothing_behind_a_fence(redis_conn):
    redis_conn.set("f", 1)
    assert scripts.ACCEPT(redis_conn, **accept_args()) == -1
    assert not redis_conn.exists("m", "idx")


def test_accept_joins_a_pool_and_a_full_pool_is_due_at_once(redis_conn):
    for i in range(3):
        args = accept_args(message=f"m{i}", pool="pool", pool_entry=f"m{i}|1380013800{i}")
        assert scripts.ACCEPT(redis_conn, **args) == i + 1
        due = redis_conn.zscore("pools", "pool")
        assert due == (0 if i == 2 else 5.0)
        assert redis_conn.lrange("woken", 0, -1) == [b"1"]  # the new pool's token, and only one
    redis_conn.delete("woken")
    assert scripts.ACCEPT(redis_conn, **accept_args(message="m3", pool="pool", pool_entry="m3|13800138003")) == 4
    assert not redis_conn.exists("woken")  # a pool that was there already wakes no one
    for i in range(3):  # new pools, one token however many
        assert scripts.ACCEPT(redis_conn, **accept_args(message=f"n{i}", pool=f"p{i}", pool_entry=f"n{i}|1")) == 1
    assert redis_conn.lrange("woken", 0, -1) == [b"1"]


def test_accept_checks_a_cap_first_and_stores_nothing_over_it(redis_conn):
    cap = {"cap_now": 1000, "cap_at": 1000, "cap_longest": 60, "cap_windows": [1, 60]}
    args = accept_args(pool="pool", pool_entry="m|13800138000", cap="c1", cap_tag="ab1", **cap)
    assert scripts.ACCEPT(redis_conn, **args) == 1
    assert redis_conn.get("c1") == b"ab11000" and redis_conn.exists("m")
    again = accept_args(message="m2", pool="pool", pool_entry="m2|13800138000", cap="c1", cap_tag="ab2", **cap)
    assert scripts.ACCEPT(redis_conn, **again) == messages.CAPPED
    assert redis_conn.get("c1") == b"ab11000"  # not recorded
    assert not redis_conn.exists("m2") and redis_conn.zcard("pool") == 1 and redis_conn.xlen("idx") == 1
    redis_conn.delete("m")
    redis_conn.set("m", "other")  # a second run of the first: finds it, records nothing again
    assert scripts.ACCEPT(redis_conn, **args) == 0 and redis_conn.get("c1") == b"ab11000"


def test_accept_dates_the_index_by_redis(redis_conn):
    assert scripts.ACCEPT(redis_conn, **accept_args()) == 0
    at, _ = redis_conn.xrevrange("idx", count=1)[0]
    assert abs(int(at.split(b"-")[0]) - time.time() * 1000) < 5000


# -- CLAIM_POOL --------------------------------------------------------------------------------


def claim_args(**over):
    args = {
        "pool": "pool",
        "pools": "pools",
        "batch": "sg:m:b1",
        "watch": "watch",
        "size": 2,
        "message_prefix": "sg:m:",
        "now": "10.000",
        "batch_id": "b1",
        "mode": "t",
        "fields": json.dumps(Message.FIELDS),
        "grace": 5,
        "ttl": 100,
        "account": "default",
        "priority": "normal",
        "batch_ref": "m:b1",
        "member_ref_prefix": "m:",
        "scan_factor": 3,
        "accepted": MessageState.ACCEPTED,
        "sending": MessageState.SENDING,
    }
    return {**args, **over}


def member(redis_conn, mid, mobile, score, state=MessageState.ACCEPTED):
    redis_conn.hset(f"sg:m:{mid}", mapping=Message.short(state=state, text="hi"))
    redis_conn.zadd("pool", {f"{mid}|{mobile}": score})


def test_claim_pool_takes_the_oldest_once_per_mobile_into_a_batch(redis_conn):
    member(redis_conn, "a", "13800138000", 1)
    member(redis_conn, "b", "13800138000", 2)  # the same phone: waits for the next batch
    member(redis_conn, "c", "13900139000", 3)
    member(redis_conn, "d", "13700137000", 4)
    redis_conn.zadd("pools", {"pool": 1})
    assert scripts.CLAIM_POOL(redis_conn, **claim_args()) == b"b1"
    batch = Message.load(redis_conn, "b1")
    assert batch.mids == "a;c" and batch.items == "13800138000;13900139000" and batch.text == "hi"
    assert Message.load(redis_conn, "a").state == MessageState.SENDING and Message.load(redis_conn, "a").via == "b1"
    assert redis_conn.zrange("pool", 0, -1) == [b"b|13800138000", b"d|13700137000"]
    assert redis_conn.zscore("pools", "pool") == 0  # what is left fills a batch: due now
    assert redis_conn.zscore("watch", "m:b1") == 15


def test_claim_pool_returns_a_lone_send_as_itself_and_drops_an_empty_pool(redis_conn):
    member(redis_conn, "a", "13800138000", 1)
    member(redis_conn, "x", "13900139000", 2, state=MessageState.CANCELLED)
    redis_conn.zadd("pools", {"pool": 1})
    assert scripts.CLAIM_POOL(redis_conn, **claim_args()) == b"a"
    assert not redis_conn.exists("sg:m:b1", "pool") and redis_conn.zscore("pools", "pool") is None
    assert redis_conn.zscore("watch", "m:a") == 15
    assert scripts.CLAIM_POOL(redis_conn, **claim_args()) is None  # nothing left to take


# -- CAPS --------------------------------------------------------------------------------------


def test_caps_record_a_send_and_refuse_within_a_window_either_side(redis_conn):
    caps = {"longest": 60, "windows": [1, 60]}
    assert scripts.CAPS(redis_conn, caps=["c1", "c2"], now=1000, at=1300, tag="ab1", **caps) == [0, 0]
    assert redis_conn.get("c1") == b"ab11300" and 355 <= redis_conn.ttl("c1") <= 360
    assert scripts.CAPS(redis_conn, caps=["c1"], now=1001, at=1250, tag="ab2", **caps) == [1]  # 50 s before
    assert scripts.CAPS(redis_conn, caps=["c1"], now=1002, at=1002, tag="ab3", **caps) == [0]  # 298 s before
    assert redis_conn.get("c1") == b"ab11300,ab31002" and redis_conn.ttl("c1") >= 355  # the latest send's


def test_caps_record_a_first_send_in_one_command_and_leave_a_refused_one_as_it_was(redis_conn):
    """Most codes go to a mobile with no send in its windows: that is one SET … GET. A send
    over a cap writes back what was there, with its own lifetime."""
    caps = {"longest": 60, "windows": [1, 60]}
    redis_conn.config_resetstat()
    assert scripts.CAPS(redis_conn, caps=["c1"], now=1000, at=1000, tag="ab1", **caps) == [0]
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in redis_conn.info("commandstats").items()}
    assert (calls.get("set"), calls.get("get")) == (1, None), calls
    redis_conn.set("c2", "ab1990,ab2700", ex=50)
    assert scripts.CAPS(redis_conn, caps=["c2"], now=1000, at=1000, tag="ab3", **caps) == [1]
    assert redis_conn.get("c2") == b"ab1990,ab2700" and 45 <= redis_conn.ttl("c2") <= 50


def test_caps_forget_what_is_older_than_the_longest_window(redis_conn):
    redis_conn.set("c1", "old100,new990")
    assert scripts.CAPS(redis_conn, caps=["c1"], now=1000, at=1000, tag="r", longest=60, windows=[2, 60]) == [0]
    assert redis_conn.get("c1") == b"new990,r1000"


def test_caps_read_an_older_sorted_set_and_replace_it(redis_conn):
    redis_conn.zadd("c1", {"19a0000000012345678901a": 990, "19a0000000012345678901b": 10})
    assert scripts.CAPS(redis_conn, caps=["c1"], now=1000, at=1000, tag="r", longest=60, windows=[1, 60]) == [1]
    assert scripts.CAPS(redis_conn, caps=["c1"], now=1100, at=1100, tag="r", longest=60, windows=[1, 60]) == [0]
    assert redis_conn.get("c1") == b"r1100"


def test_uncap_gives_one_send_back_by_its_tag(redis_conn):
    redis_conn.set("c1", "ab11300,ab21400,ab11500", ex=100)
    redis_conn.set("c2", "ab11300")
    redis_conn.zadd("c3", {"x": 1})  # an older smsgw's: left as it is
    scripts.UNCAP(redis_conn, caps=["c1", "c2", "c3", "c4"], tag="ab1")
    assert redis_conn.get("c1") == b"ab21400,ab11500" and 0 < redis_conn.ttl("c1") <= 100
    assert not redis_conn.exists("c2") and redis_conn.zcard("c3") == 1


def test_a_mobiles_one_send_is_an_integer_redis_keeps_in_its_object_header(redis_conn):
    """A code's cap costs 88 bytes a mobile for its day: its tag is digits, so one send is 13
    digits, an integer to Redis. A hex tag made it text, which took the allocation of the Lua
    engine's cached argument at the value's position (the longest seen there): 120 bytes."""
    now = 1_796_516_120
    key = "sg:cap:default:high:13800138000"
    long_arg = "x" * 40  # what other scripts leave in the engine's cache at the value's position
    redis_conn.eval("redis.call('EXISTS', KEYS[1], ARGV[1])", 1, "k", long_arg)
    tag = guardrails.cap_tag("1a248b4893d3b1db1ee512a")
    assert len(tag) == 3 and tag.isdigit() and tag[0] != "0"
    scripts.CAPS(redis_conn, caps=[key], now=now, at=now, tag=tag, longest=86400, windows=[1, 60])
    assert redis_conn.get(key) == f"{tag}{now}".encode() and redis_conn.object("encoding", key) == b"int"
    assert redis_conn.memory_usage(key, samples=0) <= 88


# -- LEASE -------------------------------------------------------------------------------------


def test_lease_is_taken_renewed_by_its_holder_and_refused_to_others(redis_conn):
    assert scripts.LEASE(redis_conn, lease="l", owner="a", ttl_ms=1000) == 1
    assert scripts.LEASE(redis_conn, lease="l", owner="b", ttl_ms=1000) == 0
    redis_conn.pexpire("l", 10)
    assert scripts.LEASE(redis_conn, lease="l", owner="a", ttl_ms=5000) == 1
    assert redis_conn.pttl("l") > 1000


# -- MERGE_REPORTS -----------------------------------------------------------------------------


def merge_all(redis_conn, reports, owner="st,cb,k"):
    """``reports``: (recipients, message, mobile, state, code, at, all) each."""
    return scripts.MERGE_REPORTS(
        redis_conn,
        pairs=[key for r in reports for key in r[:2]],
        ttl=100,
        unknown=ReportState.UNKNOWN,
        delivered=ReportState.DELIVERED,
        owner=owner,
        reports=[v for r in reports for v in r[2:]],
    )


def merge(redis_conn, state, at, code="DELIVRD", mobile="13800138000", all=2):
    [out] = merge_all(redis_conn, [("r", "m", mobile, state, code, str(at), all)])
    return out


def test_merge_report_counts_a_new_final_state_once_and_returns_its_owner(redis_conn):
    redis_conn.hset("m", mapping={"st": "sending", "k": "tester"})
    assert merge(redis_conn, "U", 100, "UNDELIV") == [1, 1, b"sending", b"", b"tester"]  # first final state
    assert redis_conn.hget("r", "13800138000") == b"U|UNDELIV|100" and 0 < redis_conn.ttl("r") <= 100
    assert merge(redis_conn, "D", 120)[:2] == [1, 0]  # a later delivered report replaces it
    assert redis_conn.hgetall("m") == {b"st": b"sending", b"k": b"tester", b"r_U": b"0", b"r_D": b"1"}
    assert merge(redis_conn, "U", 110, "UNDELIV") == [0, 0]  # older: ignored
    assert merge(redis_conn, "X", 999, "") == [0, 0]  # unknown never replaces a report


def test_merge_report_gives_the_recipients_hash_its_messages_lifetime(redis_conn):
    redis_conn.hset("m", "st", "sending")
    redis_conn.expire("m", 50)
    merge(redis_conn, "D", 100)
    assert 40 < redis_conn.ttl("r") <= 50


def test_merge_report_says_when_the_chunks_last_recipient_reported(redis_conn):
    redis_conn.hset("m", "st", "sending")
    redis_conn.hset("r", "13900139000", "D|DELIVRD|50")
    assert merge(redis_conn, "D", 100)[0] == 2


def test_merge_report_changes_nothing_for_a_message_gone(redis_conn):
    assert merge(redis_conn, "D", 100) == [0, 0]
    assert not redis_conn.exists("r")


def test_merge_reports_in_one_call_merge_in_order_as_one_call_each(redis_conn):
    """A call's own cost was more than a merge's: many reports ride one call, and two of one
    recipient in it end as they would one call each (the later wins, counted once)."""
    redis_conn.hset("m", "st", "sending")
    redis_conn.hset("m2", "st", "sending")
    outs = merge_all(
        redis_conn,
        [
            ("r", "m", "13800138000", "U", "UNDELIV", "100", 2),
            ("r", "gone", "13800138001", "D", "DELIVRD", "100", 2),  # its message is gone
            ("r", "m", "13800138000", "D", "DELIVRD", "120", 2),  # later: replaces the first
            ("r2", "m2", "13900139000", "D", "DELIVRD", "100", 1),  # another chunk, its only one
            ("r", "m", "13800138000", "U", "UNDELIV", "110", 2),  # older: ignored
        ],
    )
    assert outs == [
        [1, 1, b"sending", b"", b""],
        [0, 0],
        [1, 0, b"sending", b"", b""],
        [2, 1, b"sending", b"", b""],
        [0, 0],
    ]
    assert redis_conn.hgetall("r") == {b"13800138000": b"D|DELIVRD|120"} and 0 < redis_conn.ttl("r") <= 100
    assert redis_conn.hgetall("m") == {b"st": b"sending", b"r_U": b"0", b"r_D": b"1"}
    assert redis_conn.hget("m2", "r_D") == b"1"


def test_merge_reports_read_and_write_each_recipients_hash_once_a_call(redis_conn):
    """A batch chunk's reports arrive together: its recipients hash is read once and written
    once a call, and each report costs two commands on its own message. The report that
    completes the chunk says so, counting what the hash held before the call."""
    mobiles = [f"139{i:08d}" for i in range(50)]
    redis_conn.hset("r", mobiles[0], "D|DELIVRD|50")  # reported in an earlier call
    for i in range(50):
        redis_conn.hset(f"m{i}", "st", "sending")
    redis_conn.config_resetstat()
    outs = merge_all(redis_conn, [("r", f"m{i}", mobiles[i], "D", "DELIVRD", "100", 50) for i in range(1, 50)])
    assert [out[0] for out in outs] == [1] * 48 + [2]
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in redis_conn.info("commandstats").items()}
    assert {k: calls.get(k) for k in ("hmget", "hlen", "hset", "hincrby", "hget")} == {
        "hmget": 49 + 1,  # each report's owner, and the hash once
        "hlen": 1,
        "hset": 1,
        "hincrby": 49,
        "hget": None,
    }
    assert len(redis_conn.hgetall("r")) == 50 and redis_conn.hget("r", mobiles[49]) == b"D|DELIVRD|100"


# -- STORE_REPLY -------------------------------------------------------------------------------


def test_store_reply_stores_once_indexes_and_trims_every_index(redis_conn):
    redis_conn.zadd("all", {"ancient": 1})
    args = {"seen": "seen", "reply": "reply", "indexes": ["all", "by-mobile"], "ttl": 100, "rid": "r1"}
    assert scripts.STORE_REPLY(redis_conn, **args, received="1000", fields=json.dumps({"c": "好"})) == 1
    assert redis_conn.hget("reply", "c").decode() == "好"
    assert redis_conn.zrange("all", 0, -1) == [b"r1"] and redis_conn.zrange("by-mobile", 0, -1) == [b"r1"]
    assert all(0 < redis_conn.ttl(k) <= 100 for k in ("reply", "all", "by-mobile", "seen"))
    assert scripts.STORE_REPLY(redis_conn, **args, received="1001", fields="{}") == 0  # a replay


# -- CLAIM_DUE and SETTLE_CALLBACKS ------------------------------------------------------


def test_claim_due_takes_what_is_due_and_hides_it_until_the_claim_ends(redis_conn):
    redis_conn.zadd("due", {"a": 1, "b": 2, "later": 50})
    assert scripts.CLAIM_DUE(redis_conn, due="due", now=10, until=30, count=5) == [b"a", b"b"]
    assert redis_conn.zscore("due", "a") == 30
    assert scripts.CLAIM_DUE(redis_conn, due="due", now=20, until=40, count=5) == []


def test_settle_callbacks_keeps_a_message_with_events_and_drops_one_without(redis_conn):
    redis_conn.zadd("due", {"a": 30})
    redis_conn.rpush("q", "event")
    assert scripts.SETTLE_CALLBACKS(redis_conn, due="due", queue="q", mid="a", next=12) == 1
    assert redis_conn.zscore("due", "a") == 12
    redis_conn.delete("q")
    assert scripts.SETTLE_CALLBACKS(redis_conn, due="due", queue="q", mid="a", next=12) == 0
    assert redis_conn.zcard("due") == 0


def _settle_verification(conn, mode="check", match=0, now=100, max_checks=3):
    fields = {"status": "st", "expires": "exp", "checks": "checks", "closed": "closed"}
    return scripts.SETTLE_VERIFICATION(
        conn,
        record="v", index="i", due="due", counts="counts", usage="usage", conv="conv",
        vid="v1", mode=mode, match=match, max_checks=max_checks, now=now, fields=json.dumps(fields),
        account="a", usage_ttl=60, conv_ttl=60,
        pending="pending", approved="approved", failed="failed", expired="expired",
    )  # fmt: skip


def test_settle_verification_approves_once_locks_after_wrong_codes_and_expires(redis_conn):
    redis_conn.hset("v", mapping={"st": "pending", "exp": 200})
    redis_conn.set("i", "v1")
    redis_conn.zadd("due", {"v1": 200})
    assert _settle_verification(redis_conn, match=0) == [b"pending", 2, 0]
    assert _settle_verification(redis_conn, mode="expire") == [b"pending", 2, 0]  # not yet due
    assert _settle_verification(redis_conn, match=1) == [b"approved", 2, 1]
    assert _settle_verification(redis_conn, match=1) == [b"approved", 2, 0]  # once
    assert redis_conn.get("i") is None and redis_conn.zcard("due") == 0
    assert redis_conn.hget("conv", "u") == b"1" and redis_conn.hget("counts", "verify:a:approved") == b"1"
    assert redis_conn.hget("usage", "verifications_approved") == b"1" and redis_conn.ttl("usage") > 0

    redis_conn.hset("v", mapping={"st": "pending", "exp": 200, "checks": 0})
    redis_conn.set("i", "v1")
    assert [_settle_verification(redis_conn)[0] for _ in range(3)] == [b"pending", b"pending", b"failed"]
    assert _settle_verification(redis_conn, match=1) == [b"failed", 0, 0]  # locked, the right code too
    assert redis_conn.get("i") == b"v1"  # kept until it expires: no new one meanwhile

    redis_conn.hset("v", mapping={"st": "pending", "exp": 200, "checks": 0})
    assert _settle_verification(redis_conn, mode="expire", now=200) == [b"expired", 3, 1]
    assert _settle_verification(redis_conn, mode="check", match=1, now=150) == [b"expired", 3, 0]
    redis_conn.delete("v")
    assert _settle_verification(redis_conn) == [b"missing", 0, 0]


def test_a_script_runs_inside_a_pipeline_by_eval_with_the_batch(redis_conn):
    with redis_conn.pipeline() as pipe:
        scripts.LEASE(pipe, lease="l", owner="a", ttl_ms=1000)
        pipe.get("l")
        assert pipe.execute() == [1, b"a"]


def test_states_reach_lua_from_their_enums(redis_conn):
    assert ChunkState.SUBMITTED == "submitted" and MessageState.SENDING == "sending"
    assert "'accepted'" not in scripts.CLAIM_POOL.source and "'sending'" not in scripts.CLAIM_POOL.source
    assert "'X'" not in scripts.MERGE_REPORTS.source and "'D'" not in scripts.MERGE_REPORTS.source


def test_claim_pool_gives_the_batch_its_earliest_members_validity(redis_conn):
    member(redis_conn, "a", "13800138000", 1)
    member(redis_conn, "b", "13900139000", 2)
    member(redis_conn, "c", "13700137000", 3)
    redis_conn.hset("sg:m:a", Message.field_of("valid_until"), "500.000")
    redis_conn.hset("sg:m:c", Message.field_of("valid_until"), "400.000")
    assert scripts.CLAIM_POOL(redis_conn, **claim_args(size=3)) == b"b1"
    assert Message.load(redis_conn, "b1").valid_until == 400.0


def test_switch_route_counts_a_change_once_however_many_see_it(redis_conn):
    args = {"routes": "r", "counts": "c", "priority": "high", "own": "default"}
    assert scripts.SWITCH_ROUTE(redis_conn, **args, target="default") == 0  # its own: no switch
    assert scripts.SWITCH_ROUTE(redis_conn, **args, target="backup") == 1
    assert scripts.SWITCH_ROUTE(redis_conn, **args, target="backup") == 0  # a second worker
    assert scripts.SWITCH_ROUTE(redis_conn, **args, target="default") == 1  # and back
    assert redis_conn.hget("c", "route_switches") == b"2" and redis_conn.hget("r", "high") == b"default"
