"""A key sees only its own messages and replies; unmatched replies are for operators only."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

from tests.conftest import MINE, THEIRS, drain, sim_admin
from tests.test_reports import pull_all
from workers.storage import schema

OPERATOR = {"Authorization": "Basic " + base64.b64encode(b"operator:operator-pass-123").decode()}


def test_replies_are_seen_by_the_key_that_sent_the_message_only(two_keys, runtime, simulator):
    api = two_keys
    mid = api.post("/v1/messages", json={"to": ["13800138000"], "text": "hi"}, headers=MINE).get_json()["id"]
    drain(runtime)
    linkid = api.get(f"/v1/messages/{mid}", headers=MINE).get_json()["chunks"][0]["linkid"]
    sim_admin(simulator, "reply", mobile="13800138000", content="好的", linkid=linkid)
    sim_admin(simulator, "reply", mobile="13700137000", content="who is this", linkid="")  # matches nothing
    pull_all(runtime)

    mine = api.get("/v1/replies", headers=MINE).get_json()["items"]
    assert [r["text"] for r in mine] == ["好的"]
    assert api.get("/v1/replies?mobile=13800138000", headers=MINE).get_json()["items"] == mine
    assert api.get(f"/v1/replies?message_id={mid}", headers=MINE).get_json()["items"] == mine

    for query in ("", "?mobile=13800138000", "?mobile=13700137000", "?account=default"):
        assert api.get(f"/v1/replies{query}", headers=THEIRS).get_json()["items"] == [], query
    assert api.get(f"/v1/replies?message_id={mid}", headers=THEIRS).status_code == 404
    assert api.get(f"/v1/messages/{mid}", headers=THEIRS).status_code == 404

    everything = api.get("/admin/replies", headers=OPERATOR).get_json()["items"]
    assert sorted(r["text"] for r in everything) == ["who is this", "好的"]
    assert api.get("/admin/replies", headers=MINE).status_code == 401


def test_a_key_lists_its_own_messages_newest_first_with_filters_and_paging(two_keys, runtime, simulator):
    api = two_keys
    mine = []
    for i in range(5):
        body = {"to": [f"1380013800{i}"], "text": "x", "reference": "order-7" if i == 2 else f"o-{i}"}
        mine.append(api.post("/v1/messages", json=body, headers=MINE).get_json()["id"])
    theirs = api.post("/v1/messages", json={"to": ["13800138001"], "text": "y"}, headers=THEIRS).get_json()["id"]
    drain(runtime)

    listed = api.get("/v1/messages", headers=MINE).get_json()
    # Newest first: in accept order (two ids made in one millisecond sort by their random part,
    # so id order is not accept order there).
    assert [m["id"] for m in listed["items"]] == mine[::-1] and listed["next_cursor"] is None
    assert [m["id"] for m in api.get("/v1/messages", headers=THEIRS).get_json()["items"]] == [theirs]
    assert [m["id"] for m in api.get("/v1/messages?reference=order-7", headers=MINE).get_json()["items"]] == [mine[2]]
    by_mobile = api.get("/v1/messages?mobile=%2B86 138-0013-8001", headers=MINE).get_json()["items"]
    assert [m["id"] for m in by_mobile] == [mine[1]]
    assert len(api.get("/v1/messages?status=submitted", headers=MINE).get_json()["items"]) == 5
    first = api.get("/v1/messages?limit=2", headers=MINE).get_json()
    second = api.get(f"/v1/messages?limit=2&cursor={first['next_cursor']}", headers=MINE).get_json()
    assert [m["id"] for m in first["items"] + second["items"]] == mine[::-1][:4]
    assert api.get("/v1/messages?since=yesterday", headers=MINE).status_code == 400
    assert api.get(f"/v1/messages?cursor={mine[0]}", headers=MINE).status_code == 400  # a cursor is an index entry


def test_the_listing_honours_since_and_until_and_its_index_is_small(two_keys, runtime, redis_conn):
    """The index is a stream of ids (issue 11 §7): ``since``/``until`` pick by each message's own
    time, and a message costs the index under 35 bytes (a sorted set took 118)."""
    api = two_keys

    def send(n: int) -> list[str]:
        return [
            api.post("/v1/messages", json={"to": [f"1380013{i:04d}"], "text": f"码 {i}"}, headers=MINE).get_json()["id"]
            for i in range(n)
        ]

    def listed(query: str) -> list[str]:
        return [m["id"] for m in api.get(f"/v1/messages?limit=200{query}", headers=MINE).get_json()["items"]]

    before = send(3)
    time.sleep(0.05)
    boundary = datetime.now(UTC).isoformat().replace("+00:00", "%2B00:00")
    time.sleep(0.05)
    after = send(297)
    assert listed(f"&until={boundary}") == before[::-1]
    assert listed(f"&since={boundary}") == after[::-1][:200]
    assert listed("&since=2000-01-01T00:00:00%2B00:00&until=2000-01-02T00:00:00%2B00:00") == []
    index = schema.key_messages_key("tester")
    assert redis_conn.xlen(index) == 300
    per_message = (redis_conn.memory_usage(index, samples=0) or 0) / 300
    assert per_message < 40, per_message  # 300 entries: the whole id in each took 45

    # An entry dated ahead (an older release dated entries by the id, whose process's clock may
    # have run ahead): the next is dated after it, seconds from its id's time, and listed all the same.
    ahead = int(time.time() * 1000) + 5000
    redis_conn.xadd(index, {"m": "0" * 23}, id=f"{ahead}-0")
    [late] = send(1)
    [(at, _)] = redis_conn.xrevrange(index, count=1)
    assert int(at.split(b"-")[0]) >= ahead
    assert listed("")[0] == late
