"""The API's door: every bad request is a problem+json 4xx and nothing is queued."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import AUTH, waiting
from workers.storage import schema


def post(api, body, headers=None, raw=None):
    data = raw if raw is not None else json.dumps(body, ensure_ascii=False).encode()
    return api.post("/v1/messages", data=data, headers={**AUTH, "Content-Type": "application/json", **(headers or {})})


def nothing_queued(redis_conn):
    keys = [k.decode() for k in redis_conn.keys("*")]
    return not any(k.startswith(("sg:m:", "rq:job:", "rq:queue:")) for k in keys)


def assert_problem(response, status, pointer=None, contains=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert body["status"] == status and body["title"]
    if pointer is not None:
        pointers = [e["pointer"] for e in body.get("errors", [])]
        assert pointer in pointers, body
    if contains is not None:
        assert contains in json.dumps(body, ensure_ascii=False), body
    return body


@pytest.mark.parametrize(
    ("body", "status", "pointer", "contains"),
    [
        ({"to": ["13800138000"], "text": "hi", "colour": "red"}, 422, "/colour", "unknown field"),
        ({"to": "13800138000", "text": "hi"}, 422, "/to", None),
        ({"to": [13800138000], "text": "hi"}, 422, "/to/0", None),
        ({"to": [], "text": "hi"}, 422, "/to", None),
        ({"to": ["13800138000"]}, 422, "", "both 'to' and 'text'"),
        ({"to": ["13800138000"], "text": "体验體验"}, 422, "/text", "'體' (U+9AD4) at index 2"),
        ({"to": ["13800138000"], "text": "字" * 71}, 422, "/text", "71 characters"),
        ({"to": ["13800138000", "12345"], "text": "hi"}, 422, "/to/1", "'12345'"),
        ({"to": ["13800138000"], "text": "hi", "priority": "urgent"}, 422, "/priority", None),
        ({"to": ["13800138000"], "text": "hi", "send_at": "2000-01-01T00:00:00+08:00"}, 422, "/send_at", "past"),
        ({"to": ["13800138000"], "text": "hi", "send_at": "2999-01-01T00:00:00+08:00"}, 422, "/send_at", "days ahead"),
        ({"to": ["13800138000"], "text": "hi", "send_at": "2030-01-01T00:00:00"}, 422, "/send_at", "offset"),
        ({"to": ["13800138000"], "text": "hi", "account": "nope"}, 422, "/account", None),
        ({"to": ["13800138000"], "text": "hi", "callback_url": "ftp://x/"}, 422, "/callback_url", None),
        (
            {"template": "{name}好", "recipients": [{"to": "13800138000", "vars": {"name": "王,伟"}}]},
            422,
            "/recipients/0/vars/name",
            "13800138000",
        ),
        (
            {"template": "{name}好", "recipients": [{"to": "13800138000", "vars": {"name": "王堃"}}]},
            422,
            "/recipients/0/vars/name",
            "'堃'",
        ),
        (
            {"template": "{name}好{code}", "recipients": [{"to": "13800138000", "vars": {"name": "x"}}]},
            422,
            "/recipients/0/vars",
            "'code' is missing",
        ),
        (
            {"template": "{name}好", "recipients": [{"to": "13800138000", "vars": {"name": "x", "y": "1"}}]},
            422,
            "/recipients/0/vars",
            "'y' is not in the template",
        ),
        (
            {"template": "{n}" + "字" * 60, "recipients": [{"to": "13800138000", "vars": {"n": "长" * 20}}]},
            422,
            "/recipients/0",
            "80 characters",
        ),
        (
            # 269 characters at the door, 629 once the provider expands {value1} thirty times
            {"template": "{a}{b}", "recipients": [{"to": "13800138000", "vars": {"a": "{value1}" * 30, "b": "x"}}]},
            422,
            "/recipients/0/vars/a",
            "provider would replace",
        ),
        ({"to": ["13800138000"], "text": "hi", "callback_url": "http://[::1/"}, 422, "/callback_url", None),
        ({"template": "no vars", "recipients": [{"to": "13800138000", "vars": {}}]}, 422, "/template", None),
        ({"to": ["13800138000"], "text": "hi", "template": "{a}"}, 422, "", "not both"),
    ],
)
def test_invalid_requests(api, redis_conn, body, status, pointer, contains):
    assert_problem(post(api, body), status, pointer, contains)
    assert nothing_queued(redis_conn)


def test_a_422_speaks_to_the_caller_not_in_pydantics_words(api):
    r = post(api, {"to": ["13800138000"], "text": "hi", "template": "{a}"})
    [error] = r.get_json()["errors"]
    assert error["detail"] == "send either to+text or template+recipients, not both"


@pytest.mark.parametrize(
    ("raw", "contains"),
    [
        (b"{not json", "Malformed"),
        (b'{"to": ["13800138000"], "text": "a", "text": "b"}', "duplicate key"),
        (b'{"to": ["13800138000"], "text": NaN}', "NaN"),
        (b"[" * 100000 + b"]" * 100000, "nested"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_json_is_400(api, redis_conn, raw, contains):
    assert_problem(post(api, None, raw=raw), 400, contains=contains)
    assert nothing_queued(redis_conn)


def test_wrong_content_type_is_415(api, redis_conn):
    r = api.post("/v1/messages", data="to=1", headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert_problem(r, 415)
    assert nothing_queued(redis_conn)


def test_body_over_limit_is_413(api, app, redis_conn):
    big = b'{"to": ["13800138000"], "text": "' + b"a" * (app.config["MAX_CONTENT_LENGTH"] + 10) + b'"}'
    assert_problem(post(api, None, raw=big), 413)
    assert nothing_queued(redis_conn)


def test_too_many_recipients(api, redis_conn, runtime):
    limit = runtime.settings.max_recipients
    body = {"to": [f"138{i:08d}" for i in range(limit + 1)], "text": "hi"}
    assert_problem(post(api, body), 422, "/to", "at most")
    assert nothing_queued(redis_conn)


def test_auth(api, redis_conn):
    assert_problem(api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}), 401)
    r = api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers={"Authorization": "Bearer wrong"})
    assert_problem(r, 401)
    assert nothing_queued(redis_conn)


def test_unknown_route_and_method_are_problems(api):
    assert_problem(api.get("/nope", headers=AUTH), 404)
    assert_problem(api.put("/v1/messages", headers=AUTH), 405)


def test_accept_answers_202_with_counts_and_location(api, redis_conn):
    r = post(
        api,
        {
            "to": ["13800138000", "+86 138 0013 8000", "bad", "13900139000"],
            "text": "hi",
            "on_invalid": "skip",
            "reference": "order-1",
        },
    )
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["recipients"] == {
        "accepted": 2,
        "duplicates_removed": 1,
        "invalid": [{"index": 2, "value": "bad"}],
        "suppressed": [],
    }
    assert body["chunks_planned"] == 1 and body["status"] == "accepted" and body["reference"] == "order-1"
    assert r.headers["Location"] == f"/v1/messages/{body['id']}"
    got = api.get(r.headers["Location"], headers=AUTH).get_json()
    assert got["status"] == "accepted" and got["recipients"]["by_state"] == {"pending": 2}


def test_idempotency_same_body_replays_different_body_conflicts(api, redis_conn):
    body = {"to": ["13800138000"], "text": "hi"}
    first = post(api, body, {"Idempotency-Key": "k1"})
    again = post(api, body, {"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json() and again.headers["Idempotent-Replayed"] == "true"
    assert len(redis_conn.keys("sg:m:*")) == 1
    assert_problem(post(api, {**body, "text": "other"}, {"Idempotency-Key": "k1"}), 409)


def test_cancel_before_planning_and_404_for_other_keys(api, redis_conn):
    mid = post(api, {"to": ["13800138000"], "text": "hi"}).get_json()["id"]
    r = api.delete(f"/v1/messages/{mid}", headers=AUTH)
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert_problem(api.delete(f"/v1/messages/{mid}", headers=AUTH), 409)
    assert_problem(api.get("/v1/messages/doesnotexist", headers=AUTH), 404)


def test_openapi_describes_the_routes(api):
    doc = api.get("/openapi.json").get_json()
    assert {"/v1/messages", "/v1/messages/{mid}", "/v1/balance"} <= set(doc["paths"])
    assert "MessageRequest" in doc["components"]["schemas"]


def test_balance_and_sensitive_words_pass_through(api):
    assert api.get("/v1/balance", headers=AUTH).get_json()["balance"] == "1000000"
    r = api.post("/v1/sensitive-words", json={"text": "开发票"}, headers=AUTH)
    assert r.get_json()["words"] == ["发票"]


def commands(redis_conn, api, body) -> dict[str, int]:
    redis_conn.config_resetstat()
    assert post(api, body).status_code == 202
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in redis_conn.info("commandstats").items()}
    for ours in ("config|resetstat", "info"):  # this test's own commands
        calls.pop(ours, None)
    return calls


def test_accept_is_one_redis_transaction(api, redis_conn):
    """Validation, the fence (WATCH), then one MULTI/EXEC that writes (its bookkeeping one
    script inside it): no read but the opt-out list."""
    assert post(api, {"to": ["13700137000", "13900139000"], "text": "warm"}).status_code == 202  # opens connections
    calls = commands(redis_conn, api, {"to": ["13800138000", "13900139000"], "text": "hi"})
    assert calls.pop("multi") == 1 and calls.pop("exec") == 1
    assert calls.pop("watch") == 1  # the fence (see gateway.messages.settle)
    assert calls.pop("hmget") == 1  # the opt-out list, before the transaction (issue 11)
    assert calls.pop("eval") == 1 and calls.pop("exists") == 1  # the script; its fence and replay check
    assert set(calls) <= {"hset", "expire", "zadd", "sadd", "rpush", "hincrby", "xadd"}, calls


def test_accepting_one_recipient_is_one_script(app, api, redis_conn):
    """The hot path (issue 12): the opt-out list, then one EVALSHA that checks the fence itself
    and writes the message, its pool entry and the index. No WATCH, no MULTI; its counts are
    added up in the process (issue 24: four HINCRBY a message were a third of its accept)."""
    tally = app.extensions["smsgw"].tally
    tally.every = 3600  # as in production, written later: here, by the flush below
    assert post(api, {"to": ["13700137000"], "text": "warm"}).status_code == 202  # loads the script
    calls = commands(redis_conn, api, {"to": ["13800138000"], "text": "hi"})
    # A new pool: its token for a waiting coalescer (workers.coalesce.wait_for_a_pool) too.
    assert calls.pop("lpush") == 1 and calls.pop("ltrim") == 1
    assert calls.pop("hmget") == 1 and calls.pop("evalsha") == 1
    assert "watch" not in calls and "multi" not in calls
    assert set(calls) <= {"hset", "expire", "zadd", "xadd", "exists", "zcard"}, calls
    assert calls.get("expire", 0) == 1, calls  # the message's own
    assert sum(calls.values()) <= 7, calls
    joined = commands(redis_conn, api, {"to": ["13800138001"], "text": "hi"})  # the same pool
    assert "lpush" not in joined and sum(joined.values()) <= 8, joined
    tally.flush()
    assert redis_conn.hget(schema.COUNTS, "accepted_single") == b"3"
    day = schema.usage_day(time.time())
    assert redis_conn.hget(schema.usage_key("tester", day), "single") == b"3"
    assert redis_conn.hget(schema.account_usage_key("default", day), "single") == b"3"


# -- the door: bounded, clear, before anything is queued ---------------------------------------


def queued(runtime) -> int:
    return waiting(runtime.conn)


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_send_at_out_of_range_is_422_not_500(api, runtime, when):
    r = post(api, {"to": ["13800138000"], "text": "x", "send_at": when})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert queued(runtime) == 0


def test_millions_of_bad_characters_cost_one_bounded_error_list(api, runtime):
    import tracemalloc

    text = "€" * 2_600_000
    tracemalloc.start()
    r = post(api, {"to": ["13800138000"], "text": text})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    body = r.get_json()
    assert r.status_code == 422 and len(body["errors"]) <= 100
    assert peak < 200 * 1024 * 1024, peak  # the body and its JSON are ~20 MB; one error each was 1.6 GB


@pytest.mark.parametrize(
    "body",
    [
        {"to": ["13800138000"], "text": "   "},
        {"to": ["13800138000"], "text": "code\x00123"},
        {"to": ["13800138000"], "text": "tab\there"},
        {"template": "{a}", "recipients": [{"to": "13800138000", "vars": {"a": ""}}]},
        {"template": "hi {a}", "recipients": [{"to": "13800138000", "vars": {"a": "x\x1by"}}]},
    ],
)
def test_empty_texts_and_control_characters_are_refused(api, runtime, body):
    r = post(api, body)
    assert r.status_code == 422, r.get_json()
    assert queued(runtime) == 0


def test_a_newline_is_fine(api):
    assert post(api, {"to": ["13800138000"], "text": "line one\nline two"}).status_code == 202


def test_a_chunked_body_over_the_limit_is_413_never_truncated_and_accepted(app, runtime):
    import io
    import json as _json

    limit = runtime.settings.max_body_bytes
    body = _json.dumps({"to": ["13800138000"], "text": "x"}).encode() + b" " * limit + b"garbage"
    client = app.test_client()
    r = client.post(
        "/v1/messages",
        input_stream=io.BytesIO(body),
        headers={**AUTH, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 413 and r.mimetype == "application/problem+json"
    assert queued(runtime) == 0


def test_too_many_recipients_are_refused_before_they_are_validated(api, runtime):
    r = post(api, {"to": [1] * (runtime.settings.max_recipients + 1), "text": "x"})
    assert r.status_code == 422 and len(r.get_json()["errors"]) == 1


def test_a_body_of_millions_of_empty_objects_is_refused_before_it_is_parsed(api, runtime):
    import tracemalloc

    body = b'{"to": [' + b"{}," * (8 * 2**20 // 3 - 10) + b'{}], "text": "x"}'
    tracemalloc.start()
    try:
        r = api.post("/v1/messages", data=body, headers={**AUTH, "Content-Type": "application/json"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_problem(r, 413, contains="JSON objects and arrays")
    assert peak < 5 * len(body), f"{peak / 2**20:.0f} MB to refuse an 8 MB body"


def test_the_key_index_is_dated_by_the_days_first_request_and_a_scheduled_one(app, api, redis_conn, runtime):
    """The index of a key's messages gets its lifetime from each process's first request of the
    day (not every request: issue 24), and from a message scheduled past it."""
    index, day_ttl = schema.key_messages_key("tester"), runtime.settings.retention_seconds + 2 * 86400
    assert post(api, {"to": ["13800138000"], "text": "one"}).status_code == 202
    assert day_ttl - 5 < redis_conn.ttl(index) <= day_ttl
    redis_conn.expire(index, 100)
    assert post(api, {"to": ["13800138001"], "text": "two"}).status_code == 202
    assert redis_conn.ttl(index) <= 100  # the same day: not dated again
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
    assert post(api, {"to": ["13800138002"], "text": "three", "send_at": later}).status_code == 202
    assert redis_conn.ttl(index) > day_ttl  # scheduled past it: pushed out
    redis_conn.expire(index, 100)
    app.extensions["smsgw"].dated["tester"] = "a day before"
    assert post(api, {"to": ["13800138003"], "text": "four"}).status_code == 202
    assert day_ttl - 5 < redis_conn.ttl(index) <= day_ttl  # a new day: dated again
