"""workers.storage.batched: concurrent calls of one op (a script, or plain commands) share round
trips, and each caller gets its own answer or its own error, against our real Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers import reports
from workers.storage import schema, scripts
from workers.storage.batched import Batched, _Call

PUSHES = 200

#: A script to batch: stores an entry once.
ONCE = scripts.Script(
    keys="seen inbox",
    args="ttl entry",
    source="""
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', tonumber(ARGV[1])) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
""",
)


def together(n: int, call: Callable[[int], Any]) -> list[Any]:
    """``n`` threads released at once; each one's answer or exception, in order."""
    start, out = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = call(i)
        except Exception as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def push(batched: Batched, conn: redis.Redis, i: int) -> Any:
    return batched(conn, seen=f"seen:{i % (PUSHES // 2)}", inbox="inbox", ttl=60, entry=f"e{i}")


def test_concurrent_calls_share_round_trips_and_each_gets_its_own_answer(redis_conn):
    batched = Batched(ONCE)
    answers = together(PUSHES, lambda i: push(batched, redis_conn, i))
    # Two pushes of each item: one stored it (1), the other found it stored (0), whatever the order.
    for i in range(PUSHES // 2):
        assert sorted([answers[i], answers[i + PUSHES // 2]]) == [0, 1]
    assert redis_conn.llen("inbox") == PUSHES // 2
    assert batched.batches < PUSHES / 2  # fewer round trips than callers
    assert not batched._busy and not batched._waiting  # the turn ended with the last batch


def test_plain_commands_batch_too_and_each_call_answers_with_its_own(redis_conn):
    """The push receiver's op (a plain ``RPUSH``, no script): each call's answer is its own
    command's (the inbox's length just after its entry), whatever batch it went in."""
    batched = Batched(reports.STORE_PUSH)
    answers = together(PUSHES, lambda i: batched(redis_conn, entry=f"e{i}"))
    assert sorted(answers) == list(range(1, PUSHES + 1))
    inbox = [e.decode() for e in redis_conn.lrange(schema.INBOX, 0, -1)]
    assert [inbox[n - 1] for n in answers] == [f"e{i}" for i in range(PUSHES)]  # each its own place
    assert batched.batches < PUSHES / 2


def test_a_lone_call_goes_at_once_as_one_script_call(redis_conn):
    batched = Batched(ONCE)
    redis_conn.config_resetstat()
    assert push(batched, redis_conn, 1) == 1
    assert push(batched, redis_conn, 1) == 0
    assert batched.batches == 2
    assert redis_conn.info("commandstats").get("cmdstat_script|exists") is None


def test_a_batch_of_at_most_max_batch(redis_conn):
    batched = Batched(ONCE, max_batch=4)
    sizes: list[int] = []
    answer = batched._answer

    def counted(conn: redis.Redis, batch: list[_Call]) -> None:
        sizes.append(len(batch))
        answer(conn, batch)

    batched._answer = counted  # type: ignore[method-assign]
    assert together(40, lambda i: push(batched, redis_conn, i)) == [1] * 40
    assert max(sizes) <= 4 and sum(sizes) == 40 and redis_conn.llen("inbox") == 40


def test_a_script_the_server_lost_is_loaded_again(redis_conn):
    batched = Batched(ONCE)
    push(batched, redis_conn, 0)
    redis_conn.script_flush()  # a restarted server
    answers = together(20, lambda i: push(batched, redis_conn, i + 1))
    assert answers == [1] * 20 and redis_conn.llen("inbox") == 21


def test_an_error_reaches_its_own_caller_only(redis_conn):
    batched = Batched(ONCE)
    redis_conn.set("not-a-list", "x")

    def call(i: int) -> Any:
        inbox = "not-a-list" if i == 3 else "inbox"
        return batched(redis_conn, seen=f"s{i}", inbox=inbox, ttl=60, entry="e")

    answers = together(30, call)
    assert isinstance(answers[3], redis.ResponseError) and "WRONGTYPE" in str(answers[3])
    assert [a for i, a in enumerate(answers) if i != 3] == [1] * 29


def test_a_connection_error_fails_every_call_of_its_batch_and_the_next_caller_goes_on(redis_conn):
    batched = Batched(ONCE)
    dead = redis.Redis(unix_socket_path="/nonexistent/redis.sock", retry=Retry(NoBackoff(), 0))
    answers = together(10, lambda i: push(batched, dead, i))
    assert all(isinstance(a, redis.ConnectionError) for a in answers)
    assert push(batched, redis_conn, 1) == 1  # nothing was left holding the turn


def test_a_process_s_concurrent_codes_share_their_accepts_round_trips(app):
    """The door's one-recipient accept goes through the process's batcher: 40 codes POSTed at
    once (as gunicorn's gevent worker serves them) take fewer round trips than 40."""
    from gateway.context import runtime
    from tests.conftest import AUTH

    def post(i: int) -> int:
        body = {"to": [f"1390000{i:04d}"], "text": f"验证码 {i:06d}", "priority": "high"}
        return app.test_client().post("/v1/messages", json=body, headers=AUTH).status_code

    assert together(40, post) == [202] * 40
    with app.app_context():
        assert 0 < runtime().batched(scripts.ACCEPT).batches < 40


def test_a_caller_that_stops_waiting_passes_its_turn_on(redis_conn):
    """A waiting caller killed (a greenlet's kill, a timeout) just as the turn came to it must
    not leave the callers behind it waiting for ever."""
    batched = Batched(ONCE)
    gone = _Call({})
    batched._waiting.append(gone)
    batched._busy = True  # a batch is under way; `gone` waits for its turn
    answers: list[Any] = []
    behind = threading.Thread(target=lambda: answers.append(push(batched, redis_conn, 7)), daemon=True)
    behind.start()
    while len(batched._waiting) < 2:
        threading.Event().wait(0.01)
    batched._pass_turn()  # the batch is done: the turn goes to `gone`, first in line
    assert gone.lead
    batched._abandon(gone)  # what its wait's exception does
    behind.join(5)
    assert answers == [1] and not batched._busy and not batched._waiting
