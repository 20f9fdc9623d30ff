"""Counters a process adds up and writes to Redis together, once a second: the fleet's figures
(``sg:counts``), the minute chart and the day's usage of keys and accounts, for what happens to
every message (accepted, pushed, reported).

Written one ``HINCRBY`` at a time, in the scripts that accept a message and merge its report,
those counters were 12 of the 43 Redis commands a one-recipient message cost. Added up here they
cost one pipeline a second per process, whatever the traffic: the way every metrics client
counts (Prometheus's own keeps its counters in the process and loses them with it).

What that costs, said plainly: a count reaches Redis up to ``SMSGW_COUNT_FLUSH_SECONDS`` (1 s)
after the event, and a process killed without warning (SIGKILL, the OOM killer) takes at most
that long of its own counts with it. A stop by signal (SIGTERM, SIGINT), gunicorn recycling a
worker, RQ ending a work horse and a normal exit all write what is pending first. The messages
themselves (their states, their recipients' counts, the folded records) are written where they
change, never here; the daily quota that refuses a request is its own counter at the door
(``gateway.quotas``), exact. ``SMSGW_COUNT_FLUSH_SECONDS=0`` writes every count at once.

A Redis that cannot be reached keeps the counts pending here (they are retried on the next
flush); a fork starts with none of its parent's pending counts, so nothing is written twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import defaultdict

import redis

log = logging.getLogger(__name__)

_LIVE: weakref.WeakSet[Tally] = weakref.WeakSet()


class Tally:
    """Counts added in this process, written to Redis at most ``every`` seconds later."""

    def __init__(self, conn: redis.Redis, every: float) -> None:
        self.conn = conn
        self.every = every
        self._lock = threading.Lock()
        self._pending: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._ttl: dict[str, int] = {}  # dated keys: their lifetime, set when written
        self._thread: threading.Thread | None = None  # started by the first count (a fork forgets it)
        self._failing = False  # said once an outage, not once a flush
        _LIVE.add(self)

    def add(self, key: str, field: str, n: int = 1, ttl: int = 0) -> None:
        """Add ``n`` to ``key``'s ``field``; a dated key (``ttl``) gets its lifetime when written."""
        if not n:
            return
        with self._lock:
            self._pending[(key, field)] += n
            if ttl:
                self._ttl[key] = ttl
        if self.every <= 0:
            self.flush()
        elif self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="smsgw-tally", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            self.flush()

    def flush(self) -> None:
        """Write what is pending in one transaction (all or none: a connection lost midway never
        leaves half of it written to be written again); on a Redis error it stays pending. A
        flush whose answer is lost after Redis applied it is counted again, as a retried HINCRBY
        always could be."""
        with self._lock:
            if not self._pending:
                return
            pending, ttl = self._pending, self._ttl
            self._pending, self._ttl = defaultdict(int), {}
        try:
            # One count at a time (``every`` 0) needs no transaction around it.
            with self.conn.pipeline(transaction=self.every > 0) as pipe:
                for (key, field), n in pending.items():
                    pipe.hincrby(key, field, n)
                for key, seconds in ttl.items():
                    pipe.expire(key, seconds)
                pipe.execute()
        except redis.RedisError as e:
            if not self._failing:
                log.warning("counts not written (%s); kept until Redis takes them", type(e).__name__)
            self._failing = True
            with self._lock:
                for k, n in pending.items():
                    self._pending[k] += n
                for key, seconds in ttl.items():
                    self._ttl.setdefault(key, seconds)
            return
        if self._failing:
            log.warning("counts written again")
            self._failing = False

    def _forget(self) -> None:
        """In a fork: the parent's pending counts are the parent's to write."""
        self._lock = threading.Lock()
        self._pending, self._ttl = defaultdict(int), {}
        self._thread = None


def flush_all() -> None:
    """Write every tally's pending counts (exit, a stop signal, the end of a work horse)."""
    for tally in list(_LIVE):
        tally.flush()


def _after_fork() -> None:
    for tally in list(_LIVE):
        tally._forget()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(flush_all)
