"""``python -m bench.soak``: a long run on the load stack, to see that nothing grows.

``SOAK_MESSAGES`` (200,000) one-recipient verification codes go through the API in ten deciles,
as a user deploys: 4 workers, the provider pushing every report to the push receiver, the default
caps on. After each decile (once all its reports are in) it prints Redis's memory per message
(``used_memory`` over the messages so far, and smsgw's keys by ``MEMORY USAGE``), the accept p99
and the POST → provider p99 of that decile, and how long the decile took (its POSTs, sends and
reports, not that reading of every key, which grows with what is stored). Flat is the goal: the
last decile within 1.2x of the first on all four.
"""

from __future__ import annotations

import _thread
import os
import subprocess
import threading
import time

from bench.load import OTP, PUSH_SECRET, burst, otp_bodies, pushed_reports, redis_bytes_per_recipient, stack


def watch(procs: list[subprocess.Popen[bytes]], stop: threading.Event) -> None:
    """A process of the stack that exits ends the soak at once, saying which and how (else the
    run would wait out its timeouts for reports that can no longer come)."""
    while not stop.wait(2.0):
        for proc in procs:
            if proc.poll() is not None:
                print(f"soak: {' '.join(map(str, proc.args[2:5]))} exited with {proc.returncode}", flush=True)  # type: ignore[index]
                _thread.interrupt_main()
                return


def main() -> None:
    total = int(os.environ.get("SOAK_MESSAGES", "200000"))
    decile = max(OTP, total // 10)
    rows = []
    with stack() as s:
        caps = {"SMSGW_MOBILE_CAPS_HIGH": "1/60,5/3600,10/86400"}
        # gunicorn recycles a worker after 10,000 requests (gunicorn_conf.py), resetting its
        # keep-alive connections; this client does not reconnect, so recycling is off here.
        port, procs = s.smsgw(SMSGW_PROVIDER_RATE="100000", GUNICORN_CMD_ARGS="--max-requests 0", **caps)
        s.sim_admin("config", push_url=f"http://127.0.0.1:{port}/callbacks/provider/{PUSH_SECRET}")
        stop = threading.Event()
        threading.Thread(target=watch, args=(procs, stop), daemon=True).start()
        base = int(s.conn.info("memory")["used_memory"])
        started = time.monotonic()
        for d in range(10):
            begun = time.monotonic()
            run = burst(s, port, otp_bodies("template", decile, 3_000_000 + d * decile), timeout=1800)
            pushed_reports(s, port, (d + 1) * decile, timeout=1800)
            # The decile's own time (its POSTs, sends and reports) apart from this reading of
            # every key, which grows with what is stored.
            took, begun = time.monotonic() - begun, time.monotonic()
            used = int(s.conn.info("memory")["used_memory"]) - base
            smsgw = redis_bytes_per_recipient(s, (d + 1) * decile)
            rows.append((d + 1, used / ((d + 1) * decile), smsgw, run.p99_ms, run.e2e_p99_s, took))
            print(
                f"decile {d + 1:2d} ({(d + 1) * decile:,} messages, {time.monotonic() - started:5.0f} s): "
                f"Redis {rows[-1][1]:6.1f} bytes a message (smsgw keys {smsgw:6.1f}), "
                f"accept p99 {run.p99_ms:6.1f} ms, POST → provider p99 {run.e2e_p99_s:5.2f} s; "
                f"the decile took {took:.0f} s, reading the keys {time.monotonic() - begun:.0f} s",
                flush=True,
            )
        stop.set()
        s.stop(procs)
    first, last = rows[0], rows[-1]
    print(
        "| decile | messages | Redis bytes a message | smsgw keys' bytes | accept p99 ms "
        "| POST → provider p99 s | decile's time s |"
    )
    print("|---|---|---|---|---|---|---|")
    for d, per, smsgw, p99, e2e, took in rows:
        print(f"| {d} | {d * decile:,} | {per:.1f} | {smsgw:.1f} | {p99:.1f} | {e2e:.2f} | {took:.0f} |")
    for name, i in (("memory a message", 1), ("accept p99", 3), ("POST → provider p99", 4), ("decile's time", 5)):
        ratio = last[i] / first[i] if first[i] else float("inf")
        print(f"last decile / first, {name}: {ratio:.2f}x (<= 1.2x)")


if __name__ == "__main__":
    main()
