"""``smsgw worker``: an RQ worker on smsgw's queues in priority order, with RQ's scheduler
(retries and ``send_at`` are ``enqueue_at``), smsgw's maintenance thread, its coalescer
(``workers.coalesce``) and its callback dispatcher (``workers.notifications``).

RQ's worker exits when Redis goes away (its teardown cannot even register the death), and
when Redis refuses a write because it is full. A Redis restart, failover or full memory must
not take the fleet with it, so the process waits until Redis takes writes again and starts a
fresh RQ worker; a stop signal during the wait ends it cleanly, and so does one that came before
Redis went away (RQ's stop handler writes to Redis: when that fails, the stop must not turn into
a wait).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker

from workers import coalesce, maintenance, notifications, tally
from workers.queues import WORKER_QUEUES
from workers.runtime import (
    UNAVAILABLE,
    Runtime,
    check_compact_hashes,
    check_durability,
    connect,
    freeze_startup_heap,
    install,
    takes_writes,
)
from workers.settings import Settings

log = logging.getLogger("smsgw.worker")


class _RemembersStop:
    """Remembers that a stop was asked, whatever RQ's handler then fails to write."""

    stop_asked = False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_asked = True
        super().request_stop(signum, frame)  # type: ignore[misc]


class _SimpleWorker(_RemembersStop, SimpleWorker):
    pass


class _ForkingWorker(_RemembersStop, Worker):
    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        """A work horse ends with ``os._exit``, past ``atexit``: its counts are written first."""
        try:
            return bool(super().perform_job(*args, **kwargs))
        finally:
            tally.flush_all()


def run_worker(
    settings: Settings, *, burst: bool = False, name: str | None = None, queues: tuple[str, ...] = WORKER_QUEUES
) -> bool:
    runtime = Runtime.from_settings(settings)
    check_durability(runtime.conn, settings.redis_durability)
    check_compact_hashes(runtime.conn)
    install(runtime)  # before RQ forks: every work horse inherits it
    # A full collection walks only what comes after (workers.runtime.freeze_startup_heap).
    log.info("startup heap frozen: %d objects the garbage collector no longer walks", freeze_startup_heap())
    notifications.adopt_legacy(runtime.conn)
    thread, stop = maintenance.start(runtime)
    coalescer, stop_coalescing = coalesce.start(runtime)
    deliverer, stop_delivering = notifications.start(runtime)
    try:
        while True:
            # RQ gets a connection of its own: it lengthens the socket timeout of the one it is
            # given to outlast its BLPOP, and smsgw's jobs keep the short one.
            rq_conn = connect(settings, socket_timeout=None)
            served = [Queue(q, connection=rq_conn) for q in queues]
            # Maintenance also re-takes a dead scheduler's lock: every minute, not RQ's default ten.
            kind = _SimpleWorker if settings.worker_fork == "no" else _ForkingWorker
            worker = kind(served, connection=rq_conn, name=name, maintenance_interval=60)
            try:
                return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
            except UNAVAILABLE as e:
                if burst:
                    raise
                if worker.stop_asked:
                    log.warning("Redis went away (%s) while stopping; stopped", type(e).__name__)
                    return True
                log.warning("Redis cannot be used (%s); waiting until it takes writes", type(e).__name__)
                if not wait_for_redis(rq_conn):
                    return True
                # The dead worker's registration is still there, under the same name.
                worker.register_death()
    finally:
        for event in (stop, stop_coalescing, stop_delivering):
            event.set()
        for running in (thread, coalescer, deliverer):
            if running is not None:
                running.join(timeout=5)


def wait_for_redis(conn: redis.Redis, interval: float = 0.5) -> bool:
    """Try a write until Redis takes it (True) or a stop signal comes (False)."""
    stopping = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stopping.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping.wait(interval):
            if takes_writes(conn):
                log.warning("Redis takes writes again; starting a fresh RQ worker")
                return True
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
