"""Folding (``workers.archive``): one-recipient messages at rest, packed several to a Redis key.

Driven for real: the API's accept, coalescing, the send to the simulator, reports pulled back;
then the maintenance round folds, and every reader must answer as it did before.
"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.conftest import AUTH, MINE, THEIRS, Receiver, drain, sim_admin, sim_submissions
from tests.test_metrics import scrape, value
from tests.test_reports import pull_all
from workers import archive, maintenance, reports
from workers.storage import schema

OTP = "您的验证码是{code}，5分钟内有效"


def otp(api, mobile: str, code: str, headers=AUTH) -> str:
    body = {"template": OTP, "recipients": [{"to": mobile, "vars": {"code": code}}], "priority": "high"}
    r = api.post("/v1/messages", json=body, headers=headers)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def send(api, body) -> str:
    r = api.post("/v1/messages", json=body, headers=AUTH)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def reads(api, mid: str, headers=AUTH) -> dict:
    """What a caller can read of a message."""
    v = api.get(f"/v1/messages/{mid}", headers=headers).get_json()
    for chunk in v["chunks"]:  # what folding drops: the submission's step-by-step history
        for name in ("history", "attempts", "provider_text", "folded", "batch", "submission_recipients", "updated_at"):
            chunk.pop(name, None)  # (the submission time is kept to the second)
    rows = api.get(f"/v1/messages/{mid}/recipients", headers=headers).get_json()["items"]
    return {"view": v, "recipients": rows}


#: The families a message and its submission live in (not the fleet's counters and schedules).
MESSAGE_FAMILIES = ("m", "c", "ce", "r", "lk", "rl", "f", "mx", "await", "fold")


def racing(conn, mid: str, at: int = 1) -> redis.Redis:
    """A client on ``conn``'s pool whose ``at``-th pipeline without a transaction (a fold's
    reads) lets another client write message ``mid`` right after it ran, as a reply's callback
    would; once."""
    reads = []

    class Racing(redis.Redis):
        def pipeline(self, transaction=True, shard_hint=None):
            pipe = super().pipeline(transaction, shard_hint)
            if not transaction:
                run = pipe.execute

                def execute(raise_on_error=True):
                    out = run(raise_on_error)
                    reads.append(1)
                    if len(reads) == at:
                        conn.hincrby(schema.message_key(mid), schema.Message.field_of("callbacks_sent"), 1)
                    return out

                pipe.execute = execute  # type: ignore[method-assign]
            return pipe

    return Racing(connection_pool=conn.connection_pool)


def message_bytes(conn) -> int:
    keys = [k for family in MESSAGE_FAMILIES for k in conn.scan_iter(match=f"sg:{family}:*")]
    return sum(conn.memory_usage(k, samples=0) or 0 for k in [*keys, schema.FOLD])


def test_a_batch_at_rest_is_folded_and_every_reader_answers_as_before(api, runtime, simulator):
    sim_admin(simulator, "config", undelivered_share=0.3)
    conn = runtime.conn
    mids = {otp(api, f"1390000{i:04d}", f"{i:06d}"): f"1390000{i:04d}" for i in range(40)}
    drain(runtime)
    [sub] = sim_submissions(simulator)
    pull_all(runtime)
    before = {mid: reads(api, mid) for mid in mids}
    listed = api.get("/v1/messages?limit=100", headers=AUTH).get_json()["items"]
    live = message_bytes(conn)
    assert {s["status"] for s in listed} == {"delivered", "undelivered"}

    # The last report scheduled the fold; any worker's tick does it once it is due.
    assert conn.zcard(schema.FOLD) == 1
    assert maintenance.fold(runtime, time.time()) == 0
    assert maintenance.fold(runtime, time.time() + archive.AFTER + 1) == 40

    for family in ("m", "c", "ce", "r", "rl"):
        assert not list(conn.scan_iter(match=f"sg:{family}:*")), family
    assert conn.zcard(schema.FOLD) == 0
    after = {mid: reads(api, mid) for mid in mids}
    assert after == before
    assert {r["linkid"] for rows in after.values() for r in rows["recipients"]} == {sub["linkid"]}
    assert api.get("/v1/messages?limit=100", headers=AUTH).get_json()["items"] == listed
    some, mobile = next(iter(mids.items()))
    assert [m["id"] for m in api.get(f"/v1/messages?mobile={mobile}", headers=AUTH).get_json()["items"]] == [some]
    assert api.delete(f"/v1/messages/{some}", headers=AUTH).status_code == 409
    # Half of what the live records took, even with 40 messages spread over 16 buckets (bench
    # measures the shapes of issue 12: 2,000 messages, about a fifth).
    assert message_bytes(conn) < 0.5 * live, (message_bytes(conn) / 40, live / 40)


def test_a_reply_to_a_folded_message_reaches_it_and_only_its_key_sees_it(two_keys, runtime, simulator):
    api = two_keys
    conn = runtime.conn
    mids = {otp(api, m, "123456", MINE): m for m in ("13800138000", "13900139000")}
    drain(runtime)
    [sub] = sim_submissions(simulator)
    pull_all(runtime)
    assert archive.fold_due(conn, time.time() + archive.AFTER + 1) == 2
    sim_admin(simulator, "reply", mobile="13900139000", content="TD", linkid=sub["linkid"])
    pull_all(runtime)
    [answered] = [mid for mid, m in mids.items() if m == "13900139000"]
    mine = api.get("/v1/replies", headers=MINE).get_json()["items"]
    assert [(r["text"], r["message_id"]) for r in mine] == [("TD", answered)]
    assert api.get(f"/v1/replies?message_id={answered}", headers=MINE).get_json()["items"] == mine
    assert api.get("/v1/replies", headers=THEIRS).get_json()["items"] == []
    assert api.get(f"/v1/messages/{answered}", headers=THEIRS).status_code == 404
    assert api.get(f"/v1/messages/{answered}", headers=MINE).get_json()["status"] == "delivered"


def test_a_late_report_on_a_folded_submission_is_counted_and_changes_nothing(api, runtime, simulator):
    conn = runtime.conn
    mid = otp(api, "13800138000", "654321")
    other = otp(api, "13900139000", "111111")
    drain(runtime)
    [sub] = sim_submissions(simulator)
    pull_all(runtime)
    assert archive.fold_due(conn, time.time() + archive.AFTER + 1) == 2
    late = {"kind": "report", "linkid": sub["linkid"], "mobile": "13800138000", "status": "UNDELIV"}
    assert reports.apply_item(runtime, {**late, "time": time.strftime("%Y-%m-%d %H:%M:%S")}) == 0
    assert conn.hget(schema.COUNTS, "reports_after_fold") == b"1"
    samples = scrape(api.get("/metrics").get_data(as_text=True))
    assert value(samples, "smsgw_folded_messages_total") == 2 and value(samples, "smsgw_fold_waiting") == 0
    assert value(samples, "smsgw_inbound_items_total", kind="reports_after_fold") == 1
    assert api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["status"] == "delivered"
    assert not list(conn.scan_iter(match="sg:m:*")) and not list(conn.scan_iter(match="sg:r:*"))
    assert api.get(f"/v1/messages/{other}", headers=AUTH).get_json()["status"] == "delivered"


def test_a_lone_message_is_folded_and_one_with_many_recipients_stays_live(api, runtime, simulator):
    conn = runtime.conn
    lone = send(api, {"to": ["13800138000"], "text": "您的订单已发货"})
    many = send(api, {"to": ["13700137000", "13600136000"], "text": "会员日"})
    drain(runtime)
    pull_all(runtime)
    before = reads(api, lone)
    assert archive.fold_due(conn, time.time() + archive.AFTER + 1) == 1
    assert reads(api, lone) == before and before["view"]["text"] == "您的订单已发货"  # kept: not redacted
    assert not conn.exists(schema.message_key(lone)) and conn.exists(schema.message_key(many))
    assert api.get(f"/v1/messages/{many}", headers=AUTH).get_json()["status"] == "delivered"

    # Its linkid's record went too (the linkid names it): a reply still reaches it, and a late
    # report is counted and changes nothing.
    [linkid] = [s["linkid"] for s in sim_submissions(simulator) if s["mobiles"] == ["13800138000"]]
    assert not conn.exists(schema.linkid_key(linkid))
    sim_admin(simulator, "reply", mobile="13800138000", content="好的", linkid=linkid)
    pull_all(runtime)
    [reply] = api.get("/v1/replies", headers=AUTH).get_json()["items"]
    assert reply["message_id"] == lone
    late = {"kind": "report", "linkid": linkid, "mobile": "13800138000", "status": "UNDELIV", "time": ""}
    assert reports.apply_item(runtime, late) == 0 and conn.hget(schema.COUNTS, "reports_after_fold") == b"1"
    assert reads(api, lone)["recipients"] == before["recipients"]


def test_a_message_with_a_callback_folds_once_it_is_told_and_a_reply_still_calls(api, runtime, simulator, receiver):
    conn = runtime.conn
    mid = send(api, {"to": ["13500135000"], "text": "取件码 8812", "callback_url": receiver})
    drain(runtime)
    [sub] = sim_submissions(simulator)
    pull_all(runtime)  # the report's callback is queued, not yet delivered
    soon = time.time() + archive.AFTER + 1
    assert archive.fold_due(conn, soon) == 0 and conn.zscore(schema.FOLD, schema.chunk_ref(mid, 0)) > soon
    drain(runtime)
    assert archive.fold_due(conn, soon + archive.AFTER + 1) == 1
    told = api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["callbacks"]
    assert (told["events_sent"], told["state"], told["attempts"]) == (1, "ok", [])  # the log went with it

    sim_admin(simulator, "reply", mobile="13500135000", content="收到", linkid=sub["linkid"])
    pull_all(runtime)
    drain(runtime)
    assert [[e["type"] for e in body["events"]] for _, body in Receiver.bodies] == [["recipient.final"], ["reply"]]
    v = api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()
    assert v["status"] == "delivered" and [r["text"] for r in v["replies"]] == ["收到"]
    assert v["callbacks"]["events_sent"] == 2 and v["callbacks"]["state"] == "ok"
    assert conn.ttl(schema.message_key(mid)) > 0  # the counters' live hash expires with the record


def test_a_folded_record_reads_back_as_the_message_it_was():
    mid = schema.new_message_id()
    msg = schema.Message(
        id=mid,
        state="sending",
        account="default",
        priority="normal",
        kind="t",
        text="取件码 | 8812",
        items="13800138000",
        recipients=1,
        parts=1,
        api_key="tester",
        reference="order|42",
        created=schema.time_of(mid),
        via="b" + mid,
        chunks=1,
    )
    sub = schema.Folded("0123456789abcdef0123456789abcdef", schema.time_of(mid) + 2, "U", "MK:0001", 1e10)
    back = schema.Message.unfold(mid, msg.fold(sub))
    assert (back.text, back.reference, back.items, back.api_key, back.priority) == (
        "取件码 | 8812",
        "order|42",
        "13800138000",
        "tester",
        "normal",
    )
    assert back.folded == schema.Folded(sub.linkid, float(int(sub.submitted)), "U", "MK:0001", float(int(1e10)))
    assert back.recipients_final == {"submitted": 1, "U": 1} and back.chunks_final == {"submitted": 1}


def test_a_write_between_the_folds_read_and_its_commit_makes_it_try_again(api, runtime, simulator):
    """The fold reads under WATCH; a reply's callback (say) that writes a member meanwhile must
    not be lost under a stale folded copy: the fold gives way and runs again later."""
    conn = runtime.conn
    mids = [otp(api, m, "123456") for m in ("13800138000", "13900139000")]
    drain(runtime)
    pull_all(runtime)

    due = time.time() + archive.AFTER + 1
    # Written right after the members were read (the second read), when only WATCH can tell.
    assert archive.fold_due(racing(conn, mids[0], at=2), due) == 0
    [(_, again)] = conn.zrange(schema.FOLD, 0, -1, withscores=True)
    assert conn.exists(schema.message_key(mids[0])) and again > due  # kept live, scheduled again
    assert archive.fold_due(conn, due + archive.AFTER + 1) == 2
    assert api.get(f"/v1/messages/{mids[0]}", headers=AUTH).get_json()["callbacks"]["events_sent"] == 1


def test_a_lone_messages_fold_is_four_round_trips_and_gives_way_to_a_write(api, runtime, simulator, round_trips):
    conn = runtime.conn
    lone = [send(api, {"to": [m], "text": f"您的订单 {m} 已发货"}) for m in ("13800138000", "13900139000")]
    drain(runtime)
    pull_all(runtime)
    schema.name_codes(conn, ["default", "tester"])  # handed out once, by the first fold ever
    round_trips.clear()
    assert archive.fold(conn, lone[0], 0) == 1
    assert len(round_trips) == 4  # watch, read, the names' codes, the transaction (were 9)

    assert archive.fold(racing(conn, lone[1]), lone[1], 0) == archive.LATER
    assert conn.exists(schema.message_key(lone[1]))
    assert archive.fold(conn, lone[1], 0) == 1
    assert api.get(f"/v1/messages/{lone[1]}", headers=AUTH).get_json()["callbacks"]["events_sent"] == 1


def test_lone_messages_fold_sixteen_to_a_transaction_and_one_by_one_after_a_write(api, runtime, simulator, round_trips):
    conn = runtime.conn
    mobiles = [f"1380013{i:04d}" for i in range(archive.GROUP + 2)]
    lone = [send(api, {"to": [m], "text": f"您的订单 {m} 已发货"}) for m in mobiles]
    drain(runtime)
    pull_all(runtime)
    before = {mid: reads(api, mid) for mid in lone}
    schema.name_codes(conn, ["default", "tester"])
    round_trips.clear()
    assert archive.fold_lone(conn, [(mid, 0) for mid in lone[: archive.GROUP]]) == [1] * archive.GROUP
    assert len(round_trips) == 4  # watch, read, the names' codes, the transaction: for all sixteen
    # Their writes merged: one DEL, one ZREM, one count for the group, where each fold made its own.
    transaction = b"".join(bytes(part) for part in round_trips[-1]).upper()
    assert [transaction.count(f"\r\n{verb}\r\n".encode()) for verb in ("DEL", "ZREM", "HINCRBY")] == [1, 1, 1]

    # The write fails the group's transaction; each is then folded on its own (each with a read
    # that sees the write), so nothing folds a stale copy.
    assert archive.fold_lone(racing(conn, lone[-1]), [(mid, 0) for mid in lone[-2:]]) == [1, 1]
    assert api.get(f"/v1/messages/{lone[-1]}", headers=AUTH).get_json()["callbacks"]["events_sent"] == 1
    assert not any(conn.exists(schema.message_key(mid)) for mid in lone)
    for mid in lone[:-1]:
        assert reads(api, mid) == before[mid]


def test_recipients_with_no_report_are_folded_as_unknown_once_the_window_ends(api, runtime, simulator):
    conn = runtime.conn
    mids = [otp(api, m, "123456") for m in ("13800138000", "13900139000")]
    drain(runtime)  # submitted; the simulator's reports are never pulled
    window = runtime.settings.report_window_seconds
    end = time.time() + window + 1
    assert reports.mark_unknown(runtime, end, window) == 2
    assert archive.fold_due(conn, end) == 0  # a minute after the window's end, not at once
    assert archive.fold_due(conn, end + archive.AFTER + 1) == 2
    for mid in mids:
        [row] = api.get(f"/v1/messages/{mid}/recipients", headers=AUTH).get_json()["items"]
        assert row["state"] == "unknown" and row["operator_code"] is None
        assert api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["status"] == "unknown"


def test_kept_texts_and_values_fold_even_with_the_records_separator_in_them(api, runtime, simulator):
    """A normal 点点通 message keeps its text and values, and a reference: a '|' in any of them
    (the folded record's separator) goes to the record's JSON tail, and each reads as before."""
    conn = runtime.conn
    sent = {}
    for i, code in enumerate(["1234", "5|6", "7890"]):
        body = {"template": "取件码{code}", "recipients": [{"to": f"1380013800{i}", "vars": {"code": code}}]}
        sent[send(api, {**body, "reference": f"order|{i}"})] = code
    drain(runtime)
    pull_all(runtime)
    before = {mid: reads(api, mid) for mid in sent}
    assert archive.fold_due(conn, time.time() + archive.AFTER + 1) == 3
    assert not any(conn.exists(schema.message_key(mid)) for mid in sent)
    assert {mid: reads(api, mid) for mid in sent} == before
    assert {before[m]["view"]["reference"] for m in sent} == {"order|0", "order|1", "order|2"}


def test_a_round_folds_every_due_submission_page_after_page(api, runtime, simulator):
    lone = [send(api, {"to": [f"1380013800{i}"], "text": f"您的订单 {i} 已发货"}) for i in range(3)]
    drain(runtime)
    pull_all(runtime)
    assert archive.fold_due(runtime.conn, time.time() + archive.AFTER + 1, page=1) == 3
    assert not any(runtime.conn.exists(schema.message_key(mid)) for mid in lone)


def test_two_workers_fold_different_submissions_and_a_dead_ones_claim_comes_back(api, runtime, simulator):
    """Folding is shared (issue 24): each worker claims its own page of due submissions; one
    that claims and dies leaves them due again once its claim ends."""
    import threading

    lone = [send(api, {"to": [f"1390013900{i}"], "text": f"您的订单 {i} 已发货"}) for i in range(6)]
    drain(runtime)
    pull_all(runtime)
    conn, due = runtime.conn, time.time() + archive.AFTER + 1
    # A worker that claimed two and died: they are not folded by others until the claim ends.
    claimed = archive.scripts.CLAIM_DUE(conn, due=schema.FOLD, now=f"{due:.3f}", until=f"{due + 30:.3f}", count=2)
    assert len(claimed) == 2
    folds: list[int] = []
    threads = [threading.Thread(target=lambda: folds.append(archive.fold_due(conn, due, page=1))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(folds) == 4 and conn.zcard(schema.FOLD) == 2  # four folded once each, the claimed two wait
    assert archive.fold_due(conn, due + 31) == 2  # the claim ended: folded by whoever comes
    assert not any(conn.exists(schema.message_key(mid)) for mid in lone)


def test_a_redacted_record_keeps_no_digest_and_an_older_record_with_one_still_reads():
    """A redacted message folds to ``2`` + linkid + head (no SHA-256); a record an older smsgw
    wrote (``1`` + 32 bytes of SHA-256) still unfolds, its digest skipped and not shown."""
    mid = schema.new_message_id()
    msg = schema.Message(
        id=mid, state="sending", account="default", priority="high", kind="t", items="13800138000",
        recipients=1, parts=1, api_key="tester", redact=1, text_length=11, created=schema.time_of(mid),
    )  # fmt: skip
    sub = schema.Folded("0123456789abcdef0123456789abcdef", schema.time_of(mid) + 2, "D", "DELIVRD", 1e10)
    record = msg.fold(sub)
    assert record[:1] == b"2" and msg.redacted
    older = b"1" + bytes(32) + record[1:]  # the same message as the previous release folded it
    for raw in (record, older):
        back = schema.Message.unfold(mid, raw)
        assert back.redacted and back.text == "" and back.text_length == 11 and back.folded.linkid == sub.linkid
        assert back.items == "13800138000" and back.priority == "high"


def test_a_record_an_older_release_folded_under_its_text_field_still_reads(redis_conn):
    """A folded message's field is 7 raw bytes now (the id's 14 hex digits the bucket does not
    name); one an older release wrote under the id's last 15 hex digits as text still reads."""
    mid = schema.new_message_id()
    msg = schema.Message(
        id=mid, state="sending", account="default", priority="high", kind="t", items="13800138000",
        recipients=1, parts=1, api_key="tester", redact=1, text_length=11, created=schema.time_of(mid),
    )  # fmt: skip
    record = msg.fold(schema.Folded("0123456789abcdef0123456789abcdef", schema.time_of(mid), "D", "DELIVRD", 1e10))
    assert len(schema.folded_field(mid)) == 7
    for field in schema.folded_fields(mid):
        redis_conn.delete(schema.folded_key(mid))
        redis_conn.hset(schema.folded_key(mid), field, record)
        back = schema.Message.read(redis_conn, mid)
        assert back is not None and back.folded is not None and back.items == "13800138000"
        assert archive.is_folded(redis_conn, mid)


@pytest.mark.parametrize("shared", [8, 9])
def test_a_folded_linkid_record_packs_its_members_and_an_older_one_still_reads(shared):
    """Members as raw bytes after their common prefix (odd and even widths); the older record,
    spelled out in hex with separators, reads the same."""
    base = schema.new_message_id()
    mids = sorted({base[:shared] + secrets.token_hex(8)[: schema.MID_LENGTH - shared] for _ in range(30)})
    ref = archive._members_ref(mids)
    assert ref.startswith(archive.PACKED) and archive.members(ref) == mids
    assert len(ref) < 12 * len(mids) + 20
    older = archive.FOLDED + ";".join([base[:shared], *(m[shared:] for m in mids)])
    assert archive.members(older) == mids and archive.members("x:1") is None


def test_a_folded_record_names_its_key_and_account_by_codes_handed_out_once(redis_conn):
    """``bench|default`` in each of a week's messages became two 4-character codes; two folds
    naming the same key at once agree on one code; a code never handed out reads as no name
    (the record then belongs to no key: nobody sees it)."""
    codes = schema.name_codes(redis_conn, ["tester", "default", "tester"])
    assert set(codes) == {"tester", "default"} and all(len(c) == 4 for c in codes.values())
    assert schema.name_codes(redis_conn, ["tester"]) == {"tester": codes["tester"]}
    with ThreadPoolExecutor(8) as pool:
        raced = set(pool.map(lambda _: schema.name_codes(redis_conn, ["raced"])["raced"], range(16)))
    assert len(raced) == 1 and schema.name_of(redis_conn, raced.pop()) == "raced"
    # A key named like a code's entry is a name like any other: it never reads another's code.
    other = schema.name_codes(redis_conn, [f"#{codes['tester']}"])[f"#{codes['tester']}"]
    assert other != "tester" and schema.name_of(redis_conn, other) == f"#{codes['tester']}"
    mid = schema.new_message_id()
    msg = schema.Message(
        id=mid, state="sending", account="default", priority="high", kind="t", items="13800138000",
        recipients=1, parts=1, api_key="tester", redact=1, text_length=11, created=schema.time_of(mid),
    )  # fmt: skip
    sub = schema.Folded("0123456789abcdef0123456789abcdef", schema.time_of(mid), "D", "DELIVRD", 1e10)
    record = msg.fold(sub, (codes["tester"], codes["default"]))
    assert record[:1] == b"3" and b"tester" not in record and len(record) < len(msg.fold(sub)) - 4
    redis_conn.hset(schema.folded_key(mid), schema.folded_field(mid), record)
    back = schema.Message.read(redis_conn, mid)
    assert back is not None and (back.api_key, back.account, back.items) == ("tester", "default", "13800138000")
    assert schema.Message.unfold(mid, record, names=lambda code: "").api_key == ""
