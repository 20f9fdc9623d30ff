"""The resources one process works with, built once from the settings at start.

The worker entry builds a :class:`Runtime` before RQ forks its work horses, so every job finds
it with :func:`current`. An ``rq worker`` started by hand (not through ``smsgw worker``) builds it
from the environment on first use instead.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection
from rq import Queue

from workers.provider import ProviderClient
from workers.queues import QUEUE_NAMES
from workers.settings import Settings, parse_sentinel_url, settings_from_env
from workers.storage import schema
from workers.storage.batched import Batched, Op
from workers.tally import Tally

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    conn: redis.Redis
    _clients: dict[str, ProviderClient] = field(default_factory=dict)
    _queues: dict[str, Queue] = field(default_factory=dict)
    tally: Tally = field(init=False)
    #: API key → the day this process last dated its index (``gateway.messages.accept``).
    dated: dict[str, str] = field(default_factory=dict)
    _batched: dict[Op, Batched] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tally = Tally(self.conn, self.settings.count_flush_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings, connect(settings))

    def client(self, account: str) -> ProviderClient:
        if account not in self._clients:
            self._clients[account] = ProviderClient.for_account(self.settings.accounts[account])
        return self._clients[account]

    def batched(self, op: Op) -> Batched:
        """``op``'s calls from this process's concurrent requests, sent to Redis together
        (:mod:`workers.storage.batched`)."""
        if op not in self._batched:
            self._batched[op] = Batched(op)
        return self._batched[op]

    def queue(self, priority: str) -> Queue:
        if priority not in self._queues:
            self._queues[priority] = Queue(QUEUE_NAMES[priority], connection=self.conn)
        return self._queues[priority]


def connect(settings: Settings, *, socket_timeout: float | None = -1.0) -> redis.Redis:
    """A client for smsgw's Redis, with timeouts from the settings, so a stalled Redis costs a
    request ``SMSGW_REDIS_SOCKET_TIMEOUT`` (and one quick retry), not redis-py's unbounded wait.

    ``socket_timeout=None`` is for RQ's own worker connection, which blocks in ``BLPOP`` (RQ
    sets a timeout longer than its dequeue wait on it).
    """
    timeout = settings.redis_socket_timeout if socket_timeout == -1.0 else socket_timeout
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    }
    if settings.redis_url.startswith("redis+sentinel://"):
        # redis-py's Sentinel client asks the sentinels for the master on every new connection
        # and after a connection error, so every process follows a failover by itself.
        url = parse_sentinel_url(settings.redis_url)
        sentinel = Sentinel(
            url.sentinels,
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_connect_timeout,
        )
        return sentinel.master_for(
            url.service,
            db=url.db,
            password=url.password.reveal() or None,
            connection_class=_SentinelConnection,
            **options,
        )
    return redis.Redis.from_url(settings.redis_url, **options)


class _SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection reads with ``disconnect_on_error=False`` where the plain
    one defaults to True. An exception raised while it waits (RQ's stop signal arrives during
    an idle BLPOP) then leaves the connection in the pool with the BLPOP's reply still owed,
    and the next command on it (RQ registering the worker's death) waits for ever. Found by
    tests/test_sentinel.py: a SIGTERMed worker hung after a failover."""

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        kwargs.setdefault("disconnect_on_error", True)
        return super().read_response(disable_decoding, **kwargs)


def replicated(conn: redis.Redis, settings: Settings, *, strict: bool = True, every: bool = False) -> bool:
    """Whether what this process wrote so far reached ``SMSGW_REDIS_REPLICA_ACKS`` replicas.

    WAIT counts the writes of the connection it is sent on, and a pool hands out any of its
    connections; so WAIT goes in one pipeline after a write of its own (a counter), which comes
    after everything the caller wrote, on whatever connection.

    ``strict=False`` waits only for the replicas connected now: with none there is nothing a
    failover could promote, so there is nothing to lose to one (the send path uses this, so
    sending goes on while a replica is rebuilt; a 202 always waits for the full number).

    ``every=True`` waits for every replica connected now, however many are wanted: what undoes
    a write must reach each replica the write may have reached, or a failover to that one
    brings the write back (``gateway.messages.accept``'s withdrawal).
    """
    wanted = settings.redis_replica_acks
    if wanted <= 0:
        return True
    if every or not strict:
        role = conn.execute_command("ROLE")
        connected = len(role[2]) if role and role[0] in (b"master", "master") else wanted
        wanted = connected if every else min(wanted, connected)
        if wanted == 0:
            return True
    with conn.pipeline(transaction=False) as pipe:
        pipe.hincrby(schema.COUNTS, "replica_waits", 1)
        pipe.execute_command("WAIT", wanted, settings.redis_replica_timeout_ms)
        _, acks = pipe.execute()
    if int(acks) >= wanted:
        return True
    conn.hincrby(schema.COUNTS, "replica_wait_timeouts", 1)
    return False


_current: Runtime | None = None


#: Redis cannot be used for now, whatever the command: away (connection, timeout), full
#: (``maxmemory`` reached under ``noeviction``: OOM) or a replica after a failover (READONLY).
#: Each is waited out, never taken as a reason to stop a process or to drop work.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError, redis.ReadOnlyError)


def takes_writes(conn: redis.Redis) -> bool:
    """Whether Redis takes a write now (a full Redis still answers PING and reads)."""
    try:
        conn.set(schema.WRITE_PROBE, 1, px=10_000)
    except UNAVAILABLE:
        return False
    return True


def freeze_startup_heap() -> int:
    """Put every object alive once a process has loaded what it runs (modules, the app, its
    settings) out of the garbage collector's reach (``gc.freeze``); returns how many. Left in,
    each full collection walked them all: 46 to 52 ms in an API process, paid by the requests
    running then, which made the accept's p99 78 ms against 44 frozen (the bench's accept-only
    run, 4 alternated pairs). Called by gunicorn's ``post_worker_init`` and by a worker before
    its loop; a forked work horse inherits it."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def install(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    global _current
    if _current is None:
        _current = Runtime.from_settings(settings_from_env(os.environ))
    return _current


class NotDurable(RuntimeError):
    pass


#: What the folded records at rest (``workers.archive``) need to stay in Redis's compact encoding.
COMPACT_HASHES = {"hash-max-listpack-entries": 512, "hash-max-listpack-value": 256}


def check_compact_hashes(conn: redis.Redis) -> str:
    """A warning (logged, never fatal) when Redis keeps folded messages in its larger hash
    encoding: about 50 bytes a message more at rest (README, "Folding at rest")."""
    try:
        config = conn.config_get("hash-max-listpack-*")
    except redis.ResponseError:
        return ""
    low = [f"{k} {config.get(k)}" for k, v in COMPACT_HASHES.items() if int(config.get(k) or 0) < v]
    if not low:
        return ""
    wanted = ", ".join(f"{k} {v}" for k, v in COMPACT_HASHES.items())
    problem = f"{'; '.join(low)}: folded messages take about 50 bytes more each at rest (set {wanted})"
    log.warning("redis memory: %s", problem)
    return problem


def check_durability(conn: redis.Redis, mode: str) -> list[str]:
    """Warn (or refuse) when Redis would lose accepted messages.

    Debian's Redis keeps nothing on a crash: without AOF an accepted message lives only in
    memory; with an eviction policy Redis may delete it under memory pressure. Both break the
    promise that every accepted message reaches a final state.
    """
    problems = []
    try:
        config = conn.config_get("appendonly") | conn.config_get("maxmemory-policy")
    except redis.ResponseError:
        return ["CONFIG GET is not allowed here; cannot check appendonly and maxmemory-policy"]
    if config.get("appendonly") != "yes":
        problems.append("appendonly is not 'yes': a Redis crash or restart loses accepted messages")
    if config.get("maxmemory-policy") != "noeviction":
        problems.append(
            f"maxmemory-policy is {config.get('maxmemory-policy')!r}, not 'noeviction': "
            "Redis may evict accepted messages"
        )
    for problem in problems if mode != "ignore" else []:
        log.warning("redis durability: %s", problem)
    if problems and mode == "refuse":
        raise NotDurable("; ".join(problems))
    return problems
