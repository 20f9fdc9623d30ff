"""``smsgw run`` / ``make run``: the whole gateway on one machine with embedded defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
  api        {api}   (spec: {api}/openapi.json)

Send a message end to end:
  curl -s -X POST {api}/v1/messages -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"to": ["13800138000"], "text": "您好，验证码 123456"}}'
Then look it up with the Location it returns (delivered within a few seconds):
  curl -s {api}/v1/messages/<id> -H 'Authorization: Bearer {key}'

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


def run_local(*, api_port: int, simulator_port: int) -> None:
    # SIGTERM (e.g. from a supervisor) stops everything the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = Path.cwd() / ".run"
    root.mkdir(exist_ok=True)
    redis_server = RedisServer(str(root / "redis")).start()
    children: list[subprocess.Popen[bytes]] = []
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
    }
    py = sys.executable
    try:
        children.append(
            subprocess.Popen(
                [
                    py,
                    "-m",
                    "devkit.simulator",
                    "--port",
                    str(simulator_port),
                    "--uid",
                    env["SMSGW_PROVIDER_UID"],
                    "--password",
                    env["SMSGW_PROVIDER_PASSWORD"],
                    "--push-url",
                    f"http://127.0.0.1:{api_port}/callbacks/provider/{env['SMSGW_CALLBACK_SECRET']}",
                ],
                env=env,
                start_new_session=True,
            )
        )
        wait_http(f"{sim_url}/_sim/state")
        api_url = f"http://127.0.0.1:{api_port}"
        children.append(
            subprocess.Popen(
                [py, "-m", "gateway.cli", "api", "--bind", f"127.0.0.1:{api_port}", "--workers", "2"],
                env=env,
                start_new_session=True,
            )
        )
        children.append(
            subprocess.Popen(
                [py, "-m", "gateway.cli", "worker", "--name", "local-worker"], env=env, start_new_session=True
            )
        )
        wait_http(f"{api_url}/readyz")
        key = env["SMSGW_API_KEYS"].split(",")[0].partition(":")[2]
        banner = BANNER.format(
            redis=redis_server.url, sim=sim_url, api=api_url, key=key, switches=switches(env, api_url)
        )
        print(banner, flush=True)  # noqa: T201
        _serve_forever(children)
    finally:
        # API and worker first (the worker finishes the provider call in hand and records it),
        # then the simulator, Redis last. One SIGTERM each: a second signal would make RQ's
        # worker abandon its job.
        for group in (children[1:], children[:1]):
            stop(group, timeout=60)
        redis_server.stop()


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
    """Until the URL answers at all (any status), for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _serve_forever(children: list[subprocess.Popen[bytes]]) -> None:
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)  # noqa: T201
