"""Graceful behaviour: SIGTERM finishes what is in hand; logs are JSON without secrets."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from devkit.run import wait_http
from tests.conftest import API_KEY, AUTH, sim_admin, sim_submissions
from tests.test_metrics import free_port
from workers.logs import JsonFormatter

pytestmark = pytest.mark.slow


def test_sigterm_during_a_slow_provider_call_loses_nothing(api, settings_env, simulator, tmp_path):
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="latency", seconds=1.5)
    log = (tmp_path / "w.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "--name", "graceful"],
        env={**os.environ, **settings_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    mid = api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH).get_json()["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        chunks = api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["chunks"]
        if chunks and chunks[0]["state"] == "submitting":
            break
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    [chunk] = api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["chunks"]
    assert chunk["state"] == "submitted"
    assert len(sim_submissions(simulator)) == 1
    lines = [json.loads(line) for line in (tmp_path / "w.log").read_text().splitlines() if line.startswith("{")]
    assert any(line.get("linkid") == chunk["linkid"] for line in lines)
    assert "s3cret" not in (tmp_path / "w.log").read_text()


def test_sigterm_to_gunicorn_drains_requests_in_flight(settings_env, simulator):
    sim_admin(simulator, "fault", endpoint="user_info", mode="latency", seconds=1.2)
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "api", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    api = subprocess.Popen(
        command, env={**os.environ, **settings_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", timeout=30)
        result = {}

        def slow() -> None:
            result["r"] = requests.get(f"{base}/v1/balance", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)
        api.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert result["r"].status_code == 200 and result["r"].json()["balance"]
        assert api.wait(timeout=40) == 0
    finally:
        if api.poll() is None:
            api.kill()


def test_json_log_lines_carry_context():
    record = logging.LogRecord("smsgw.jobs", logging.INFO, __file__, 1, "sent %s", ("x",), None)
    record.message_id, record.linkid, record.account = "m1", "L1", "default"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "sent x" and line["message_id"] == "m1" and line["linkid"] == "L1"


def test_sigterm_while_redis_cannot_be_reached_still_stops_the_worker(tmp_path, settings_env):
    """A stop asked while Redis is unreachable must not turn into a wait for Redis: RQ's own
    stop handler needs Redis, fails, and used to leave the worker pinging a server that is gone.
    The socket file is moved away, as a second ``smsgw run`` did: the connections the worker
    holds still work, new ones fail."""
    from devkit.redis_server import RedisServer

    server = RedisServer(str(tmp_path / "r")).start()
    env = {**os.environ, **settings_env, "SMSGW_REDIS_URL": server.url}
    log = (tmp_path / "w.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "--name", "orphaned"], env=env, stdout=log, stderr=log
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while b"Listening on" not in (tmp_path / "w.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        server.socket.rename(tmp_path / "moved.sock")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, (tmp_path / "w.log").read_text()[-2000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        (tmp_path / "moved.sock").rename(server.socket)
        server.stop()
