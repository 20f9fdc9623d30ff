"""The API as production runs it (``smsgw api``: gunicorn, gevent workers) over real sockets:
slow clients cannot stall it, streamed bodies are bounded, the access log keeps no secret."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import AUTH, sim_submissions, stored_values, wait_for
from tests.test_metrics import free_port

pytestmark = pytest.mark.slow
PUSH_SECRET = "push-secret-123"


@pytest.fixture
def server(settings_env, tmp_path) -> Iterator[tuple[str, object]]:
    with running_api(settings_env, tmp_path) as started:
        yield started


@contextlib.contextmanager
def running_api(settings_env, tmp_path) -> Iterator[tuple[str, object]]:
    """``smsgw api`` with 2 processes; SIGTERM and its exit waited for on the way out."""
    port = free_port()
    log_path = tmp_path / "api.log"
    env = {
        **os.environ,
        **settings_env,
        "SMSGW_MAX_BODY_BYTES": "65536",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    command = [sys.executable, "-m", "gateway.cli", "api", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.1)
    try:
        yield base, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def slowloris(port: int, count: int, stop: threading.Event) -> list[socket.socket]:
    """``count`` connections that send one header byte a second and never finish."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)

    def drip() -> None:
        while not stop.wait(1.0):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(b"X")

    threading.Thread(target=drip, daemon=True).start()
    return socks


def test_dozens_of_slow_sockets_do_not_stall_health_or_sends(server):
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    stop = threading.Event()
    socks = slowloris(port, 48, stop)  # far more than 2 workers (or 2 x a thread pool)
    try:
        time.sleep(1.5)
        worst = 0.0
        for _ in range(5):
            started = time.monotonic()
            assert requests.get(f"{base}/healthz", timeout=5).ok
            body = {"to": ["13800138000"], "text": "still here"}
            assert requests.post(f"{base}/v1/messages", json=body, headers=AUTH, timeout=5).status_code == 202
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.5)
        assert worst < 1.0, worst
    finally:
        stop.set()
        for s in socks:
            s.close()


def test_a_chunked_body_over_the_limit_is_413(server):
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    payload = json.dumps({"to": ["13800138000"], "text": "x"}).encode() + b" " * 70000 + b"garbage"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"POST /v1/messages HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}\r\nContent-Type: application/json\r\n"
        s.sendall(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(payload), 8192):
            piece = payload[i : i + 8192]
            s.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        answer = s.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]


AUTH_LINE = f"Authorization: {AUTH['Authorization']}"


def test_the_access_log_holds_neither_the_push_secret_nor_a_mobile(server):
    base, log_path = server
    query = "Class=rpt&Mobile=13912345678&LinkId=abc&Report=DELIVRD&ReportTime=2030-01-01+10:00:00"
    assert requests.get(f"{base}/callbacks/provider/{PUSH_SECRET}?{query}", timeout=5).ok
    for _ in range(20):  # taken pushes are counted, not logged a line each
        assert requests.get(f"{base}/callbacks/provider/{PUSH_SECRET}?{query}", timeout=5).ok
    bad = requests.get(f"{base}/callbacks/provider/{PUSH_SECRET}?Class=rpt&Mobile=13912345678", timeout=5)
    assert bad.status_code >= 400
    assert requests.get(f"{base}/healthz", timeout=5).ok
    time.sleep(0.5)
    text = log_path.read_text()
    push_lines = [line for line in text.splitlines() if "/callbacks/provider/<secret>" in line]
    assert len(push_lines) == 1 and str(bad.status_code) in push_lines[0]  # the refused one, by shape
    assert PUSH_SECRET not in text and "13912345678" not in text
    assert "MonkeyPatchWarning" not in text  # nothing imports ssl in gunicorn's arbiter
    assert "alert webhook is off until SMSGW_ALERT_WEBHOOK_URL is set" in text  # nothing silently off


def test_each_api_process_freezes_its_startup_heap(server):
    """gunicorn calls the config's post_worker_init in each process once the app is loaded:
    a full garbage collection no longer walks the imports (50 ms pauses in the accept's p99)."""
    _, log_path = server

    def frozen() -> list[str]:
        return [line for line in log_path.read_text().splitlines() if "startup heap frozen" in line]

    wait_for(lambda: len(frozen()) >= 2, timeout=30, what="both processes' lines")
    assert all(int(line.split("frozen: ")[1].split()[0]) > 10_000 for line in frozen()), frozen()


def test_api_processes_stop_without_a_traceback(settings_env, tmp_path):
    """A frozen heap is thawed as a process stops (gunicorn's worker_exit): frozen, logging's
    handlers outlived gevent's thread module at the interpreter's teardown, and each stop
    printed "Exception ignored in: <function _removeHandlerRef …>" with a TypeError."""
    with running_api(settings_env, tmp_path) as (_, log_path):
        wait_for(lambda: log_path.read_text().count("startup heap frozen") >= 2, timeout=30, what="both processes")
    text = log_path.read_text()
    assert text.count("Worker exiting") == 2 and "Shutting down: Master" in text, text[-2000:]
    assert "Exception ignored" not in text and "Traceback" not in text, text[-2000:]


def test_a_frequency_cap_holds_across_two_api_processes_and_two_workers(server, workers, simulator):
    """16 concurrent verification codes to one phone through two gunicorn worker processes:
    the default cap (one a minute) lets exactly one through, and two `smsgw worker` processes
    send exactly that one (issue 11's check: one counter for every process)."""
    from concurrent.futures import ThreadPoolExecutor

    base, _ = server
    body = {"to": ["13812345678"], "text": "验证码 1234", "priority": "high"}

    def post(_: int) -> str:
        r = requests.post(f"{base}/v1/messages", json=body, headers=AUTH, timeout=10)
        assert r.status_code == 202
        return str(r.json()["status"])

    with ThreadPoolExecutor(16) as pool:  # 16 connections: gunicorn spreads them over its workers
        statuses = list(pool.map(post, range(16)))
    assert statuses.count("accepted") == 1 and statuses.count("suppressed") == 15
    workers.start("cap-1")
    workers.start("cap-2")
    wait_for(lambda: len(sim_submissions(simulator)) >= 1, what="the one code at the provider")
    time.sleep(2)  # both workers' coalescers and sweeps have had their turn
    assert [s["mobiles"] for s in sim_submissions(simulator)] == [["13812345678"]]


def test_a_verification_through_real_processes_leaves_no_code_in_redis_its_aof_or_the_logs(
    server, workers, simulator, redis_server, redis_conn, tmp_path
):
    """gunicorn and a real worker, the simulator over HTTP: the code reaches the provider, is
    approved once, and neither it nor a SHA-256 of its text is in Redis, the AOF or any log."""
    import hashlib
    import re

    base, api_log = server
    workers.start("verify-1")
    body = {"to": "13812345678", "length": 10}  # ten digits: six could turn up among stored digits by chance
    r = requests.post(f"{base}/v1/verifications", json=body, headers=AUTH, timeout=10)
    assert r.status_code == 201, r.text
    vid = r.json()["id"]
    wait_for(lambda: len(sim_submissions(simulator)) >= 1, what="the code at the provider")
    [text] = sim_submissions(simulator)[0]["texts"]
    code = re.search(r"\d{10}", text).group()  # type: ignore[union-attr]
    check = {"to": "13812345678", "code": code}
    assert requests.post(f"{base}/v1/verifications/check", json=check, headers=AUTH, timeout=10).json()["status"] == (
        "approved"
    )
    assert requests.post(f"{base}/v1/verifications/check", json=check, headers=AUTH, timeout=10).status_code == 404
    wait_for(lambda: redis_conn.hget(f"sg:v:{vid}", "st") == b"approved", what="approved")
    metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert 'smsgw_verifications_total{account="default",outcome="approved"} 1.0' in metrics
    time.sleep(1.5)  # appendfsync everysec
    aof = b"".join(p.read_bytes() for p in redis_server.dir.rglob("*.aof*") if p.is_file())
    assert b"sg:v:" in aof  # the AOF is the one this Redis writes
    logs = api_log.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("verify-1.log"))
    dump = stored_values(redis_conn)
    for secret in (
        code.encode(),
        hashlib.sha256(text.encode()).hexdigest().encode(),
        hashlib.sha256(text.encode()).digest(),
    ):
        assert secret not in aof and secret not in logs and secret not in dump, secret
