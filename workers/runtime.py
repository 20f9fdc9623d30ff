"""The resources one process works with, built once from the settings at start.

The worker entry builds a :class:`Runtime` before RQ forks its work horses, so every job finds
it with :func:`current`. An ``rq worker`` started by hand (not through ``smsgw worker``) builds it
from the environment on first use instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue

from workers.provider import ProviderClient
from workers.queues import QUEUE_NAMES
from workers.settings import Settings, settings_from_env

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    conn: redis.Redis
    _clients: dict[str, ProviderClient] = field(default_factory=dict)
    _queues: dict[str, Queue] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings, connect(settings))

    def client(self, account: str) -> ProviderClient:
        if account not in self._clients:
            self._clients[account] = ProviderClient.for_account(self.settings.accounts[account])
        return self._clients[account]

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
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    )


_current: Runtime | None = None


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
    for problem in problems:
        log.warning("redis durability: %s", problem)
    if problems and mode == "refuse":
        raise NotDurable("; ".join(problems))
    return problems
