"""The API never answers an error for a message it then sends, and never a 202 for one it lost.

The wire to Redis is broken for real (a loopback proxy that stalls or cuts the connection just
as the accept transaction's EXEC goes out); the answer is then checked against what Redis holds,
also after the stalled EXEC has finally arrived.
"""

from __future__ import annotations

import time

import pytest

from gateway import create_app, quotas
from tests.conftest import AUTH, make_settings, waiting
from tests.faultproxy import FaultProxy
from workers.storage import schema


@pytest.fixture
def proxied(redis_server, redis_conn):
    proxy = FaultProxy(str(redis_server.socket))
    settings = make_settings(proxy.url, SMSGW_REDIS_SOCKET_TIMEOUT="0.5", SMSGW_ACCEPT_SETTLE_SECONDS="5")
    yield create_app(settings).test_client(), proxy
    proxy.close()


def post(api, to=("13800138000",), **headers):
    return api.post("/v1/messages", json={"to": list(to), "text": "hi"}, headers={**AUTH, **headers})


#: The command that writes an accept: one script for one recipient (it checks the fence itself),
#: MULTI/EXEC under WATCH for more.
WRITES = {"one recipient": (b"EVALSHA", ("13800138000",)), "two": (b"EXEC", ("13800138000", "13900139000"))}


def test_a_script_that_arrives_late_after_its_retry_succeeded_writes_nothing_twice(proxied, redis_conn):
    """redis-py retries a command once after a timeout; the stalled first run of the accept
    script still reaches Redis later and must find the message there and write nothing."""
    api, proxy = proxied
    assert post(api).status_code == 202
    proxy.delay(b"EVALSHA", 3.0)
    answer = post(api)
    assert answer.status_code == 202  # the retry went through on a fresh connection
    time.sleep(3.5)  # the stalled first run has arrived by now
    assert len(list(redis_conn.scan_iter(match=schema.message_key("*")))) == 2
    day = schema.usage_day(time.time())
    assert quotas.usage_row(redis_conn.hgetall(schema.usage_key("tester", day)))["requests"] == 2  # not 3
    assert waiting(redis_conn) == 2


def test_an_exec_that_arrives_after_the_fence_is_void_and_the_answer_says_so(proxied, redis_conn):
    api, proxy = proxied
    marker, to = WRITES["two"]
    assert post(api, to).status_code == 202  # opens the connections
    proxy.delay(marker, 3.0)
    started = time.monotonic()
    answer = post(api, to)
    assert answer.status_code == 503 and answer.mimetype == "application/problem+json"
    assert "nothing was accepted" in answer.get_json()["detail"]
    assert time.monotonic() - started < 3.0
    time.sleep(3.5)  # the stalled EXEC has reached Redis by now, and was aborted
    assert len(list(redis_conn.scan_iter(match=schema.message_key("*")))) == 1
    assert waiting(redis_conn) == 1


@pytest.mark.parametrize("shape", list(WRITES))
def test_an_exec_whose_answer_was_lost_is_found_and_answered_202(proxied, redis_conn, shape):
    api, proxy = proxied
    marker, to = WRITES[shape]
    assert post(api, to).status_code == 202
    proxy.cut_after(marker)
    answer = post(api, to)
    assert answer.status_code == 202, answer.get_json()
    mid = answer.get_json()["id"]
    assert redis_conn.exists(schema.message_key(mid))
    assert waiting(redis_conn) == 2


def test_a_redis_that_does_not_answer_in_time_gets_503_fast_and_recovers(redis_server, redis_conn):
    import os
    import signal

    settings = make_settings(redis_server.url, SMSGW_REDIS_SOCKET_TIMEOUT="0.5", SMSGW_ACCEPT_SETTLE_SECONDS="1")
    api = create_app(settings).test_client()
    assert post(api).status_code == 202
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = post(api, **{"Idempotency-Key": "once"})
        assert answer.status_code == 503 and time.monotonic() - started < 3.0
        assert api.get("/readyz").status_code == 503
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert api.get("/readyz").status_code == 200  # no restart needed
    again = post(api, **{"Idempotency-Key": "once"})
    assert again.status_code in (202, 409)
    stored = len(list(redis_conn.scan_iter(match=schema.message_key("*"))))
    assert stored == 1 + (again.status_code == 202)  # never a twin from the retried key
