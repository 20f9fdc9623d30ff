"""Counts added up in the process (workers.tally): written together, late by at most the
interval, never twice (a fork, a Redis that was away), and not lost at a stop by signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import requests

from devkit.run import wait_http
from tests.conftest import API_KEY, AUTH, wait_for
from tests.test_metrics import free_port
from workers.storage import schema
from workers.tally import Tally, flush_all


def hincrbys(conn: redis.Redis) -> int:
    return int(conn.info("commandstats").get("cmdstat_hincrby", {}).get("calls", 0))


def test_counts_are_added_up_and_written_in_one_go(redis_conn):
    tally = Tally(redis_conn, every=3600)
    before = hincrbys(redis_conn)
    for _ in range(500):
        tally.add("c", "accepted")
        tally.add("day", "single", 1, ttl=900)
    assert not redis_conn.exists("c", "day")  # nothing written until the flush
    tally.flush()
    assert redis_conn.hget("c", "accepted") == b"500" and redis_conn.hget("day", "single") == b"500"
    assert hincrbys(redis_conn) - before == 2  # a thousand counts, two commands
    assert redis_conn.ttl("c") == -1 and 0 < redis_conn.ttl("day") <= 900  # dated keys only
    tally.flush()  # nothing pending: nothing written
    assert redis_conn.hget("c", "accepted") == b"500"


def test_a_count_reaches_redis_within_the_interval(redis_conn):
    tally = Tally(redis_conn, every=0.2)
    tally.add("c", "n", 3)
    wait_for(lambda: redis_conn.hget("c", "n") == b"3", timeout=2, what="the flush thread")


def test_zero_writes_each_count_at_once(redis_conn):
    Tally(redis_conn, every=0).add("c", "n", 2)
    assert redis_conn.hget("c", "n") == b"2"


def test_counts_stay_pending_while_redis_is_away_and_are_written_once(redis_conn, caplog):
    away = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    tally = Tally(away, every=3600)
    tally.add("c", "n", 5)
    tally.flush()  # refused: kept
    tally.add("c", "n", 1)
    tally.flush()
    tally.conn = redis_conn  # Redis is back
    tally.flush()
    tally.flush()
    assert redis_conn.hget("c", "n") == b"6"
    said = [r.getMessage() for r in caplog.records if r.name == "workers.tally"]
    assert len(said) == 2 and "not written" in said[0] and said[1] == "counts written again"  # once an outage


def test_a_fork_does_not_write_its_parents_pending_counts(redis_conn):
    tally = Tally(redis_conn, every=3600)
    tally.add("c", "parent", 1)
    pid = os.fork()
    if pid == 0:  # the child: its own count only, then out without the parent's atexit
        try:
            tally.add("c", "child", 1)
            flush_all()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    tally.flush()
    assert redis_conn.hgetall("c") == {b"parent": b"1", b"child": b"1"}


@pytest.mark.slow
def test_gunicorn_writes_its_pending_counts_when_stopped(settings_env, redis_conn, simulator):
    """An API that counts once an hour: its counts reach Redis when SIGTERM stops it, not later."""
    port = free_port()
    env = {**os.environ, **settings_env, "SMSGW_COUNT_FLUSH_SECONDS": "3600"}
    command = [sys.executable, "-m", "gateway.cli", "api", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    api = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", timeout=30)
        for i in range(20):
            r = requests.post(
                f"{base}/v1/messages",
                json={"to": [f"1380013{i:04d}"], "text": "hello"},
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=10,
            )
            assert r.status_code == 202, r.text
        assert redis_conn.hget(schema.COUNTS, "accepted_single") is None  # pending in the workers
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=40) == 0
    finally:
        if api.poll() is None:
            api.kill()
    assert redis_conn.hget(schema.COUNTS, "accepted_single") == b"20"
    day = schema.usage_day(time.time())
    assert redis_conn.hget(schema.usage_key("tester", day), "single") == b"20"


@pytest.mark.slow
def test_a_worker_writes_its_counts_within_a_second(settings_env, redis_conn, simulator, workers, api):
    """The production default, end to end: a report's counts reach Redis about a second late."""
    workers.env["SMSGW_COUNT_FLUSH_SECONDS"] = "1"
    workers.start("w1")
    r = api.post("/v1/messages", json={"to": ["13800138000"], "text": "hello"}, headers=AUTH)
    assert r.status_code == 202
    mid = r.get_json()["id"]
    wait_for(lambda: api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["status"] == "delivered", what="delivered")
    # The message's state is written at once; its report's count follows within the interval.
    wait_for(lambda: redis_conn.hget(schema.COUNTS, "reports_delivered") == b"1", timeout=3, what="the report's count")
