"""smsgw under real load, against baselines measured in the same run (issue 12 §3).

Starts what it needs: a private Redis, the provider simulator in its own process answering
every call in 100 ms, the API under gunicorn as in production (``smsgw api``, 2 processes),
4 ``smsgw worker`` processes; and the baseline: the plain job-per-message Flask + RQ pipeline
(``bench.plain``) under the same gunicorn settings with 4 ``rq worker`` processes. A small
asyncio HTTP/1.1 client with keep-alive connections drives them over loopback sockets. Every
scenario runs ``BENCH_RUNS`` times (default 3; the slow plain pipeline once) and the medians
are printed as one table and written to ``bench/results/latest.md``.

POST → provider is measured per message: from the moment its POST was written to the moment
the simulator recorded the submission that carried its mobile (every message has its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import redis
import requests

from devkit.redis_server import RedisServer
from devkit.run import stop, wait_http
from workers import archive, pullers, reports
from workers.runtime import Runtime
from workers.settings import settings_from_env
from workers.storage import schema

KEY = "bench-key-0123456789abcdef"
LATENCY = 0.1
WORKERS = 4
CONNECTIONS = 32
OTP = 2000
WARM_UP = 500  # POSTs before an accept-only run is measured
CAMPAIGN = 100_000
RESULTS = Path(__file__).parent / "results" / "latest.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the load generator ------------------------------------------------------------------------


@dataclass
class Posted:
    mobile: str
    started: float  # epoch seconds, as the simulator records submissions
    seconds: float
    status: int


async def _connection(
    port: int, work: asyncio.Queue[tuple[str, bytes]], out: list[Posted], path: str, content_type: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\nContent-Type: {content_type}\r\n"
    try:
        while not work.empty():
            mobile, body = work.get_nowait()
            started, t0 = time.time(), time.perf_counter()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", raw)
            await reader.readexactly(int(length.group(1)) if length else 0)
            out.append(Posted(mobile, started, time.perf_counter() - t0, int(raw.split(b" ", 2)[1])))
    finally:
        writer.close()


def drive(
    port: int,
    bodies: list[tuple[str, dict[str, object]]] | list[tuple[str, bytes]],
    path: str = "/v1/messages",
    content_type: str = "application/json",
) -> list[Posted]:
    """POST every body (a dict goes as JSON) over ``CONNECTIONS`` keep-alive connections;
    returns one row per POST."""
    work: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for mobile, body in bodies:
        raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        work.put_nowait((mobile, raw))
    out: list[Posted] = []

    async def all_of_them() -> None:
        await asyncio.gather(*(_connection(port, work, out, path, content_type) for _ in range(CONNECTIONS)))

    asyncio.run(all_of_them())
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# -- the processes -------------------------------------------------------------------------------


class Stack:
    """Every process of one benchmark run; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="smsgw-load-")
        self.redis = RedisServer(self.tmp).start()
        self.conn = redis.Redis.from_url(self.redis.url)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sim_port = free_port()
        self.sim = f"http://127.0.0.1:{self.sim_port}"
        self.log = open(os.path.join(self.tmp, "processes.log"), "ab")  # noqa: SIM115
        self.env = {
            **os.environ,
            "SMSGW_REDIS_URL": self.redis.url,
            "SMSGW_PROVIDER_URL": f"{self.sim}/smsmarketing/wwwroot/api/",
            "SMSGW_PROVIDER_UID": "test",
            "SMSGW_PROVIDER_PASSWORD": "secret",
            "SMSGW_API_KEYS": f"bench:{KEY}",
            "SMSGW_ALLOW_DEV_DEFAULTS": "1",
            "SMSGW_PULL_INTERVAL_SECONDS": "1",
            "SMSGW_PULL_GAP_SECONDS": "0.01",
            "SMSGW_MOBILE_CAPS_HIGH": "",
            "SMSGW_LOG_LEVEL": "WARNING",
            "SMSGW_LEASE_SECONDS": "2",
            "SMSGW_CALLBACK_SECRET": PUSH_SECRET,
            "SMSGW_METRICS_BIND": "",  # /metrics on each API's own port: several APIs run at once
            "PLAIN_REDIS_URL": self.redis.url,
            "PLAIN_PROVIDER_URL": f"{self.sim}/smsmarketing/wwwroot/api/",
        }

    def start(self, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, env={**self.env, **env}, stdout=self.log, stderr=self.log)
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        chosen = self.procs if procs is None else procs
        stop(chosen, timeout=15)
        self.procs = [p for p in self.procs if p not in chosen]

    def simulator(self) -> None:
        self.start(
            [
                sys.executable,
                "-m",
                "devkit.simulator",
                "--port",
                str(self.sim_port),
                "--balance",
                "1000000000",
                "--max-chars",
                "500",
            ]
        )
        wait_http(f"{self.sim}/_sim/state")
        self.slow_sends()

    def slow_sends(self) -> None:
        """Every send answers in ``LATENCY`` (pulls answer at once: 100,000 reports at 20 a
        pull would otherwise take the benchmark minutes to collect)."""
        for endpoint in ("post_send_md5", "post_send_ddt"):
            self.sim_admin("fault", endpoint=endpoint, mode="latency", seconds=LATENCY)

    def sim_admin(self, path: str, **body: object) -> None:
        requests.post(f"{self.sim}/_sim/{path}", json=body, timeout=10).raise_for_status()

    def submissions(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.sim}/_sim/submissions", timeout=30).json())

    def reset(self) -> None:
        self.sim_admin("reset")
        self.slow_sends()

    def smsgw(self, workers: int = WORKERS, **env: str) -> tuple[int, list[subprocess.Popen[bytes]]]:
        port = free_port()
        procs = [self.start([sys.executable, "-m", "gateway.cli", "api", "--bind", f"127.0.0.1:{port}"], **env)]
        procs += [
            self.start([sys.executable, "-m", "gateway.cli", "worker", "--name", f"w{i}-{port}"], **env)
            for i in range(workers)
        ]
        wait_http(f"http://127.0.0.1:{port}/healthz")
        return port, procs

    def plain(self, workers: int = WORKERS, **env: str) -> tuple[int, list[subprocess.Popen[bytes]]]:
        port = free_port()
        conf = str(Path(__file__).parents[1] / "gateway" / "gunicorn_conf.py")
        gunicorn = [sys.executable, "-m", "gunicorn", "-c", conf, "--bind", f"127.0.0.1:{port}", "bench.plain:app"]
        procs = [self.start(gunicorn, **env)]
        procs += [
            self.start([sys.executable, "-m", "rq.cli", "worker", "--url", self.redis.url, "--quiet", "plain"])
            for _ in range(workers)
        ]
        wait_http(f"http://127.0.0.1:{port}/v1/messages")
        return port, procs

    def close(self) -> None:
        self.stop()
        self.redis.stop()
        self.log.close()


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        s.simulator()
        yield s
    finally:
        s.close()


# -- scenarios -----------------------------------------------------------------------------------


@dataclass
class Run:
    accept_rps: float
    p50_ms: float
    p99_ms: float
    to_provider_rps: float  # by when each request reached the provider
    answered_rps: float  # by when the provider answered it (the simulator's latency later)
    e2e_p50_s: float
    e2e_p99_s: float
    calls: int


def otp_bodies(shape: str, n: int, offset: int = 0) -> list[tuple[str, dict[str, object]]]:
    out = []
    for i in range(n):
        mobile = f"139{offset + i:08d}"
        code = f"{(i * 7919) % 1_000_000:06d}"
        if shape == "template":
            body: dict[str, object] = {
                "template": "您的验证码是{code}，5分钟内有效",
                "recipients": [{"to": mobile, "vars": {"code": code}}],
            }
        else:
            body = {"to": [mobile], "text": f"您的验证码是{code}，5分钟内有效"}
        out.append((mobile, {**body, "priority": "high"}))
    return out


def burst(
    s: Stack, port: int, bodies: list[tuple[str, dict[str, object]]], timeout: float = 600, keep: bool = False
) -> Run:
    """POST every body, then wait until the simulator holds every mobile; one row of figures.
    ``keep``: leave the simulator's earlier submissions (a campaign under way).

    A code reaches the provider when its request arrives there (the simulator's ``received``),
    not when the provider answers it 100 ms later: that latency is the provider's, and on a
    short burst its fixed tail would make a faster door look like a slower pipeline. The
    rate by the answers is kept beside it."""
    if not keep:
        s.reset()
    posted = drive(port, bodies)
    bad = [p.status for p in posted if p.status != 202]
    if bad:
        raise RuntimeError(f"{len(bad)} POSTs failed: {bad[:5]}")
    wanted = {p.mobile for p in posted}
    deadline = time.monotonic() + timeout
    while True:
        subs = s.submissions()
        seen = {m: float(sub["received"]) for sub in subs for m in sub["mobiles"]}
        if wanted <= seen.keys():
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(wanted & seen.keys())} of {len(wanted)} reached the provider")
        time.sleep(0.2)
    first = min(p.started for p in posted)
    last_post = max(p.started + p.seconds for p in posted)
    e2e = [seen[p.mobile] - p.started for p in posted]
    return Run(
        accept_rps=len(posted) / (last_post - first),
        p50_ms=pct([p.seconds for p in posted], 0.5) * 1000,
        p99_ms=pct([p.seconds for p in posted], 0.99) * 1000,
        to_provider_rps=len(posted) / (max(seen[m] for m in wanted) - first),
        answered_rps=len(posted) / (max(float(sub["at"]) for sub in subs if wanted & set(sub["mobiles"])) - first),
        e2e_p50_s=pct(e2e, 0.5),
        e2e_p99_s=pct(e2e, 0.99),
        calls=len(subs),
    )


def median_run(runs: list[Run]) -> Run:
    fields = Run.__dataclass_fields__
    return Run(**{f: statistics.median(getattr(r, f) for r in runs) for f in fields})


@dataclass
class Campaign:
    seconds: float  # from the POST to the last recipient with the provider
    answered: float  # from the POST to its 202
    first_call: float  # from the POST to the first submission the simulator recorded


def campaign(s: Stack, port: int) -> Campaign:
    """One request of ``CAMPAIGN`` recipients, the rate high enough not to bind: where its
    time goes."""
    s.reset()
    to = [f"135{i:08d}" for i in range(CAMPAIGN)]
    started = time.time()
    answer = requests.post(
        f"http://127.0.0.1:{port}/v1/messages",
        json={"to": to, "text": "会员日全场八折", "priority": "bulk"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )
    answered = time.time() - started
    answer.raise_for_status()
    while True:
        subs = s.submissions()
        if sum(len(sub["mobiles"]) for sub in subs) >= CAMPAIGN:
            at = [float(sub["at"]) for sub in subs]
            return Campaign(max(at) - started, answered, min(at) - started)
        time.sleep(0.5)


def redis_bytes_per_recipient(s: Stack, recipients: int, label: str = "", weighted: bool = False) -> float:
    """smsgw's keys at rest (RQ's own job records, kept minutes, are not counted): after the
    maintenance round has folded what it folds ``archive.AFTER`` seconds after the last report.
    ``weighted``: each key by the share of the retention it lives (a key kept a day costs a
    seventh of one kept seven: what a steady state holds). With a ``label``, prints where the
    bytes are, by key family."""
    archive.fold_due(s.conn, float("inf"), budget=600)
    retention = 7 * 86400
    families: dict[str, float] = {}
    # A page of keys a round trip: a round trip a key took 46 s at 200,000 messages (4.6 s so),
    # growing with what is stored, and the soak's deciles grew by it.
    cursor = None
    while cursor != 0:
        cursor, keys = s.conn.scan(cursor or 0, match=schema.PREFIX + "*", count=1000)
        with s.conn.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
                pipe.ttl(key)
            answers = pipe.execute()
        for key, size, ttl in zip(keys, answers[::2], answers[1::2], strict=True):
            share = min(1.0, ttl / retention) if weighted and ttl > 0 else 1.0
            family = key.decode().split(":")[1]
            families[family] = families.get(family, 0) + (size or 0) * share
    if label:
        top = sorted(families.items(), key=lambda kv: -kv[1])[:6]
        print(
            f"{label} at rest, bytes a recipient by key family{' (weighted by lifetime)' if weighted else ''}: "
            + ", ".join(f"{f} {b / recipients:.1f}" for f, b in top)
        )
    return sum(families.values()) / recipients


def pushed_reports(s: Stack, port: int, expected: int, timeout: float = 300) -> None:
    """Wait until the simulator has pushed every report to smsgw's receiver and the workers
    have applied them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(s.conn.hget(schema.COUNTS, "reports") or 0) >= expected:
            return
        time.sleep(0.5)
    raise RuntimeError("pushed reports did not all arrive")


def settle_reports(s: Stack, expected: int, timeout: float = 300) -> None:
    """Pull and apply every report now (as the workers' pullers would, without waiting for the
    provider's pull interval), until each recipient has one."""
    rt = Runtime.from_settings(settings_from_env(s.env))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pullers.tick(rt, "bench", now=time.time() + 3600)
        while reports.ingest(rt):
            pass
        if int(s.conn.hget(schema.COUNTS, "reports") or 0) >= expected:
            return
    raise RuntimeError("reports did not all arrive")


def door(
    s: Stack, start: str, bodies: list[tuple[str, bytes]], path: str, content_type: str, ok: int, api: int = 1
) -> Run:
    """Requests at the door only, no worker running: smsgw's or the baseline's, after a warm-up.

    ``api``: gunicorn processes, the same for both. One by default: with two, gevent's accept
    hands the 32 connections, opened at once, to the two processes unevenly and differently in
    every run (``ss -tnp`` showed 23/9, 29/3, 16/16, 27/5), which swings each side's req/s by up
    to 2x from run to run and says nothing about the cost of a request."""
    env = {"SMSGW_API_WORKERS": str(api)}
    port, procs = s.smsgw(workers=0, **env) if start == "smsgw" else s.plain(workers=0, **env)
    try:
        drive(port, bodies[:WARM_UP], path, content_type)  # imports, connections
        posted = drive(port, bodies[WARM_UP:], path, content_type)
    finally:
        s.stop(procs)
        s.conn.flushdb()
    assert all(p.status == ok for p in posted), {p.status for p in posted}
    first, last = min(p.started for p in posted), max(p.started + p.seconds for p in posted)
    latencies = [p.seconds for p in posted]
    return Run(len(posted) / (last - first), pct(latencies, 0.5) * 1000, pct(latencies, 0.99) * 1000, 0, 0, 0, 0, 0)


def accept_only(s: Stack, start: str, bodies: list[tuple[str, dict[str, object]]], api: int = 1) -> Run:
    """POSTs of messages only: what the door costs."""
    raw = [
        (m, json.dumps({**b, "priority": "normal"} if i < WARM_UP else b, ensure_ascii=False).encode())
        for i, (m, b) in enumerate(bodies)
    ]
    return door(s, start, raw, "/v1/messages", "application/json", 202, api)


PUSH_SECRET = "bench-push-secret-0123"


def push_bodies(n: int, offset: int) -> list[tuple[str, bytes]]:
    """Status reports as the provider pushes them: a GB2312 form, one report a request."""
    out = []
    for i in range(n):
        mobile = f"137{offset + i:08d}"
        form = {"Class": "rpt", "SmsName": "test", "Mobile": mobile, "LinkId": f"L{offset + i:012d}"}
        form.update(Report="DELIVRD", ReportTime="2026-11-26 10:00:00")
        out.append((mobile, urlencode(form, encoding="gb2312").encode()))
    return out


def push_only(s: Stack, start: str, bodies: list[tuple[str, bytes]]) -> Run:
    """The provider's pushes only: smsgw's receiver or the bare one."""
    path = f"/callbacks/provider/{PUSH_SECRET}" if start == "smsgw" else "/push"
    return door(s, start, bodies, path, "application/x-www-form-urlencoded", 200)


def otp_during_campaign(s: Stack, port: int, offset: int) -> Run:
    """The OTP burst posted while a 100,000-recipient bulk campaign drains (same account)."""
    s.reset()
    to = [f"136{i:08d}" for i in range(CAMPAIGN)]
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"to": to, "text": "会员日全场八折", "priority": "bulk"}
    requests.post(f"http://127.0.0.1:{port}/v1/messages", json=body, headers=headers, timeout=120).raise_for_status()
    time.sleep(1.0)  # the campaign's chunks are queued and going out
    return burst(s, port, otp_bodies("template", OTP, offset), keep=True)


def main() -> None:
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    with stack() as s:
        print(
            f"simulator answers in {LATENCY * 1000:.0f} ms; {WORKERS} workers; {CONNECTIONS} connections; {runs} runs"
        )
        door_plain, door_smsgw = [], []
        for r in range(runs):  # alternated, so drift on a shared machine hits both alike
            door_plain.append(accept_only(s, "plain", otp_bodies("plain", OTP + WARM_UP, 500_000 + r * 5000)))
            door_smsgw.append(accept_only(s, "smsgw", otp_bodies("template", OTP + WARM_UP, 600_000 + r * 5000)))
        bare, door = median_run(door_plain), median_run(door_smsgw)
        two_plain, two_smsgw = [], []
        for r in range(runs):  # as deployed (2 processes): the connections' split decides much
            two_plain.append(accept_only(s, "plain", otp_bodies("plain", OTP + WARM_UP, 520_000 + r * 5000), 2))
            two_smsgw.append(accept_only(s, "smsgw", otp_bodies("template", OTP + WARM_UP, 620_000 + r * 5000), 2))
        bare2, door2 = median_run(two_plain), median_run(two_smsgw)
        push_plain, push_smsgw = [], []
        for r in range(runs):
            push_plain.append(push_only(s, "plain", push_bodies(OTP + WARM_UP, r * 10_000)))
            push_smsgw.append(push_only(s, "smsgw", push_bodies(OTP + WARM_UP, 100_000 + r * 10_000)))
        bare_push, push = median_run(push_plain), median_run(push_smsgw)
        print(f"push only: bare {bare_push}\n           smsgw {push}")
        print(f"accept only: bare enqueue {bare}\n             smsgw {door}")
        print(f"accept only, 2 processes: bare enqueue {bare2}\n                          smsgw {door2}")

        port, procs = s.plain()
        plain = burst(s, port, otp_bodies("plain", OTP), timeout=900)
        print(f"plain Flask+RQ pipeline: {plain}")
        s.stop(procs)
        s.conn.flushdb()

        port, procs = s.smsgw()
        template = median_run([burst(s, port, otp_bodies("template", OTP, OTP * (r + 1))) for r in range(runs)])
        print(f"smsgw OTP template: {template}")
        busy = otp_during_campaign(s, port, 700_000)
        print(f"smsgw OTP template while a campaign drains: {busy}")
        s.stop(procs)
        s.conn.flushdb()

        port, procs = s.smsgw(SMSGW_PROVIDER_COALESCE_PLAIN="1")
        texts = median_run([burst(s, port, otp_bodies("plain", OTP, OTP * (r + 10))) for r in range(runs)])
        print(f"smsgw OTP plain texts (COALESCE_PLAIN=1): {texts}")
        s.stop(procs)
        s.conn.flushdb()

        # The campaign with the rate high enough not to bind; then memory at rest, every report in.
        port, procs = s.smsgw(SMSGW_PROVIDER_COALESCE_PLAIN="1", SMSGW_PROVIDER_RATE="100000")
        drains = [campaign(s, port) for _ in range(runs)]
        drain = Campaign(*(statistics.median(getattr(d, f) for d in drains) for f in Campaign.__dataclass_fields__))
        seconds = drain.seconds
        s.conn.flushdb()
        campaign(s, port)
        s.stop(procs)
        settle_reports(s, CAMPAIGN)
        campaign_bytes = redis_bytes_per_recipient(s, CAMPAIGN)
        s.conn.flushdb()
        port, procs = s.smsgw(SMSGW_PROVIDER_COALESCE_PLAIN="1", SMSGW_PROVIDER_RATE="100000")
        burst(s, port, otp_bodies("plain", OTP, 900_000))
        s.stop(procs)
        settle_reports(s, OTP)
        single_bytes = redis_bytes_per_recipient(s, OTP, f"OTP burst ({len(s.submissions())} submissions)")
        s.conn.flushdb()
        # As a user deploys: the provider pushes its reports, the default caps on.
        caps = {"SMSGW_MOBILE_CAPS_HIGH": "1/60,5/3600,10/86400"}
        port, procs = s.smsgw(SMSGW_PROVIDER_COALESCE_PLAIN="1", SMSGW_PROVIDER_RATE="100000", **caps)
        s.sim_admin("config", push_url=f"http://127.0.0.1:{port}/callbacks/provider/{PUSH_SECRET}")
        burst(s, port, otp_bodies("plain", OTP, 950_000))
        pushed_reports(s, port, OTP)
        s.stop(procs)
        s.sim_admin("config", push_url="")
        pushed_bytes = redis_bytes_per_recipient(s, OTP, "OTP burst, reports pushed, caps on", weighted=True)

    ideal = math.ceil(CAMPAIGN / 1000) * LATENCY / WORKERS
    rows = [
        (
            "accept, 1 recipient, req/s, one API process each (no worker running)",
            f"{door.accept_rps:.0f}",
            f"{bare.accept_rps:.0f} bare enqueue",
            f"{door.accept_rps / bare.accept_rps:.2f}x (>= 0.8x)",
        ),
        (
            "accept latency p50 / p99, ms, one API process each",
            f"{door.p50_ms:.1f} / {door.p99_ms:.1f}",
            f"{bare.p50_ms:.1f} / {bare.p99_ms:.1f}",
            "p99 <= 50 ms",
        ),
        (
            "accept, 2 API processes each (as deployed): req/s; p50 / p99 ms",
            f"{door2.accept_rps:.0f}; {door2.p50_ms:.1f} / {door2.p99_ms:.1f}",
            f"{bare2.accept_rps:.0f}; {bare2.p50_ms:.1f} / {bare2.p99_ms:.1f}",
            f"{door2.accept_rps / bare2.accept_rps:.2f}x (each run's split of connections decides much)",
        ),
        (
            "OTP template burst: accept req/s, with 4 workers sending",
            f"{template.accept_rps:.0f}",
            f"{plain.accept_rps:.0f}",
            "",
        ),
        (
            "OTP template burst: POST → provider, msgs/s",
            f"{template.to_provider_rps:.0f}",
            f"{plain.to_provider_rps:.1f}",
            f"{template.to_provider_rps / plain.to_provider_rps:.0f}x plain (>= 15x); "
            f"{template.to_provider_rps / template.accept_rps:.2f}x own accept (>= 0.9x; "
            f"{template.answered_rps / template.accept_rps:.2f}x by the provider's answers)",
        ),
        (
            "OTP template burst: POST → provider p50 / p99, s",
            f"{template.e2e_p50_s:.2f} / {template.e2e_p99_s:.2f}",
            f"{plain.e2e_p50_s:.1f} / {plain.e2e_p99_s:.1f}",
            "p99 <= 1 s",
        ),
        ("OTP template burst: provider calls for 2000 messages", f"{template.calls}", f"{plain.calls}", ""),
        (
            "OTP plain texts (opt-in {value0}): POST → provider, msgs/s",
            f"{texts.to_provider_rps:.0f}",
            f"{plain.to_provider_rps:.1f}",
            f"{texts.to_provider_rps / plain.to_provider_rps:.0f}x plain (>= 15x); "
            f"{texts.to_provider_rps / texts.accept_rps:.2f}x own accept (>= 0.9x; "
            f"{texts.answered_rps / texts.accept_rps:.2f}x by the provider's answers)",
        ),
        (
            "OTP plain texts: POST → provider p50 / p99, s",
            f"{texts.e2e_p50_s:.2f} / {texts.e2e_p99_s:.2f}",
            "",
            "p99 <= 1 s",
        ),
        (
            "OTP template burst while a 100,000 campaign drains: POST → provider p50 / p99, s",
            f"{busy.e2e_p50_s:.2f} / {busy.e2e_p99_s:.2f}",
            "",
            "p99 <= 1.5 s",
        ),
        (
            "pushed reports taken by the push receiver, req/s, one API process each",
            f"{push.accept_rps:.0f}",
            f"{bare_push.accept_rps:.0f} bare (form body, one RPUSH)",
            f"{push.accept_rps / bare_push.accept_rps:.2f}x (>= 0.7x)",
        ),
        (
            f"{CAMPAIGN:,} recipients in one request: s until all are with the provider",
            f"{seconds:.2f}",
            f"ideal {ideal:.2f}",
            f"{ideal / seconds:.2f} of ideal (>= 0.9)",
        ),
        (
            "the same request: s to its 202 / to the first provider call / sending after that",
            f"{drain.answered:.2f} / {drain.first_call:.2f} / {seconds - drain.first_call:.2f}",
            f"ideal sending {ideal:.2f}",
            f"{ideal / (seconds - drain.first_call):.2f} of ideal once sending",
        ),
        (
            "Redis bytes per recipient at rest: 2000 one-recipient messages, reported",
            f"{single_bytes:.0f}",
            "",
            "<= 200",
        ),
        (
            "the same with reports pushed and the default caps on, each key weighted by its lifetime",
            f"{pushed_bytes:.0f}",
            "",
            "<= 150",
        ),
        (
            f"Redis bytes per recipient at rest: one {CAMPAIGN:,} campaign, reported",
            f"{campaign_bytes:.0f}",
            "",
            "<= 200",
        ),
    ]
    table = [
        "| figure (4 workers, simulator at 100 ms) | smsgw | baseline, same run | ratio / target |",
        "|---|---|---|---|",
    ]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(table)
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.write_text(f"# make bench: under load ({stamp}, {os.cpu_count()} CPUs, BENCH_RUNS={runs})\n\n{text}\n")
    print(f"written to {RESULTS}")


def fold_all(url: str, ready: Any, go: Any, done: Any) -> None:
    """One folding worker of ``bench_fold_scaling``, in a process of its own (here, not in
    ``bench.__main__``: a spawned process cannot import a package's ``__main__``). Puts the
    moment it found nothing left to fold on ``done`` (``perf_counter``: the machine's
    monotonic clock, the same in every process)."""
    conn = redis.Redis.from_url(url)
    # Connected, its imports done and its claim script loaded before the clock starts (a claim
    # of what was due a second before the epoch: nothing), as a running worker has them.
    archive.fold_due(conn, -1.0, budget=1)
    ready.release()
    go.wait()
    archive.fold_due(conn, time.time(), budget=600, page=50)
    done.put(time.perf_counter())


if __name__ == "__main__":
    main()
