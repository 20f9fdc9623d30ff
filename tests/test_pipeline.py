"""The send pipeline end to end in one process: API → Redis → jobs → simulator over HTTP."""

from __future__ import annotations

import json
from collections import Counter

from rq import SimpleWorker

from tests.conftest import AUTH, carrier, drain, sim_admin, sim_submissions
from workers.storage import schema
from workers.storage.schema import Chunk


def send(api, body, headers=None):
    r = api.post(
        "/v1/messages",
        data=json.dumps(body, ensure_ascii=False),
        headers={**AUTH, "Content-Type": "application/json", **(headers or {})},
    )
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def status(api, mid):
    return api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()


def test_2500_mobiles_with_duplicates_and_invalid(api, runtime, simulator):
    mobiles = [f"139{i:08d}" for i in range(2250)]
    to = mobiles + mobiles[:250] + ["123", "abc", "+1 555 0100"]
    mid = send(api, {"to": to, "text": "验证码 1+1", "on_invalid": "skip"})
    drain(runtime)
    subs = sim_submissions(simulator)
    assert len(subs) == 3
    # The three chunks are in flight together (SMSGW_SENDS_IN_FLIGHT): any order, each whole.
    chunks = sorted(subs, key=lambda s: s["mobiles"][0])
    assert [m for s in chunks for m in s["mobiles"]] == mobiles and [len(s["mobiles"]) for s in chunks] == [
        1000
    ] * 2 + [250]
    assert len({s["linkid"] for s in subs}) == 3
    view = status(api, mid)
    assert view["status"] == "submitted"
    assert view["recipients"]["by_state"] == {"submitted": 2250}
    assert [c["state"] for c in view["chunks"]] == ["submitted"] * 3


def test_3000_personalised_recipients(api, runtime, simulator):
    recipients = [{"to": f"137{i:08d}", "vars": {"name": f"王{i}", "code": f"{i}+%{i} x"}} for i in range(3000)]
    send(api, {"template": "{name}您好，验证码{code}，{name}", "recipients": recipients})
    drain(runtime)
    subs = sim_submissions(simulator)
    assert len(subs) == 3 and all(s["endpoint"] == "post_send_ddt" for s in subs)
    texts = [t for s in sorted(subs, key=lambda s: int(s["mobiles"][0])) for t in s["texts"]]  # in flight together
    assert texts == [f"王{i}您好，验证码{i}+%{i} x，王{i}" for i in range(3000)]


def test_replace_separators_opt_in(api, runtime, simulator):
    send(
        api,
        {"template": "{a}!", "recipients": [{"to": "13800138000", "vars": {"a": "x,y;z"}}], "replace_separators": True},
    )
    drain(runtime)
    assert sim_submissions(simulator)[0]["texts"] == ["x，y；z!"]


def test_an_http_error_without_a_report_is_never_sent_again(api, runtime, simulator):
    """A 503 may hide an accepted submission: the chunk waits for a report, none comes (the
    simulator refused before processing), and a normal chunk is still not sent again, under
    any linkid: it ends submitted, unconfirmed and counted (only high may deliver twice)."""
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="http", status=503, times=2)
    mid = send(api, {"to": ["13800138000"], "text": "hi"})
    drain(runtime)
    view = status(api, mid)
    [chunk] = view["chunks"]
    assert chunk["state"] == "submitted" and chunk["attempts"] == 1 and chunk["unconfirmed"] is True
    assert sim_submissions(simulator) == []
    events = [h["event"] for h in chunk["history"]]
    assert events[-2:] == ["awaiting_report", "no_report_not_resent"] and "retry" not in events
    assert len({h["linkid"] for h in chunk["history"] if "linkid" in h}) == 1
    assert runtime.conn.hget(schema.COUNTS, "unconfirmed") == b"1"
    assert "smsgw_unconfirmed_chunks_total 1.0" in api.get("/metrics").get_data(as_text=True)


def test_a_garbage_answer_is_not_resent_and_keeps_its_error(api, runtime, simulator):
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="garbage")
    mid = send(api, {"to": ["13800138000"], "text": "hi"})
    drain(runtime)
    [chunk] = status(api, mid)["chunks"]
    assert chunk["state"] == "submitted" and chunk["attempts"] == 1
    assert chunk["error"] == "UnknownAnswer"
    assert "no_report_not_resent" in [h["event"] for h in chunk["history"]]
    assert sim_submissions(simulator) == []


def test_code_3_splits_in_halves_with_new_linkids_and_lowers_chunk_size(api, runtime, simulator):
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[3])
    mid = send(api, {"to": [f"138{i:08d}" for i in range(10)], "text": "hi"})
    drain(runtime)
    view = status(api, mid)
    assert view["status"] == "submitted"
    states = Counter(c["state"] for c in view["chunks"])
    assert states == {"split": 1, "submitted": 2}
    subs = sim_submissions(simulator)
    assert sorted(len(s["mobiles"]) for s in subs) == [5, 5]
    assert len({s["linkid"] for s in subs} | {view["chunks"][0]["linkid"]}) == 3
    assert runtime.conn.hget(schema.account_key("default"), "chunk_size") == b"5"


def test_codes_5_and_7_fail_permanently(api, runtime, simulator):
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[7])
    mid = send(api, {"to": ["13800138000"], "text": "hi"})
    drain(runtime)
    [chunk] = status(api, mid)["chunks"]
    assert (chunk["state"], chunk["provider_code"], chunk["attempts"]) == ("failed", 7, 1)
    assert runtime.conn.hget("sg:alerts", "validation_defect") == b"1"


def test_cancel_stops_what_is_not_submitted(api, runtime, simulator):
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[8])  # frozen: the chunk waits, held
    mid = send(api, {"to": ["13800138000"], "text": "hi"})
    drain(runtime, until=lambda: status(api, mid)["chunks"][0]["state"] == "held")
    r = api.delete(f"/v1/messages/{mid}", headers=AUTH)
    assert r.status_code == 200 and r.get_json()["cancelled"]["recipients"] == 1
    from workers.lifecycle import resume_account

    resume_account(runtime.settings, runtime.conn, "default", by="test")
    drain(runtime)
    assert status(api, mid)["status"] == "cancelled"
    assert sim_submissions(simulator) == []


def test_a_chunk_that_may_be_with_the_provider_cannot_be_cancelled(api, runtime, simulator):
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="http", status=502, accept=True, times=1)
    mid = send(api, {"to": ["13800138000"], "text": "hi"})
    drain(runtime, until=lambda: status(api, mid)["chunks"][0]["state"] == "unconfirmed")
    assert api.delete(f"/v1/messages/{mid}", headers=AUTH).status_code == 409


def test_send_at_holds_the_message_until_then(api, runtime, simulator):
    from datetime import UTC, datetime, timedelta

    at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    mid = send(api, {"to": ["13800138000"], "text": "later", "send_at": at})
    assert status(api, mid)["status"] == "scheduled"
    queues = [runtime.queue(p) for p in ("high", "normal", "bulk")]
    SimpleWorker(queues, connection=runtime.conn).work(burst=True)  # nothing is due yet
    assert sim_submissions(simulator) == []
    drain(runtime, timeout=10)
    assert status(api, mid)["status"] == "submitted"
    assert len(sim_submissions(simulator)) == 1


def test_requeued_job_of_a_submitted_chunk_sends_nothing(api, runtime, simulator):
    from rq.job import Job

    mid = send(api, {"to": ["13800138000"], "text": "once"})
    drain(runtime)
    batch, n = carrier(runtime.conn, mid).decode().rsplit(":", 1)
    chunk = Chunk.load(runtime.conn, batch, int(n))
    assert chunk is not None
    job = Job.fetch(chunk.job, connection=runtime.conn)
    runtime.queue("normal").enqueue_job(job)  # what an operator's requeue does
    drain(runtime)
    assert len(sim_submissions(simulator)) == 1


def test_the_simulator_says_when_a_call_arrived_and_when_it_was_taken(api, runtime, simulator):
    """The benchmarks time 'reaches the provider' by arrival: the latency is the provider's."""
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=0.3, times=1)
    send(api, {"to": ["13800138000"], "text": "hi"})
    drain(runtime)
    [sub] = sim_submissions(simulator)
    assert 0.3 <= sub["at"] - sub["received"] < 1.0
