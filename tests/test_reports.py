"""Delivery reports and replies: push and pull, tied to what was sent, told to the caller."""

from __future__ import annotations

import json
import random
import threading
import time
from urllib.parse import urlencode

import pytest

from devkit.simulator import _share
from tests.conftest import AUTH, Receiver, carrier, drain, sim_admin
from workers import pullers, reports
from workers.storage import schema
from workers.storage.schema import Chunk

PUSH = "/callbacks/provider/push-secret-123"


def send(api, body):
    r = api.post("/v1/messages", data=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def view(api, mid):
    return api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()


def push(api, item: dict[str, str], encoding="gb2312", method="GET"):
    query = urlencode(item, encoding=encoding)
    if method == "GET":
        return api.get(f"{PUSH}?{query}")
    return api.post(PUSH, data=query.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"})


def pull_all(runtime, rounds=2000):
    """Pull until the simulator has nothing left, ingesting as we go."""
    for _ in range(rounds):
        pullers.tick(runtime, "test-owner", now=time.time() + 3600)
        while reports.ingest(runtime):
            pass
        if runtime.conn.hget("sg:pull:default", "rpt") and _empty(runtime):
            return
    raise AssertionError("pulling did not finish")


def _empty(runtime) -> bool:
    """The last pulls came back empty: the simulator's queues are drained."""
    raw = runtime.client("default").pull_raw("report"), runtime.client("default").pull_raw("reve_urlencode")
    for kind, text in zip(("rpt", "mo"), raw, strict=True):
        if text:
            reports.store_pull(runtime.conn, "default", kind, text)
    while reports.ingest(runtime):
        pass
    return raw == ("", "")


def test_10000_recipients_half_push_half_pull_duplicated_and_shuffled(api, runtime, simulator):
    sim_admin(simulator, "config", undelivered_share=0.1)
    mobiles = [f"136{i:08d}" for i in range(10_000)]
    mid = send(api, {"to": mobiles, "text": "report me", "priority": "bulk"})
    drain(runtime)
    with simulator.state.lock:
        items = [item for _, item in simulator.state.reports]
        simulator.state.reports.clear()
    rng = random.Random(7)
    rng.shuffle(items)
    pushed, pulled = items[:5000], items[5000:]
    dupes = rng.sample(items, 500)
    push_stream = pushed + [d for d in dupes if rng.random() < 0.5]
    pull_stream = pulled + [d for d in dupes if d not in push_stream]
    rng.shuffle(push_stream)
    rng.shuffle(pull_stream)
    with simulator.state.lock:
        simulator.state.reports.extend((0, item) for item in pull_stream)
    for item in push_stream:
        r = push(api, {"Class": "rpt", "SmsName": "test", **item}, method=rng.choice(["GET", "POST"]))
        assert r.status_code == 200
    pull_all(runtime)
    expected_undelivered = {it["Mobile"] for it in items if it["Report"] == "UNDELIV"}
    assert expected_undelivered
    assert all(_share(it["LinkId"] + it["Mobile"]) < 0.1 for it in items if it["Report"] == "UNDELIV")
    v = view(api, mid)
    assert v["recipients"]["by_state"] == {
        "delivered": 10_000 - len(expected_undelivered),
        "undelivered": len(expected_undelivered),
    }
    assert v["status"] == "partially_delivered"
    states = {}
    cursor = 0
    while cursor is not None:
        page = api.get(f"/v1/messages/{mid}/recipients?cursor={cursor}&limit=1000", headers=AUTH).get_json()
        states.update({r["mobile"]: (r["state"], r["operator_code"]) for r in page["items"]})
        cursor = page["next_cursor"]
    assert len(states) == 10_000
    for mobile in mobiles:
        expected = ("undelivered", "UNDELIV") if mobile in expected_undelivered else ("delivered", "DELIVRD")
        assert states[mobile] == expected
    assert runtime.conn.llen(reports.DEAD) == 0 and runtime.conn.llen(reports.ORPHANS) == 0


def test_a_later_delivrd_is_not_undone_by_an_older_report(runtime, api, simulator):
    mid = send(api, {"to": ["13800138000"], "text": "x"})
    drain(runtime)
    linkid = view(api, mid)["chunks"][0]["linkid"]
    base = {"kind": "rpt", "mobile": "13800138000", "linkid": linkid}
    newer = {**base, "status": "DELIVRD", "time": "2030-01-01 10:05:00"}
    older = {**base, "status": "UNDELIV", "time": "2030-01-01 10:00:00"}
    for order in ([older, newer], [newer, older], [newer, older, newer, older]):
        batch, n = carrier(runtime.conn, mid).decode().rsplit(":", 1)
        runtime.conn.delete(reports.recipients_key(batch, int(n)))
        runtime.conn.hdel(schema.message_key(mid), "r_D", "r_U")
        for item in order:
            reports.apply_item(runtime, item)
        assert view(api, mid)["recipients"]["by_state"] == {"delivered": 1}
        assert view(api, mid)["status"] == "delivered"


def test_unknown_linkid_reports_are_kept_and_counted(runtime):
    item = {"kind": "rpt", "mobile": "13800138000", "linkid": "nosuch", "status": "DELIVRD", "time": ""}
    reports.apply_item(runtime, item)
    assert runtime.conn.llen(reports.ORPHANS) == 1
    assert runtime.conn.hget(schema.COUNTS, "orphan_reports") == b"1"


def test_unparseable_pulled_line_is_dead_lettered(runtime):
    reports.store_pull(runtime.conn, "default", "rpt", "13800138000/2030-01-01 10:00:00/L1/DELIVRD/\ngarbage line\n")
    reports.ingest(runtime)
    [dead] = runtime.conn.lrange(reports.DEAD, 0, -1)
    assert json.loads(dead)["line"] == "garbage line"
    assert runtime.conn.hget(schema.COUNTS, "dead_lettered") == b"1"
    assert runtime.conn.llen(reports.ORPHANS) == 1  # the good line was kept, not dropped


def test_no_report_within_the_window_is_unknown(api, runtime, simulator):
    mid = send(api, {"to": ["13800138000", "13900139000"], "text": "x"})
    drain(runtime)
    linkid = view(api, mid)["chunks"][0]["linkid"]
    report = {
        "kind": "rpt",
        "mobile": "13800138000",
        "linkid": linkid,
        "status": "DELIVRD",
        "time": "2030-01-01 10:00:00",
    }
    reports.apply_item(runtime, report)
    assert reports.mark_unknown(runtime, time.time() + 10, 5) == 1
    assert view(api, mid)["recipients"]["by_state"] == {"delivered": 1, "unknown": 1}
    assert runtime.conn.hget(schema.COUNTS, "reports_unknown") == b"1"  # what /metrics reports
    assert view(api, mid)["status"] == "partially_delivered"


def test_a_chunk_leaves_the_report_wait_when_its_last_recipient_reports(api, runtime, simulator):
    """Not at the end of the 72-hour window: the pullers' fast pace and the wait's memory follow
    what is really outstanding. A repeated report changes nothing."""
    mid = send(api, {"to": ["13800138000", "13900139000"], "text": "x"})
    drain(runtime)
    linkid = view(api, mid)["chunks"][0]["linkid"]
    waiting = schema.awaiting_key("default")
    base = {"kind": "rpt", "linkid": linkid, "status": "DELIVRD", "time": "2030-01-01 10:00:00"}
    assert runtime.conn.zcard(waiting) == 1
    reports.apply_item(runtime, {**base, "mobile": "13800138000"})
    reports.apply_item(runtime, {**base, "mobile": "13800138000"})
    assert runtime.conn.zcard(waiting) == 1
    reports.apply_item(runtime, {**base, "mobile": "13900139000"})
    assert runtime.conn.zcard(waiting) == 0
    assert reports.mark_unknown(runtime, time.time() + 10, 5) == 0
    assert view(api, mid)["status"] == "delivered"


@pytest.mark.parametrize("encoding", ["gb2312", "utf-8"])
def test_replies_round_trip_exactly_through_push_and_pull(api, runtime, simulator, encoding):
    mid = send(api, {"to": ["13800138000"], "text": "reply to me"})
    drain(runtime)
    linkid = view(api, mid)["chunks"][0]["linkid"]
    text = "好的/收到 1+1=2 100% ok"
    push(
        api,
        {
            "Class": "mo",
            "SmsName": "test",
            "Mobile": "13800138000",
            "Message": text,
            "LinkId": linkid,
            "RevertTime": "2030-01-01 10:00:00",
        },
        encoding=encoding,
        method="POST",
    )
    sim_admin(simulator, "reply", mobile="13800138000", content=text + " again", linkid=linkid)
    pull_all(runtime)
    texts = sorted(r["text"] for r in view(api, mid)["replies"])
    assert texts == [text, text + " again"]
    listed = api.get("/v1/replies?mobile=13800138000", headers=AUTH).get_json()["items"]
    assert [r["text"] for r in listed] == [text + " again", text]  # newest first
    assert api.get(f"/v1/replies?message_id={mid}&limit=1", headers=AUTH).get_json()["next_cursor"]


def test_push_endpoint_secret_malformed_and_replay(api, runtime):
    item = {
        "Class": "rpt",
        "SmsName": "test",
        "Mobile": "13800138000",
        "LinkId": "L1",
        "Report": "DELIVRD",
        "ReportTime": "2030-01-01 10:00:00",
    }
    wrong = api.get("/callbacks/provider/wrong?" + urlencode(item))
    assert wrong.status_code == 404 and "secret" not in wrong.get_data(as_text=True)
    bad = api.get(f"{PUSH}?Class=rpt&Mobile=")
    assert bad.status_code == 400 and bad.mimetype == "application/problem+json"
    assert push(api, item).get_data(as_text=True) == "ok"
    assert push(api, item).get_data(as_text=True) == "ok"  # a replay: stored again
    reports.ingest(runtime)
    runtime.tally.flush()
    assert runtime.conn.hget(schema.COUNTS, "orphan_reports") == b"2"  # L1 is no linkid of ours


def test_callback_retried_until_accepted_gets_each_event_once(api, runtime, simulator, receiver):
    Receiver.fail_first = 3
    mid = send(api, {"to": ["13800138000", "13900139000"], "text": "x", "callback_url": receiver, "reference": "r-1"})
    drain(runtime)
    pull_all(runtime)
    drain(runtime, timeout=30)
    events = [e for _, body in Receiver.bodies for e in body["events"]]
    assert sorted(e["mobile"] for e in events) == ["13800138000", "13900139000"]
    assert all(e["type"] == "recipient.final" and e["reference"] == "r-1" and e["state"] == "delivered" for e in events)
    cb = view(api, mid)["callbacks"]
    assert cb["state"] == "ok" and cb["events_sent"] == 2
    assert [a["ok"] for a in cb["attempts"]] == [False, False, False, True]


def test_callback_that_never_accepts_stops_after_the_bound(api, runtime, simulator, receiver, monkeypatch):
    import dataclasses

    monkeypatch.setattr(runtime, "settings", dataclasses.replace(runtime.settings, callback_retry_seconds=2))
    Receiver.fail_first = 10**6
    mid = send(api, {"to": ["13800138000"], "text": "x", "callback_url": receiver})
    drain(runtime)
    pull_all(runtime)
    drain(runtime, timeout=30)
    cb = view(api, mid)["callbacks"]
    assert cb["state"] == "abandoned" and cb["events_dropped"] == 1 and len(cb["attempts"]) >= 2
    assert runtime.conn.llen(schema.callback_queue_key(mid)) == 0


def test_callback_host_allowlist(settings_env, redis_conn):
    from gateway import create_app
    from workers.settings import settings_from_env

    app = create_app(settings_from_env({**settings_env, "SMSGW_CALLBACK_HOSTS": "hooks.example.com"}))
    body = {"to": ["13800138000"], "text": "x", "callback_url": "http://hooks.example.net/x"}
    r = app.test_client().post("/v1/messages", headers=AUTH, json=body)
    assert r.status_code == 422 and "SMSGW_CALLBACK_HOSTS" in r.get_data(as_text=True)


def test_retention_expires_everything(settings_env, redis_conn, simulator):
    from gateway import create_app
    from workers.runtime import Runtime, install
    from workers.settings import settings_from_env

    settings = settings_from_env({**settings_env, "SMSGW_RETENTION_SECONDS": "2"})
    rt = Runtime.from_settings(settings)
    install(rt)
    api = create_app(settings).test_client()
    mid = send(api, {"to": ["13800138000"], "text": "short-lived"})
    drain(rt)
    pull_all(rt)
    sim_admin(simulator, "reply", mobile="13800138000", content="hi", linkid=view(api, mid)["chunks"][0]["linkid"])
    pull_all(rt)
    assert redis_conn.keys(f"sg:*{mid}*") and redis_conn.keys("sg:reply:*")
    time.sleep(3.5)
    # RQ's own job records go by their result TTL (300 s), not ours
    assert redis_conn.keys(f"sg:*{mid}*") == [] and redis_conn.keys("sg:reply:*") == []


def test_simulator_pushes_reports_and_replies_to_the_receiver(app, api, runtime, simulator):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sim_admin(simulator, "config", push_url=f"http://127.0.0.1:{server.port}{PUSH}")
        mid = send(api, {"to": ["13800138000", "13900139000"], "text": "push me"})
        drain(runtime)
        sim_admin(
            simulator,
            "reply",
            mobile="13800138000",
            content="好/的 1+1 100%",
            linkid=view(api, mid)["chunks"][0]["linkid"],
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and runtime.conn.llen(reports.INBOX) < 3:
            time.sleep(0.05)
        while reports.ingest(runtime):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    v = view(api, mid)
    assert v["status"] == "delivered" and v["recipients"]["by_state"] == {"delivered": 2}
    assert [r["text"] for r in v["replies"]] == ["好/的 1+1 100%"]


def test_every_reply_index_drops_what_outlived_the_retention_and_expires(api, runtime, simulator):
    mid = send(api, {"to": ["13800138000"], "text": "reply to me"})
    drain(runtime)
    stale = time.time() - runtime.settings.retention_seconds - 60
    for key in (schema.REPLIES, schema.replies_index_key("m", "13800138000")):
        runtime.conn.zadd(key, {"gone-long-ago": stale})
    sim_admin(simulator, "reply", mobile="13800138000", content="好的", linkid=view(api, mid)["chunks"][0]["linkid"])
    pull_all(runtime)
    for key in (schema.REPLIES, schema.replies_index_key("m", "13800138000")):
        assert runtime.conn.zscore(key, "gone-long-ago") is None
        assert 0 < runtime.conn.ttl(key) <= runtime.settings.retention_seconds


def test_a_push_is_one_rpush_and_leaves_no_key_of_its_own(runtime):
    """The receiver stores a push with one command and no marker (issue 24: a marker was a
    ``SET NX`` and a key for an hour, a push)."""
    item = {"kind": "rpt", "linkid": "L1", "mobile": "13800138000", "status": "DELIVRD", "time": "2030-01-01 10:00:00"}
    conn = runtime.conn
    keys = set(conn.keys())
    conn.config_resetstat()
    reports.receive(runtime, [item])
    written = {k.removeprefix("cmdstat_"): v["calls"] for k, v in conn.info("commandstats").items()}
    assert {k: v for k, v in written.items() if k not in ("multi", "exec", "hincrby", "config|resetstat")} == {
        "rpush": 1
    }, written
    assert set(conn.keys()) - keys == {schema.INBOX.encode(), schema.COUNTS.encode()}  # and its count


def test_a_batch_of_reports_takes_a_few_round_trips_not_a_few_each(api, runtime, simulator, round_trips, monkeypatch):
    """What each report names is looked up for the whole batch, and the chunks it completes
    leave their waits together: eleven reports take a few round trips, not a few each (counts
    written once a second, as deployed)."""
    from tests.conftest import sim_submissions
    from workers.tally import Tally

    monkeypatch.setattr(runtime, "tally", Tally(runtime.conn, 3600))

    mids = [send(api, {"to": [f"1380000{i:04d}"], "text": f"订单 {i} 已发货"}) for i in range(12)]
    drain(runtime)
    subs = sim_submissions(simulator)
    assert len(subs) == 12  # each its own submission and linkid

    def pushed(sub):
        return {"kind": "rpt", "mobile": sub["mobiles"][0], "linkid": sub["linkid"], "status": "DELIVRD", "time": ""}

    reports.receive(runtime, [pushed(subs[0])])
    assert reports.ingest(runtime) == 1  # the scripts are loaded
    reports.receive(runtime, [pushed(sub) for sub in subs[1:]])
    round_trips.clear()
    assert reports.ingest(runtime) == 11
    # The inbox's read and trim, the linkids, the chunks, the merges (with redis-py's SCRIPT
    # EXISTS) and the waits left: three round trips a report before.
    assert len(round_trips) <= 7
    runtime.tally.flush()
    assert all(view(api, mid)["status"] == "delivered" for mid in mids)


def test_a_replayed_push_is_applied_again_and_changes_nothing(api, runtime, simulator, receiver):
    """A replay is stored and applied like its first (no marker skips it): the recipient's
    state, the message's counts and its callback events are what one push made; it counts as a
    report received. The same holds for a batch read again after a crash (its trim lost)."""
    mid = send(api, {"to": ["13800138000"], "text": "订单已发货", "callback_url": receiver})
    drain(runtime)
    linkid = view(api, mid)["chunks"][0]["linkid"]
    item = {"kind": "rpt", "linkid": linkid, "mobile": "13800138000", "status": "DELIVRD", "time": ""}
    conn = runtime.conn
    reports.receive(runtime, [item])
    reports.receive(runtime, [item])  # a replay: stored as the first was
    batch = conn.lrange(schema.INBOX, 0, -1)
    assert len(batch) == 2 and batch[0] == batch[1]
    assert reports.ingest(runtime) == 2
    conn.rpush(schema.INBOX, *batch)  # the same batch again: its trim never happened
    assert reports.ingest(runtime) == 2
    drain(runtime, timeout=30)
    v = view(api, mid)
    assert v["status"] == "delivered" and v["recipients"]["by_state"] == {"delivered": 1}
    assert [e["state"] for _, body in Receiver.bodies for e in body["events"]] == ["delivered"]
    runtime.tally.flush()
    assert conn.hget(schema.COUNTS, "reports") == b"4" and conn.hget(schema.COUNTS, "pushed") == b"2"


def test_a_report_marks_its_linkid_reported_only_while_its_chunk_is_not_final(api, runtime, simulator):
    """The marker is for an ambiguous call that waits for a report; a chunk submitted on a clear
    answer never waits, so its reports write none."""
    mid = send(api, {"to": ["13800138000"], "text": "订单已发货"})
    drain(runtime)
    linkid = view(api, mid)["chunks"][0]["linkid"]
    item = {"kind": "rpt", "linkid": linkid, "mobile": "13800138000", "status": "DELIVRD", "time": ""}
    reports.receive(runtime, [item])
    reports.ingest(runtime)
    assert not runtime.conn.exists(schema.report_seen_key(linkid))
    runtime.conn.hset(schema.chunk_key(mid, 0), Chunk.field_of("state"), "submitting")  # its call under way
    reports.receive(runtime, [{**item, "time": "2030-01-01 10:00:00"}])
    reports.ingest(runtime)
    assert runtime.conn.exists(schema.report_seen_key(linkid))
