"""Unit costs for the capacity table (docs/benchmarks.md), on ``bench.load``'s stack: API,
worker and Redis CPU and Redis commands per one-recipient message and per campaign recipient.

One-recipient verification codes are measured as a user deploys them, the default caps on and
every report pushed, stage by stage: the API alone takes the POSTs; the workers start and submit;
the provider pushes the reports and the workers apply them; the backlog is folded. What the idle
fleet does meanwhile (leases, maintenance ticks) is measured apart and taken out. CPU comes from
psutil (each process and its children) and Redis's ``INFO cpu``; commands from ``INFO
commandstats`` (a script's inner commands included).
The one-recipient stages run ``BENCH_RUNS`` times (3) and the median run is printed, with every
run's total. Run: ``.venv/bin/python -m bench.units`` (about 5 minutes); ``make bench`` ends
with the one-recipient part.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass

import psutil

from bench import load
from bench.load import Stack
from workers import archive
from workers.settings import DEFAULT_CAPS, settings_from_env
from workers.storage import schema

SINGLES = 4000
WARM_UP = 500
#: The one-recipient stages run this many times (``BENCH_RUNS``, as the load run's scenarios):
#: one run's Redis CPU moved by a fifth from run to run with the same code.
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def redis_cpu(s: Stack) -> float:
    info = s.conn.info("cpu")
    return float(info["used_cpu_sys"] + info["used_cpu_user"])


def redis_sleeps(s: Stack) -> int:
    """How many times Redis went to sleep waiting for work (each wait ends in a wake-up): its
    voluntary context switches. A wake-up costs Redis tens of microseconds of CPU on a busy
    machine, more than most commands, and a Redis that is kept busy wakes once for many."""
    pid = int(s.conn.info("server")["process_id"])
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))


def ping_us(s: Stack, n: int = 3000, apart: float = 0.0) -> float:
    """Redis's CPU for one PING that wakes it, from one client, one after another (``apart``:
    seconds between them): this machine's price of a round trip, measured in the same run.
    Machines of the same kind differ by 2x in it, and a message's Redis CPU moves with it; the
    ratio travels better than the µs. A Redis woken after a pause pays more than one kept busy
    (caches gone cold): pushed reports come that way, one a request."""
    cpu0 = redis_cpu(s)
    for _ in range(n):
        s.conn.ping()
        if apart:
            time.sleep(apart)
    return (redis_cpu(s) - cpu0) / n * 1e6


def commandstats(s: Stack) -> dict[str, int]:
    return {k: int(v["calls"]) for k, v in s.conn.info("commandstats").items()}


def redis_commands(s: Stack) -> int:
    return sum(int(v["calls"]) for v in s.conn.info("commandstats").values())


@dataclass
class Stage:
    """Redis's work for one stage of a message's life, the fleet's idle ticks taken out."""

    name: str
    commands: float  # a message
    redis_us: float  # Redis CPU a message, microseconds
    top: list[tuple[str, float]]
    wakeups: float = 0.0  # Redis's wake-ups a message (:func:`redis_sleeps`)


class Meter:
    """Redis commands and CPU between two readings, less what the idle fleet does meanwhile
    (maintenance and lease ticks: a rate measured while nothing else runs)."""

    def __init__(self, s: Stack) -> None:
        self.s = s
        self.idle_commands = 0.0  # a second
        self.idle_cpu = 0.0
        self.idle_wakeups = 0.0
        self.mark()

    def mark(self) -> None:
        self.t0, self.c0, self.cpu0 = time.monotonic(), commandstats(self.s), redis_cpu(self.s)
        self.w0 = redis_sleeps(self.s)

    def idle(self, seconds: float = 5.0) -> None:
        self.mark()
        time.sleep(seconds)
        cmds, cpu, elapsed = self._delta()
        self.idle_commands, self.idle_cpu = sum(cmds.values()) / elapsed, cpu / elapsed
        self.idle_wakeups = (redis_sleeps(self.s) - self.w0) / elapsed

    def _delta(self) -> tuple[dict[str, int], float, float]:
        now = commandstats(self.s)
        cmds = {k: v - self.c0.get(k, 0) for k, v in now.items() if v - self.c0.get(k, 0)}
        return cmds, redis_cpu(self.s) - self.cpu0, time.monotonic() - self.t0

    def stage(self, name: str, messages: int, fleet: bool) -> Stage:
        cmds, cpu, elapsed = self._delta()
        wakeups: float = redis_sleeps(self.s) - self.w0
        if fleet:
            cpu = max(0.0, cpu - self.idle_cpu * elapsed)
            wakeups = max(0.0, wakeups - self.idle_wakeups * elapsed)
        total = sum(cmds.values()) - (self.idle_commands * elapsed if fleet else 0)
        top = sorted(((k.removeprefix("cmdstat_"), v / messages) for k, v in cmds.items()), key=lambda kv: -kv[1])
        self.mark()
        return Stage(name, max(0.0, total) / messages, cpu / messages * 1e6, top[:6], wakeups / messages)


def stages(s: Stack, n: int, offset: int, port: int, env: dict[str, str]) -> tuple[list[Stage], float]:
    """One OTP burst of ``n`` messages, stage by stage: the API alone takes every POST; then
    the workers start and submit; then the provider pushes every report to the receiver and
    the workers apply them; then the backlog is folded (what the workers' ticks do a minute
    later, done here at once)."""
    s.reset()
    meter = Meter(s)
    bodies = load.otp_bodies("template", n, offset)
    posted = load.drive(port, bodies)
    assert all(p.status == 202 for p in posted), {p.status for p in posted}
    out = [meter.stage("accept (API)", n, fleet=False)]
    submitted = int(s.conn.hget(schema.COUNTS, "recipients_submitted") or 0)
    workers = [
        s.start([sys.executable, "-m", "gateway.cli", "worker", "--name", f"u{i}-{offset}"], **env)
        for i in range(load.WORKERS)
    ]
    # Until the workers have recorded every submission (not only made it): the bookkeeping after
    # the provider's answer is the submit stage's, not the idle fleet's.
    while int(s.conn.hget(schema.COUNTS, "recipients_submitted") or 0) < submitted + n:
        time.sleep(0.2)
    time.sleep(1.0)
    sent = meter.stage("submit (workers)", n, fleet=True)
    meter.idle()  # the fleet's own ticks, taken out of the stages it runs through
    meter.mark()
    reports = int(s.conn.hget(schema.COUNTS, "reports") or 0)
    s.sim_admin("config", push_url=f"http://127.0.0.1:{port}/callbacks/provider/{load.PUSH_SECRET}")
    load.pushed_reports(s, port, reports + n)
    time.sleep(1.0)  # what follows the last report (its chunk's fold scheduled) is this stage's
    pushed = meter.stage("report pushed (receiver and workers)", n, fleet=True)
    s.sim_admin("config", push_url="")
    worker_cpu = cpu_of([w.pid for w in workers])
    s.stop(workers)
    meter.mark()
    fold0 = time.process_time()
    archive.fold_due(s.conn, float("inf"), budget=600)
    worker_cpu += time.process_time() - fold0  # the workers' ticks fold; done here, counted as theirs
    return [*out, sent, pushed, meter.stage("fold", n, fleet=False)], worker_cpu


def singles(s: Stack) -> None:
    """One-recipient verification codes as a user deploys them: the default caps on, reports
    pushed. Commands and Redis CPU a message by stage, then the totals."""
    account = settings_from_env(s.env).accounts
    env = {
        "SMSGW_PROVIDER_RATE": "100000",
        "SMSGW_MOBILE_CAPS_HIGH": DEFAULT_CAPS,
        "SMSGW_PULL_INTERVAL_SECONDS": "3600",
        # Not recycled after its 10,000 requests (gunicorn_conf.max_requests) halfway through:
        # the runs' 24,500 requests would cross it.
        "GUNICORN_CMD_ARGS": "--max-requests 0",
    }
    ping, paused = ping_us(s), ping_us(s, 1000, apart=0.001)
    port, procs = s.smsgw(workers=0, **env)
    for name in account:  # no pulls: every report comes by push, as measured
        s.conn.hset(schema.pull_schedule_key(name), mapping={"rpt": 1e12, "mo": 1e12})
    stages(s, WARM_UP, 1_000_000, port, env)  # imports, connections, and something at rest already
    api0 = cpu_of([procs[0].pid])
    runs = [stages(s, SINGLES, 2_000_000 + r * SINGLES, port, env) for r in range(RUNS)]
    api1 = cpu_of([procs[0].pid])
    s.stop(procs)
    messages = SINGLES * RUNS
    at_rest = load.redis_bytes_per_recipient(s, messages + WARM_UP, "one-recipient", weighted=True)
    totals = [sum(st.redis_us for st in measured) for measured, _ in runs]
    # The median run, whole: a message's stages from one run, not medians from different ones.
    measured = runs[totals.index(statistics.median_low(totals))][0]
    for st in measured:
        top = ", ".join(f"{k} {v:.1f}" for k, v in st.top)
        print(
            f"  {st.name:40s} {st.commands:5.1f} commands  {st.redis_us:6.1f} us Redis CPU  "
            f"{st.wakeups:4.2f} wake-ups   ({top})"
        )
    commands = sum(st.commands for st in measured)
    cpu = sum(st.redis_us for st in measured)
    wakeups = sum(st.wakeups for st in measured)
    worker_cpu = sum(w for _, w in runs)
    print(
        f"one-recipient, caps on, reports pushed (the median of {RUNS} runs: "
        f"{', '.join(f'{t:.0f}' for t in totals)} us): {commands:.1f} commands a message (target <= 25: "
        f"{commands / 25:.2f} of it), Redis CPU {cpu:.0f} us a message (target <= 120: {cpu / 120:.2f} of it) "
        f"in {wakeups:.2f} wake-ups of Redis; "
        f"API CPU {(api1 - api0) / messages * 1000:.2f} ms a message (its POST and its report's push); "
        f"worker CPU {worker_cpu / messages * 1000:.3f} ms a message (folding included); "
        f"{at_rest:.0f} bytes a message at rest (weighted by lifetime)"
    )
    print(
        f"this machine's price of a round trip, same run: a PING that wakes Redis costs it {ping:.1f} us "
        f"({paused:.1f} us 1 ms after the last, as reports pushed one at a time wake it); "
        f"a message costs Redis what {cpu / ping:.1f} of them do"
    )


def campaign(s: Stack) -> None:
    port, procs = s.smsgw(SMSGW_PROVIDER_RATE="100000")
    api, workers = [procs[0].pid], [p.pid for p in procs[1:]]
    s.conn.config_resetstat()
    api0, workers0, redis0 = cpu_of(api), cpu_of(workers), redis_cpu(s)
    seconds = load.campaign(s, port).seconds
    api1, workers1 = cpu_of(api), cpu_of(workers)
    s.stop(procs)
    load.settle_reports(s, load.CAMPAIGN)  # applied here, counted in Redis's CPU below
    redis1 = redis_cpu(s)
    submissions = load.CAMPAIGN // 1000
    print(
        f"campaign: {load.CAMPAIGN} recipients in {seconds:.2f} s; API CPU {api1 - api0:.2f} s for the request; "
        f"worker CPU {(workers1 - workers0) / submissions * 1000:.1f} ms a submission; "
        f"Redis CPU {(redis1 - redis0) / load.CAMPAIGN * 1e6:.1f} us and "
        f"{redis_commands(s) / load.CAMPAIGN:.2f} commands a recipient"
    )


def singles_run() -> None:
    """The one-recipient units on a stack of their own (``make bench`` ends with it)."""
    with load.stack() as s:
        singles(s)


def main() -> None:
    """``UNITS=singles`` or ``UNITS=campaign``: one part only (``make bench`` runs the first)."""
    part = os.environ.get("UNITS", "")
    with load.stack() as s:
        if part != "campaign":
            singles(s)
            s.conn.flushdb()
        if part != "singles":
            campaign(s)


if __name__ == "__main__":
    main()
