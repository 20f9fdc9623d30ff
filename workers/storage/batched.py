"""One script's calls from a process's concurrent requests, sent to Redis together.

Below saturation Redis sleeps between requests, and each request that wakes it costs a wake-up,
a read and a write: on the 2-core machines of docs/benchmarks.md, 35 µs of Redis's CPU for a
PING, where a PING inside a pipeline of a hundred costs under 1 µs. An API process serves many
requests at once (gunicorn's gevent workers), and each used to send its accept on its own
connection. :class:`Batched` lets them share: the first caller sends at once, alone; callers that
arrive while its round trip is under way wait for it, then go as one pipeline. Nobody waits for a
timer, so a lone request costs what it did, and a busy process sends one batch a round trip.

What is batched is an :class:`Op`: a script (``ACCEPT``), or a few plain commands
(``workers.reports.STORE_PUSH``). What each caller gets back is its own call's answer (an op's
last command's), or the exception its own call would have raised (a connection error fails every
call of its batch, as it would have failed each alone). The ops batched so must be safe to run
twice (redis-py retries a batch after a timeout, as it retries a single call): ``ACCEPT`` is
fenced, and ingest skips a pushed item stored twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from redis.client import Pipeline

_UNSET: Any = object()

#: At most this many calls in one pipeline: a longer one holds Redis's single thread longer.
MAX_BATCH = 64


class Op(Protocol):
    """What :class:`Batched` sends: a call alone (``op(conn, **named)``), or queued into a
    pipeline with others (``op.queue(pipe, **named)``, any number of commands, the last one's
    answer being the call's). :class:`workers.storage.scripts.Script` is one."""

    def __call__(self, conn: redis.Redis, /, *args: Any, **named: Any) -> Any: ...

    def queue(self, pipe: Pipeline, /, *args: Any, **named: Any) -> None: ...


@dataclass(eq=False)  # one caller is itself only: two calls with the same arguments are two
class _Call:
    named: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to send the next batch, not with an answer
    result: Any = _UNSET
    error: BaseException | None = None


class Batched:
    """``Batched(scripts.ACCEPT)(conn, **named)``: the op's answer, as ``ACCEPT(conn, **named)``
    would give it, sent with whatever else this process is sending at the same moment.

    Threads and gevent's greenlets alike (gunicorn's gevent worker patches ``threading``)."""

    def __init__(self, op: Op, max_batch: int = MAX_BATCH) -> None:
        self.op = op
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Call] = []
        self._busy = False
        self.batches = 0  # round trips sent (the tests read it)

    def __call__(self, conn: redis.Redis, **named: Any) -> Any:
        call = _Call(named)
        with self._lock:
            self._waiting.append(call)
            lead, self._busy = not self._busy, True
        if not lead:
            try:
                call.done.wait()
            except BaseException:  # killed while waiting (a greenlet's kill, a timeout)
                self._abandon(call)
                raise
            lead = call.lead
        if lead:
            # The turn is this caller's: it is first in line, so its call is in the batch.
            self._send(conn)
        if call.error is not None:
            raise call.error
        return call.result

    def _send(self, conn: redis.Redis) -> None:
        """Send what waits (up to ``max_batch``), answer each, then hand the turn to the next
        waiting caller, or end it."""
        with self._lock:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        try:
            self._answer(conn, batch)
        finally:
            for call in batch:
                if call.result is _UNSET and call.error is None:  # interrupted (a timeout's kill)
                    call.error = redis.ConnectionError("interrupted before Redis answered")
                call.done.set()
            self._pass_turn()

    def _pass_turn(self) -> None:
        """The next waiting caller sends next; with none waiting, the next to come sends."""
        with self._lock:
            following = self._waiting[0] if self._waiting else None
            self._busy = following is not None
            if following is not None:
                following.lead = True
        if following is not None:
            following.done.set()

    def _abandon(self, call: _Call) -> None:
        """A caller that stops waiting leaves the line; if the turn had just been passed to it,
        it passes it on, so the callers behind it are never left waiting for a dead one."""
        with self._lock:
            queued = call in self._waiting
            if queued:
                self._waiting.remove(call)
            had_turn = queued and call.lead
        if had_turn:
            self._pass_turn()

    def _answer(self, conn: redis.Redis, batch: list[_Call]) -> None:
        self.batches += 1
        try:
            if len(batch) == 1:  # a pipeline of one would check SCRIPT EXISTS first
                batch[0].result = self.op(conn, **batch[0].named)
                return
            ends: list[int] = []  # where each call's commands end in the pipeline
            with conn.pipeline(transaction=False) as pipe:
                for call in batch:
                    self.op.queue(pipe, **call.named)
                    ends.append(len(pipe))
                outs = pipe.execute(raise_on_error=False)
            for call, start, end in zip(batch, [0, *ends[:-1]], ends, strict=True):
                own = outs[start:end]
                if any(isinstance(out, redis.exceptions.NoScriptError) for out in own):
                    own = [self.op(conn, **call.named)]  # a script (one command): loads it
                failed = [out for out in own if isinstance(out, Exception)]
                if failed:
                    call.error = failed[0]
                else:
                    call.result = own[-1]
        except Exception as e:  # each caller raises what its call met
            for call in batch:
                if call.result is _UNSET:
                    call.error = e
