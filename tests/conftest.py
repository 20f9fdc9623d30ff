"""Shared fixtures: our own Redis server per session, the simulator on a free loopback port.

No test may touch a Redis it did not start: the default settings point at an address that
cannot resolve, and the only server flushed is the one this suite started.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import psutil
import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler

from devkit.redis_server import RedisServer
from devkit.simulator import SimState, SimulatorServer
from gateway import create_app
from workers import coalesce, lifecycle, notifications
from workers.queues import WORKER_QUEUES
from workers.runtime import Runtime, install
from workers.settings import Settings, settings_from_env
from workers.storage import schema

FORGOT_REDIS = "redis://forgot-the-redis-fixture.invalid:1"


API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture
def redis_conn(redis_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()  # our own server, started above
    yield conn
    conn.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every request sent to Redis from here on (a pipeline is one)."""
    sent: list[Any] = []
    real = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> Any:
        sent.append(command)
        return real(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    return sent


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    server = SimulatorServer(SimState(uid="test", password="s3cret+%pass")).start()
    yield server
    server.stop()


#: What every test's settings share: fast retries, a short provider timeout, one API key.
TEST_ENV = {
    "SMSGW_PROVIDER_UID": "test",
    "SMSGW_PROVIDER_PASSWORD": "s3cret+%pass",
    "SMSGW_PROVIDER_TIMEOUT": "2",
    "SMSGW_API_KEYS": f"tester:{API_KEY}",
    "SMSGW_RETRY_BASE_SECONDS": "0.2",
    "SMSGW_RETRY_MAX_SECONDS": "1",
    # Ambiguous outcomes wait this long for a report before a new linkid (production: 900 s).
    "SMSGW_AMBIGUOUS_WAIT_SECONDS": "1",
    # The simulator on loopback is a development default: smsgw api/worker refuse it otherwise.
    "SMSGW_ALLOW_DEV_DEFAULTS": "1",
    # /metrics on the API's port: the test client has one port (tests/test_metrics.py checks the
    # production default, a port of its own).
    "SMSGW_METRICS_BIND": "",
    # Counts written at once, so a test reads them right after what it did; the production
    # default (1 s, added up in the process) has tests of its own (tests/test_tally.py).
    "SMSGW_COUNT_FLUSH_SECONDS": "0",
}


def make_settings(redis_url: str = FORGOT_REDIS, **env: str) -> Settings:
    """Settings as the environment would give them; unset Redis fails loudly."""
    return settings_from_env({**TEST_ENV, **env}, redis_url=redis_url)


@pytest.fixture
def settings_env(redis_server: RedisServer, simulator: SimulatorServer) -> dict[str, str]:
    """The environment a real worker process gets: our Redis, our simulator."""
    return {
        **TEST_ENV,
        "SMSGW_REDIS_URL": redis_server.url,
        "SMSGW_PROVIDER_URL": simulator.api_url,
        "SMSGW_SWEEP_SECONDS": "1",
        "SMSGW_JOB_GRACE_SECONDS": "2",
        "SMSGW_BALANCE_CHECK_SECONDS": "1",
        "SMSGW_CALLBACK_SECRET": "push-secret-123",
        "SMSGW_PULL_GAP_SECONDS": "0.01",
        "SMSGW_PULL_INTERVAL_SECONDS": "1",
        "SMSGW_LEASE_SECONDS": "2",
        # Callback receivers listen on loopback, as on a developer's machine (tests/test_egress.py
        # checks the rules with this setting off).
        "SMSGW_CALLBACK_ALLOW_LOOPBACK": "1",
    }


@pytest.fixture
def settings(settings_env: dict[str, str], redis_conn: redis.Redis) -> Settings:
    return settings_from_env(settings_env)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(settings)
    install(rt)
    yield rt
    install(None)


@pytest.fixture
def app(settings: Settings, runtime: Runtime) -> Flask:
    app = create_app(settings)
    app.testing = True
    return app


@pytest.fixture
def api(app: Flask) -> FlaskClient:
    return app.test_client()


AUTH = {"Authorization": f"Bearer {API_KEY}"}
OTHER_KEY = "other-key-0123456789abcdef"
MINE = AUTH
THEIRS = {"Authorization": f"Bearer {OTHER_KEY}"}


@pytest.fixture
def two_keys(settings_env, runtime):
    """The API with a second key (``THEIRS``) and an operator login: for what keys may not see."""
    env = {
        **settings_env,
        "SMSGW_API_KEYS": f"tester:{API_KEY},other:{OTHER_KEY}",
        "SMSGW_OPERATOR_PASSWORD": "operator-pass-123",
    }
    return create_app(settings_from_env(env)).test_client()


def drain(rt: Runtime, *, timeout: float = 20.0, until: Callable[[], bool] | None = None) -> None:
    """Run every due job in this process (RQ's SimpleWorker, no fork), including scheduled ones
    as they come due, until nothing is left to do (or ``until()`` holds)."""
    queues = [Queue(q, connection=rt.conn) for q in WORKER_QUEUES]
    scheduler = RQScheduler(queues, connection=rt.conn)
    scheduler.acquire_locks()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            scheduler.enqueue_scheduled_jobs()
            coalesce.flush_due(rt, now=float("inf"))  # pools leave now, not at their window's end
            SimpleWorker(queues, connection=rt.conn).work(burst=True, logging_level="WARNING")
            notifications.deliver_due(rt)
            if until is not None and until():
                return
            idle = not any(q.count for q in queues) and not _scheduled(rt) and not rt.conn.zcard(schema.POOLS)
            idle = idle and not rt.conn.zcard(schema.CALLBACKS_DUE)
            if until is None and idle:
                return
            time.sleep(0.05)
    finally:
        scheduler.release_locks()
    raise AssertionError("jobs did not finish in time")


def waiting(conn: redis.Redis) -> int:
    """Work waiting for a worker: queued jobs and sends in coalescing pools."""
    pools = [raw for raw in conn.zrange(schema.POOLS, 0, -1)]
    jobs = sum(Queue(q, connection=conn).count for q in WORKER_QUEUES)
    return jobs + sum(conn.zcard(p) for p in pools)


def carrier(conn: redis.Redis, mid: str) -> bytes:
    """What a linkid of the message maps to: its own chunk 0, or its batch's chunk that carries
    it (a coalesced one-recipient message)."""
    via = conn.hget(schema.message_key(mid), schema.Message.field_of("via"))
    if via:
        [chunk] = lifecycle.member_chunks(conn, mid, via.decode())
        return f"{chunk.mid}:{chunk.n}".encode()
    return f"{mid}:0".encode()


def _scheduled(rt: Runtime) -> int:
    return sum(ScheduledJobRegistry(q, connection=rt.conn).count for q in WORKER_QUEUES)


def stored_values(conn: redis.Redis, pattern: str = "*") -> bytes:
    """Every key's name and value under the pattern, values read by type: what a secret must
    not be found in (a name is written too). Not DUMP, which compresses a value (LZF) when it
    can, so a code could hide in it, and a test that looks for one finds it or not by chance."""
    out = b""
    for key in conn.scan_iter(match=pattern):
        out += key + b" "
        kind = conn.type(key)
        if kind == b"hash":
            out += b"|".join(k + b"=" + v for k, v in conn.hgetall(key).items())
        elif kind == b"list":
            out += b"|".join(conn.lrange(key, 0, -1))
        elif kind == b"string":
            out += conn.get(key) or b""
        elif kind == b"zset":
            out += b"|".join(conn.zrange(key, 0, -1))
        elif kind == b"set":
            out += b"|".join(sorted(conn.smembers(key)))
        elif kind == b"stream":
            out += repr(conn.xrange(key)).encode()
        out += b"\n"
    return out


def chunks_of(conn: redis.Redis, mid: str) -> list[schema.Chunk]:
    seq = int(conn.hget(schema.message_key(mid), schema.Message.field_of("chunk_seq")) or 0)
    return [c for c in (schema.Chunk.load(conn, mid, n) for n in range(seq)) if c is not None]


def sent_or_unconfirmed(conn: redis.Redis, sim: SimulatorServer, mids: list[str]) -> list[str]:
    """Every mobile the provider took, plus those of chunks left unconfirmed: an ambiguous call
    that no report confirmed is never resent (it may have gone out), so it is accounted for, not
    lost. The two together are what 'nothing lost, nothing twice' compares."""
    taken = [m for s in sim_submissions(sim) for m in s["mobiles"]]
    return taken + [m for mid in mids for c in chunks_of(conn, mid) if c.unconfirmed for m in c.mobiles]


def sim_submissions(sim: SimulatorServer) -> list[dict[str, Any]]:
    return requests.get(f"{sim.url}/_sim/submissions", timeout=5).json()


def sim_admin(sim: SimulatorServer, path: str, **body: Any) -> dict[str, Any]:
    response = requests.post(f"{sim.url}/_sim/{path}", json=body, timeout=5)
    response.raise_for_status()
    return response.json()


class Receiver(BaseHTTPRequestHandler):
    fail_first: ClassVar[int] = 0
    calls: ClassVar[int] = 0
    bodies: ClassVar[list[tuple[dict, dict]]] = []
    redirect_to: ClassVar[str] = ""

    def do_POST(self) -> None:
        Receiver.calls += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.redirect_to:
            self.send_response(302)
            self.send_header("Location", Receiver.redirect_to)
        elif Receiver.calls <= Receiver.fail_first:
            self.send_response(503)
        else:
            Receiver.bodies.append((dict(self.headers), json.loads(body)))
            secret = hashlib.sha256(b"smsgw-callback:" + API_KEY.encode()).hexdigest()
            expected = hmac.new(
                secret.encode(), self.headers["X-Smsgw-Timestamp"].encode() + b"." + body, hashlib.sha256
            ).hexdigest()
            self.send_response(200 if self.headers["X-Smsgw-Signature"] == f"v1={expected}" else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    Receiver.calls, Receiver.bodies, Receiver.fail_first, Receiver.redirect_to = 0, [], 0, ""
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()
    thread.join()


class Workers:
    def __init__(self, env: dict[str, str], logdir: str = "/tmp") -> None:
        self.env = {**os.environ, **env}
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = open(f"{self.logdir}/{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker", "--name", name],
            env=self.env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its work horse, as a host crash would. RQ's horse runs in a
        session of its own, so killing the parent's process group alone would spare it."""
        victims = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        for victim in victims:
            victim.kill()
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def workers(settings_env: dict[str, str], redis_conn: redis.Redis, tmp_path) -> Iterator[Workers]:
    pool = Workers(settings_env, str(tmp_path))
    yield pool
    pool.stop_all()


def wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
