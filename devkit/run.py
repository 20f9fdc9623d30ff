"""``smsgw run`` / ``make run``: the whole gateway on one machine with embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from devkit.redis_server import RedisServer
from workers.settings import SAMPLE_API_KEY as LOCAL_API_KEY
from workers.settings import settings_from_env, switched_off

LOCAL_PUSH_SECRET = "local-push-secret"
LOCAL_OPERATOR_PASSWORD = "local-operator"
BANNER = """
smsgw is running (Ctrl-C stops everything):
  redis      {redis}
  simulator  {sim}   (what reached the provider: {sim}/_sim/submissions)
  api        {api}   (reference: {api}/docs)
  logs       {run}/api.log, worker.log, simulator.log (here: warnings and errors only)

Send a message end to end:
  curl -s -X POST {api}/v1/messages -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"to": ["13800138000"], "text": "您好，验证码 123456"}}'
Then look it up with the Location it returns (delivered within a few seconds):
  curl -s {api}/v1/messages/<id> -H 'Authorization: Bearer {key}'
The operator CLI, in another terminal in this folder, finds this stack by itself ({run}/env):
  .venv/bin/smsgw status <id>      .venv/bin/smsgw accounts list      .venv/bin/smsgw failed list

{switches}
"""


def switches(env: dict[str, str], api: str) -> str:
    """What is on and off, and the setting that changes it: nothing is silently off."""
    # The local default is shown; a password of the user's own is not printed.
    password = LOCAL_OPERATOR_PASSWORD if env["SMSGW_OPERATOR_PASSWORD"] == LOCAL_OPERATOR_PASSWORD else "yours"
    on = [
        f"dashboard   {api}/dashboard/  (user operator, password {password})",
        "push        the simulator pushes reports to /callbacks/provider/<SMSGW_CALLBACK_SECRET>",
    ]
    off = switched_off(settings_from_env(env))
    lines = ["On:"] + [f"  {line}" for line in on] + ["Off until set:"]
    lines += [f"  {what:<30} {setting}" for what, setting in off]
    return "\n".join(lines)


class RunError(Exception):
    """``make run`` cannot start or keep going; the message says why and what to do."""


def port_taken(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:``port`` (a bind would fail). The probe
    binds as gunicorn and the simulator do, with ``SO_REUSEADDR``: a port whose last connections
    wait out TIME_WAIT (a ``make run`` stopped seconds ago) is free to them, so it is free here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def run_local(*, api_port: int, simulator_port: int) -> None:
    """Start everything, print the banner, and stay until Ctrl-C or a part dies (then raise
    :class:`RunError` naming it: the exit is non-zero)."""
    for port, what, variable in ((api_port, "API", "API_PORT"), (simulator_port, "simulator", "SIM_PORT")):
        if port_taken(port):
            raise RunError(
                f"port {port} on 127.0.0.1 is taken by another program, so the {what} cannot listen there; "
                f"stop it, or choose other ports: make run {variable}={port + 10}"
                + (" SIM_PORT=…" if variable == "API_PORT" else "")
            )
    # SIGTERM (e.g. from a supervisor) stops everything the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = Path.cwd() / ".run"
    root.mkdir(exist_ok=True)
    redis_server = RedisServer(str(root / "redis")).start()
    children: dict[str, subprocess.Popen[bytes]] = {}
    sim_url = f"http://127.0.0.1:{simulator_port}"
    env = {
        **os.environ,
        "SMSGW_REDIS_URL": redis_server.url,
        "SMSGW_PROVIDER_URL": os.environ.get("SMSGW_PROVIDER_URL", f"{sim_url}/smsmarketing/wwwroot/api/"),
        "SMSGW_PROVIDER_UID": os.environ.get("SMSGW_PROVIDER_UID", "test"),
        "SMSGW_PROVIDER_PASSWORD": os.environ.get("SMSGW_PROVIDER_PASSWORD", "secret"),
        "SMSGW_API_KEYS": os.environ.get("SMSGW_API_KEYS", f"local:{LOCAL_API_KEY}"),
        # The simulator pushes reports to the API, so a message shows delivered within seconds
        # (the first pull could be a minute away); the dashboard gets a local password.
        "SMSGW_CALLBACK_SECRET": os.environ.get("SMSGW_CALLBACK_SECRET", LOCAL_PUSH_SECRET),
        "SMSGW_OPERATOR_PASSWORD": os.environ.get("SMSGW_OPERATOR_PASSWORD", LOCAL_OPERATOR_PASSWORD),
        "SMSGW_RUN_DIR": str(root),
        "SMSGW_ALLOW_DEV_DEFAULTS": "1",
        # Callbacks to a receiver on this machine (http://127.0.0.1:9000/hook): development only.
        "SMSGW_CALLBACK_ALLOW_LOOPBACK": os.environ.get("SMSGW_CALLBACK_ALLOW_LOOPBACK", "1"),
        "SMSGW_REDIS_DURABILITY": os.environ.get("SMSGW_REDIS_DURABILITY", "warn"),
        # /metrics on the API's port: one port less to find locally (production: its own).
        "SMSGW_METRICS_BIND": os.environ.get("SMSGW_METRICS_BIND", ""),
        "SMSGW_LOG_FORMAT": "json",  # the terminal shows warnings and errors; the files hold all
    }
    py = sys.executable
    api_url = f"http://127.0.0.1:{api_port}"
    push_url = f"{api_url}/callbacks/provider/{env['SMSGW_CALLBACK_SECRET']}"
    commands = {
        "simulator": [
            *(py, "-m", "devkit.simulator", "--port", str(simulator_port), "--uid", env["SMSGW_PROVIDER_UID"]),
            *("--password", env["SMSGW_PROVIDER_PASSWORD"], "--push-url", push_url),
        ],
        "api": [py, "-m", "gateway.cli", "api", "--bind", f"127.0.0.1:{api_port}", "--workers", "2"],
        "worker": [py, "-m", "gateway.cli", "worker", "--name", "local-worker"],
    }
    env_file = root / "env"
    try:
        children["simulator"] = _start("simulator", commands["simulator"], env, root)
        wait_ready(f"{sim_url}/_sim/state", lambda r: r.ok and "submissions" in r.text, children, "simulator")
        children["api"] = _start("api", commands["api"], env, root)
        children["worker"] = _start("worker", commands["worker"], env, root)
        wait_ready(f"{api_url}/readyz", lambda r: r.ok and r.json().get("redis") == "ok", children, "API")
        _write_env(env_file, env)
        key = env["SMSGW_API_KEYS"].split(",")[0].partition(":")[2]
        banner = BANNER.format(
            redis=redis_server.url, sim=sim_url, api=api_url, key=key, switches=switches(env, api_url), run=root
        )
        print(banner, flush=True)  # noqa: T201
        _serve_forever(children)
    finally:
        env_file.unlink(missing_ok=True)
        # API and worker first (the worker finishes the provider call in hand and records it),
        # then the simulator, Redis last. One SIGTERM each: a second signal would make RQ's
        # worker abandon its job.
        for group in ([children[n] for n in ("api", "worker") if n in children], list(children.values())):
            stop(group, timeout=60)
        redis_server.stop()


def _start(name: str, command: list[str], env: dict[str, str], root: Path) -> subprocess.Popen[bytes]:
    """A child whose output goes whole to ``.run/<name>.log``; the terminal gets its warnings,
    errors and anything that is not a log line (a traceback), one short line each."""
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threading.Thread(target=_relay, args=(name, proc, root / f"{name}.log"), daemon=True).start()
    return proc


def _relay(name: str, proc: subprocess.Popen[bytes], path: Path) -> None:
    assert proc.stdout is not None
    with path.open("ab") as log:
        for raw in proc.stdout:
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").rstrip()
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if line and not line.startswith(QUIET_PREFIXES):
                    print(f"{name:>9} | {line}", flush=True)  # noqa: T201
            elif record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                print(f"{name:>9} | {record['level']} {record.get('message', '')}", flush=True)  # noqa: T201


#: Lines a child prints that say nothing a developer needs in the terminal (the file keeps them).
QUIET_PREFIXES = ("smsgw: ", "smsgw-simulator listening", "*", " * ", "WARNING: This is a development server")


def _write_env(path: Path, env: dict[str, str]) -> None:
    """The running stack's settings for the operator CLI: ``smsgw status <id>`` in the same folder
    reads them by itself while ``make run`` runs (``gateway.cli.load_settings``)."""
    lines = [f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("SMSGW_")]
    path.write_text("# written by make run while it runs; removed when it stops\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)


def stop(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """One SIGTERM to each that still runs, then wait; SIGKILL what outlives ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Until the URL answers at all (any status), for at most ``timeout`` seconds (tests and
    benchmarks, whose ports are free ones they chose)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def wait_ready(
    url: str,
    ours: Callable[[requests.Response], bool],
    children: dict[str, subprocess.Popen[bytes]],
    what: str,
    timeout: float = 30.0,
) -> None:
    """Until ``url`` answers as smsgw's would (``ours``): another server's answer on the port is
    not readiness. Raises :class:`RunError` when a child exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, child in children.items():
            if child.poll() is not None:
                raise RunError(f"the {name} exited with status {child.returncode} while starting (see .run/{name}.log)")
        try:
            if ours(requests.get(url, timeout=1)):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.1)
    raise RunError(f"the {what} did not answer at {url} within {timeout:.0f} s (see .run/*.log)")


def _serve_forever(children: dict[str, subprocess.Popen[bytes]]) -> None:
    try:
        while True:
            for name, child in children.items():
                if child.poll() is not None:
                    raise RunError(f"the {name} exited with status {child.returncode}: stopping (see .run/{name}.log)")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)  # noqa: T201
