"""``smsgw worker``: an RQ worker on smsgw's queues in priority order, with RQ's scheduler
(retries and ``send_at`` are ``enqueue_at``) and smsgw's maintenance thread."""

from __future__ import annotations

import logging

from rq import Queue, Worker

from workers import maintenance
from workers.queues import WORKER_QUEUES
from workers.runtime import Runtime, check_durability, connect, install
from workers.settings import Settings

log = logging.getLogger("smsgw.worker")


def run_worker(
    settings: Settings, *, burst: bool = False, name: str | None = None, queues: tuple[str, ...] = WORKER_QUEUES
) -> bool:
    runtime = Runtime.from_settings(settings)
    check_durability(runtime.conn, settings.redis_durability)
    install(runtime)  # before RQ forks: every work horse inherits it
    # RQ gets a connection of its own: it lengthens the socket timeout of the one it is given
    # to outlast its BLPOP, and smsgw's jobs keep the short one.
    rq_conn = connect(settings, socket_timeout=None)
    served = [Queue(q, connection=rq_conn) for q in queues]
    # Maintenance also re-takes a dead scheduler's lock: every minute, not RQ's default ten.
    worker = Worker(served, connection=rq_conn, name=name, maintenance_interval=60)
    thread, stop = maintenance.start(runtime)
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        stop.set()
        thread.join(timeout=5)
