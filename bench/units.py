"""Unit costs for the README's capacity table, on ``bench.load``'s stack: API, worker and Redis
CPU and Redis commands per one-recipient message and per campaign recipient.

CPU comes from psutil (each process and its children) and Redis's ``INFO cpu`` around the run;
commands from ``INFO commandstats`` (a script's inner commands included).
Run: ``.venv/bin/python -m bench.units`` (about 3 minutes).
"""

from __future__ import annotations

import time

import psutil
import requests

from bench import load
from bench.load import Stack
from workers import archive
from workers.storage import schema

SINGLES = 4000
WARM_UP = 500


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


def redis_commands(s: Stack) -> int:
    return sum(int(v["calls"]) for v in s.conn.info("commandstats").values())


def reports_applied(s: Stack) -> None:
    """Until the workers have pulled and applied every report the simulator holds."""
    while True:
        time.sleep(1.5)
        state = requests.get(f"{s.sim}/_sim/state", timeout=5).json()
        if not state["pending_reports"] and not s.conn.llen(schema.INBOX):
            return


def singles(s: Stack) -> None:
    port, procs = s.smsgw(SMSGW_PROVIDER_RATE="100000")
    load.burst(s, port, load.otp_bodies("template", WARM_UP, 1_000_000))  # warm up (in Redis at rest too)
    reports_applied(s)  # before the next burst resets the simulator and its pending reports
    api, workers = [procs[0].pid], [p.pid for p in procs[1:]]
    s.conn.config_resetstat()
    api0, workers0, redis0 = cpu_of(api), cpu_of(workers), redis_cpu(s)
    run = load.burst(s, port, load.otp_bodies("template", SINGLES, 2_000_000))
    reports_applied(s)
    api1, workers1 = cpu_of(api), cpu_of(workers)
    s.stop(procs)
    # What the workers' maintenance round does a minute later, done here and timed here.
    fold0 = time.process_time()
    archive.fold_due(s.conn, float("inf"), budget=600)
    fold = time.process_time() - fold0
    workers1 += fold
    redis1 = redis_cpu(s)
    at_rest = load.redis_bytes_per_recipient(s, SINGLES + WARM_UP, "one-recipient")
    print(
        f"one-recipient: {SINGLES} messages in {run.calls} submissions; "
        f"API CPU {(api1 - api0) / SINGLES * 1000:.2f} ms a request; "
        f"worker CPU {(workers1 - workers0) / run.calls * 1000:.1f} ms a submission "
        f"({(workers1 - workers0) / SINGLES * 1000:.3f} ms a message); "
        f"Redis CPU {(redis1 - redis0) / SINGLES * 1e6:.0f} us and "
        f"{redis_commands(s) / SINGLES:.1f} commands a message (folding at rest included: "
        f"{fold / SINGLES * 1000:.3f} ms of CPU a message); {at_rest:.0f} bytes a message at rest"
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


def main() -> None:
    with load.stack() as s:
        singles(s)
        s.conn.flushdb()
        campaign(s)


if __name__ == "__main__":
    main()
