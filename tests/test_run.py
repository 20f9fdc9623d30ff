"""`smsgw run` (what `make run` starts): end to end with the printed curl, and Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from tests.test_metrics import free_port

pytestmark = pytest.mark.slow


def test_run_sends_end_to_end_and_ctrl_c_stops_everything(tmp_path):
    api_port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSGW_")}
    run = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--api-port", str(api_port), "--simulator-port", str(sim_port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert run.stdout is not None
    try:
        banner = ""
        deadline = time.monotonic() + 60
        while "smsgw failed list" not in banner and time.monotonic() < deadline:
            banner += run.stdout.readline()
        curl = re.search(r"curl -s -X POST .*?\}'", banner.replace("\\\n", " "), re.S)
        assert curl, banner
        args = shlex.split(curl.group(0))
        headers = dict(h.split(": ", 1) for h in (args[i + 1] for i, a in enumerate(args) if a == "-H"))
        body = args[args.index("-d") + 1]
        url = next(a for a in args if a.startswith("http"))
        r = requests.post(url, data=body.encode(), headers=headers, timeout=10)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            subs = requests.get(f"http://127.0.0.1:{sim_port}/_sim/submissions", timeout=5).json()
            if subs:
                break
            time.sleep(0.2)
        assert subs and subs[0]["texts"] == ["您好，验证码 123456"]
        # The operator CLI beside it, as the banner says: no settings, it finds .run/env itself.
        assert ".venv/bin/smsgw status <id>" in banner and (tmp_path / ".run" / "env").exists()
        status = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", r.json()["id"]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0 and '"status"' in status.stdout, status.stderr
        assert "using the settings of the make run in this folder" in status.stderr
        children = psutil.Process(run.pid).children(recursive=True)
        assert len(children) >= 4  # simulator, API (gunicorn and its workers), worker, Redis
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
        run.stdout.close()
    time.sleep(1)
    assert [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    assert not (tmp_path / ".run" / "env").exists()  # the CLI does not find a stack that stopped


def test_run_with_its_port_taken_fails_at_once_naming_the_port(tmp_path):
    """Another server on the API's port: no "smsgw is running", a non-zero exit, the port named
    and the way out (other ports); nothing is left running."""
    import http.server
    import threading

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    taken = other.server_address[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSGW_")}
    try:
        started = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "run",
                "--api-port",
                str(taken),
                "--simulator-port",
                str(free_port()),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        other.shutdown()
        other.server_close()
    assert out.returncode != 0 and time.monotonic() - started < 10
    assert f"port {taken}" in out.stderr and "API_PORT=" in out.stderr and "smsgw is running" not in out.stdout


def test_a_port_a_stopped_run_left_in_time_wait_is_free_and_a_listening_one_is_not():
    """``make run`` seconds after another stopped: the port's last connection waits out
    TIME_WAIT, which gunicorn's bind (``SO_REUSEADDR``) ignores, so the check must too."""
    import socket

    from devkit.run import port_taken

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    assert port_taken(port)
    served.close()  # the server's side closes first, as a stopped server's does: it is left in TIME_WAIT
    client.close()
    listener.close()
    deadline = time.monotonic() + 5
    while (states := [c.status for c in psutil.net_connections("tcp4") if c.laddr and c.laddr.port == port]) != [
        psutil.CONN_TIME_WAIT
    ] and time.monotonic() < deadline:
        time.sleep(0.05)  # the client's FIN takes the served side from FIN_WAIT2 to TIME_WAIT
    assert states == [psutil.CONN_TIME_WAIT]
    assert not port_taken(port)
