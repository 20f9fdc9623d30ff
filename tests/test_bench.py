"""The benchmarks' own parts that a figure rests on: a broken one shows only in a ``make bench``
of a quarter of an hour, or as a wrong figure."""

from __future__ import annotations

import multiprocessing
import time
from types import SimpleNamespace

from bench import load
from tests.conftest import drain
from tests.test_archive import send
from tests.test_reports import pull_all
from workers import archive
from workers.storage import schema


def _due_backlog(api, runtime, n: int) -> list[str]:
    """``n`` lone messages sent, reported and due to fold now."""
    mids = [send(api, {"to": [f"1370013700{i}"], "text": f"您的订单 {i} 已发货"}) for i in range(n)]
    drain(runtime)
    pull_all(runtime)
    conn = runtime.conn
    conn.zadd(schema.FOLD, dict.fromkeys(conn.zrange(schema.FOLD, 0, -1), 0))
    return mids


def test_the_fold_benchmarks_worker_folds_in_a_fresh_process_and_says_when_it_ended(
    api, runtime, simulator, settings_env
):
    """``bench_fold_scaling`` spawns its folding processes (a spawned one must be able to import
    the function) and times them to the moment each says it found nothing left."""
    mids = _due_backlog(api, runtime, 3)
    spawn = multiprocessing.get_context("spawn")
    ready, go, done = spawn.Semaphore(0), spawn.Event(), spawn.Queue()
    worker = spawn.Process(target=load.fold_all, args=(settings_env["SMSGW_REDIS_URL"], ready, go, done))
    worker.start()
    try:
        assert ready.acquire(timeout=60), "the folding process did not start"
        assert runtime.conn.zcard(schema.FOLD) == 3  # nothing folded before the clock starts
        started = time.perf_counter()
        go.set()
        ended = done.get(timeout=60)
        assert started < ended < time.perf_counter()  # one clock for every process
    finally:
        worker.join(timeout=30)
    assert worker.exitcode == 0
    assert runtime.conn.zcard(schema.FOLD) == 0
    assert all(archive.is_folded(runtime.conn, mid) for mid in mids)


def test_bytes_at_rest_are_read_a_page_a_round_trip_as_key_by_key(api, runtime, simulator, round_trips):
    """The soak reads every key after each decile; the pipelined read gives what one read a key
    gave, by family and weighted by lifetime, in a few round trips, not two a key."""
    _due_backlog(api, runtime, 3)
    conn = runtime.conn
    archive.fold_due(conn, float("inf"))
    for i in range(40):  # kept a day: a seventh of their bytes
        conn.set(f"{schema.PREFIX}zz:{i}", "x" * 40, ex=86400)
    keys = list(conn.scan_iter(match=schema.PREFIX + "*"))
    assert len(keys) > 3
    whole = sum(conn.memory_usage(k, samples=0) or 0 for k in keys)
    weighted = sum(
        (conn.memory_usage(k, samples=0) or 0) * (min(1.0, ttl / (7 * 86400)) if (ttl := conn.ttl(k)) > 0 else 1.0)
        for k in keys
    )
    stack = SimpleNamespace(conn=conn)
    round_trips.clear()
    assert load.redis_bytes_per_recipient(stack, 3) == whole / 3  # type: ignore[arg-type]
    assert len(round_trips) < 10 < len(keys)
    assert abs(load.redis_bytes_per_recipient(stack, 3, weighted=True) - weighted / 3) < 1e-6  # type: ignore[arg-type]
    assert weighted < whole
