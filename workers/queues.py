"""smsgw's RQ queues, and everything smsgw reads from RQ, through RQ's public API only.

A worker listens to the send queues in priority order, so a verification code (``high``) is
never stuck behind a million-recipient campaign (``bulk``). Callbacks to client services are
not RQ jobs: they run on each worker's own pool of threads (``workers.notifications``), so a
slow receiver never holds a send worker.

RQ's Redis layout is RQ's business: this adapter asks :class:`rq.job.Job`, :class:`rq.Queue`
and the registries, so an RQ upgrade that changes its keys cannot silently break crash recovery
(``rq`` is pinned to the major the suite tests).
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

PRIORITIES = ("high", "normal", "bulk")
QUEUE_NAMES = {p: f"smsgw-{p}" for p in PRIORITIES}
#: Every queue smsgw enqueues to, in the order a worker serves them.
WORKER_QUEUES = tuple(QUEUE_NAMES[p] for p in PRIORITIES)
#: Where callback deliveries were RQ jobs before they got threads of their own; what an upgrade
#: finds there is handed to the dispatcher (:func:`take_legacy_callbacks`).
LEGACY_CALLBACK_QUEUE = "smsgw-callbacks"


def take_legacy_callbacks(conn: redis.Redis) -> list[str]:
    """The message ids of callback jobs left queued or scheduled on the old callback queue,
    which no worker serves any more; the jobs are deleted."""
    queue = Queue(LEGACY_CALLBACK_QUEUE, connection=conn)
    registry = ScheduledJobRegistry(queue=queue)
    mids = []
    for job_id in [*queue.get_job_ids(), *registry.get_job_ids()]:
        try:
            job = Job.fetch(job_id, connection=conn)
        except NoSuchJobError:
            continue
        mids += [str(arg) for arg in job.args[:1]]
        job.delete()
    return mids


def job_alive(conn: redis.Redis, job_id: str, timeout: float) -> bool:
    """Whether RQ will still run (or is running) this job: queued and in its queue's list,
    scheduled or deferred, or started less than ``timeout`` seconds ago."""
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=False)
    if status == JobStatus.QUEUED:
        return Queue(job.origin, connection=conn).get_job_position(job_id) is not None
    if status in (JobStatus.SCHEDULED, JobStatus.DEFERRED):
        return True
    if status == JobStatus.STARTED:
        started = job.started_at
        if started is None:
            return True
        return (datetime.now(UTC) - started.replace(tzinfo=UTC)).total_seconds() < timeout
    return False


def depths(conn: redis.Redis, names: tuple[str, ...] = WORKER_QUEUES) -> dict[str, int]:
    """Jobs waiting in each queue."""
    return {name: Queue(name, connection=conn).count for name in names}


def take_overdue(conn: redis.Redis, before: float) -> list[tuple[Queue, Job]]:
    """Scheduled jobs due before ``before``, each taken out of its registry by this caller
    alone (so two rescuers never both enqueue one)."""
    taken = []
    for name in WORKER_QUEUES:
        queue = Queue(name, connection=conn)
        registry = ScheduledJobRegistry(queue=queue)
        for job_id in registry.get_jobs_to_schedule(timestamp=int(before)):
            if not registry.remove(job_id):
                continue
            try:
                taken.append((queue, Job.fetch(job_id, connection=conn)))
            except NoSuchJobError:
                continue
    return taken


def oldest_wait(conn: redis.Redis, names: tuple[str, ...] = WORKER_QUEUES) -> dict[str, float]:
    """Seconds the oldest job of each queue has waited (0 for an empty queue): the job at the
    head of the list, as RQ's ``get_job_ids`` and ``Job.enqueued_at`` tell it."""
    now = datetime.now(UTC)
    out: dict[str, float] = {}
    for name in names:
        ids = Queue(name, connection=conn).get_job_ids(0, 1)
        age = 0.0
        if ids:
            try:
                enqueued = Job.fetch(ids[0], connection=conn).enqueued_at
            except NoSuchJobError:
                enqueued = None
            if enqueued is not None:
                age = max(0.0, (now - enqueued.replace(tzinfo=UTC)).total_seconds())
        out[name] = age
    return out


def workers_alive(conn: redis.Redis) -> int:
    """RQ workers registered and not expired, on every host."""
    return int(Worker.count(connection=conn))
