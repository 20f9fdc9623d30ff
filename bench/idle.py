"""What an idle fleet costs Redis: ``python -m bench.idle`` (about 40 s).

Starts ``bench.load``'s stack (the API's 2 processes, ``IDLE_WORKERS`` workers, 4 by default),
lets it settle, then reads for 20 s, with no traffic, the commands Redis ran (``INFO
commandstats``), how often it woke (its voluntary context switches) and its CPU (``INFO cpu``).
Every worker looks for work on its own (callbacks due, maintenance, RQ's scheduler, its
coalescer), so this grows with the fleet, not with the traffic: docs/benchmarks.md gives it a
worker.
"""

from __future__ import annotations

import os
import time

from bench import load
from bench.units import redis_commands, redis_cpu, redis_sleeps

SETTLE = 8.0
SECONDS = 20.0


def main() -> None:
    workers = int(os.environ.get("IDLE_WORKERS", str(load.WORKERS)))
    with load.stack() as s:
        s.smsgw(workers=workers)
        time.sleep(SETTLE)  # imports, connections, each thread's first look
        commands, wakeups, cpu = redis_commands(s), redis_sleeps(s), redis_cpu(s)
        time.sleep(SECONDS)
        commands = (redis_commands(s) - commands) / SECONDS
        wakeups = (redis_sleeps(s) - wakeups) / SECONDS
        share = (redis_cpu(s) - cpu) / SECONDS
        print(
            f"{workers} idle workers and the API's 2 processes: {commands:.0f} commands and {wakeups:.0f} "
            f"wake-ups of Redis a second, {share:.2%} of its thread"
        )


if __name__ == "__main__":
    main()
