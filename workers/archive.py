"""Folding: one-recipient messages at rest, packed several to a Redis key.

Why: a one-recipient message that lives in records of its own costs 700 to 1,600 bytes of Redis
for the whole retention period (its hash, and its share of the submission's chunk, history,
report hash and linkid records: each a key with some 70 bytes of overhead before any data),
where the budget is 200. Once a submission is final and every recipient on it has reported,
nothing writes to it again, so its messages are folded: each becomes one field of a shared
bucket (``schema.folded_key``, about 110 bytes), and the submission's own records are deleted.
Its linkids' records stay, holding the member ids, so a late reply still finds the message it
answers (a lone message's linkids go too: they name it, ``chunks.linkid_owner``); a late report
on a folded submission is counted and otherwise ignored.

What is folded: a submission (chunk 0, never split) that carries only one-recipient messages,
either a batch's (``workers.coalesce``) or a lone message's own, once no callback to any of
them is waiting or being delivered (else it is tried again ``AFTER`` later). Readers use
``Message.read``, which falls back to the folded record; nothing that writes a message reads
one, except a reply's callback, whose counters go to a live hash laid over the record.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import redis

from workers.chunks import linkid_owner
from workers.storage import schema, scripts
from workers.storage.codecs import ReportValue
from workers.storage.schema import FOLD, Chunk, Folded, Message, MessageState, decode
from workers.text import mobile_of

#: A finished submission stays as it is this long (its history readable) before it is folded.
AFTER = 60.0
LATER = -1  # a callback is still on its way, or something wrote meanwhile: fold it later
#: A folded submission's linkid record (:func:`members`): "b:<prefix>;<the rests, packed>" (the
#: rests of the ids as raw bytes in URL-safe base64: 11 characters a member where hex and a
#: separator took 16), or an older release's "a:<prefix>;<rest>;<rest>…".
PACKED, FOLDED = "b:", "a:"


def schedule(pipe: redis.Redis | redis.client.Pipeline, mid: str, n: int, at: float) -> None:
    """Fold the submission at ``at``: its last recipient has reported, or the window is over."""
    pipe.zadd(FOLD, {schema.chunk_ref(mid, n): at})


#: A worker's claim on a page of due submissions: no other worker folds them meanwhile, and if it
#: dies they are due again after this.
CLAIM = 60.0


def fold_due(conn: redis.Redis, now: float, budget: float = 5.0, page: int = 100) -> int:
    """Fold the submissions due by ``now``, a page at a time, until none is due or ``budget``
    seconds are spent; returns how many messages were folded.

    Every worker runs it (``workers.maintenance``), so folding grows with the fleet: each takes
    a page by a claim (``scripts.CLAIM_DUE``, as callbacks are taken), so two workers fold
    different submissions; a worker that dies leaves its page to be claimed again. A fold
    itself is one WATCH/MULTI, so even two runs on one submission fold it once. Lone messages
    fold :data:`GROUP` to a transaction (:func:`fold_lone`), a batch on its own (:func:`fold`)."""
    folded, until, seen = 0, time.monotonic() + budget, set[bytes]()
    upto = f"{now:.3f}" if math.isfinite(now) else "+inf"
    while True:
        claim = max(now if math.isfinite(now) else 0, time.time()) + CLAIM  # past ``now``: not due to others
        taken = scripts.CLAIM_DUE(conn, due=FOLD, now=upto, until=f"{claim:.3f}", count=page)
        fresh = [raw for raw in taken if raw not in seen]
        subs = [(raw, *schema.parse_ref(raw.decode())[1:]) for raw in fresh]
        lone = [(raw, mid, n) for raw, mid, n in subs if not mid.startswith(schema.BATCH_PREFIX)]
        results = [(raw, fold(conn, mid, n)) for raw, mid, n in subs if mid.startswith(schema.BATCH_PREFIX)]
        for i in range(0, len(lone), GROUP):
            group = lone[i : i + GROUP]
            results += zip(
                [raw for raw, _, _ in group], fold_lone(conn, [(mid, n) for _, mid, n in group]), strict=True
            )
        for raw, done in results:
            if done == LATER:
                conn.zadd(FOLD, {raw: max(now if math.isfinite(now) else 0, time.time()) + AFTER})
            elif done:
                folded += done  # its fold's transaction took it off the schedule
            else:
                conn.zrem(FOLD, raw)  # never to be folded
        seen.update(fresh)  # not again in this call, whatever ``now`` says
        if len(taken) < page or not fresh or time.monotonic() >= until:
            return folded


#: Lone messages folded in one transaction: a round trip each for the group where there were
#: four a message. Redis's WATCH looks through what a connection already watches for each key it
#: adds, so the keys a transaction watches cost it their number squared: 64 here.
GROUP = 16


@dataclass
class _Read:
    """What a fold reads of a submission, watched first (:func:`_watched`)."""

    mid: str
    n: int
    chunk: dict[bytes, bytes]
    owner: dict[bytes, bytes]
    reports: dict[bytes, bytes]
    waiting: int  # the lone message's callbacks queued
    ttl: int
    history: list[bytes]

    @staticmethod
    def watched(mid: str, n: int) -> list[str]:
        # A lone message's callbacks with them (a batch has none of its own).
        keys = (schema.chunk_key(mid, n), schema.recipients_key(mid, n), schema.message_key(mid))
        return [*keys, schema.callback_queue_key(mid)]

    @staticmethod
    def queue(reads: redis.client.Pipeline, mid: str, n: int) -> None:
        chunk_k, reports_k, owner_k, callbacks = _Read.watched(mid, n)
        reads.hgetall(chunk_k)
        reads.hgetall(owner_k)
        reads.hgetall(reports_k)
        reads.exists(callbacks)
        # The records live as long as the submission's message: a lone message's own lifetime,
        # or a batch's, which was made (with the retention) after each of its members was
        # accepted, so it outlives them all (by their wait in the pool). One TTL a fold.
        reads.ttl(owner_k)
        reads.lrange(schema.history_key(mid, n), 0, -1)

    FIELDS: ClassVar[int] = 6  # replies :meth:`queue` queues

    @cached_property
    def submission(self) -> Chunk:
        return Chunk.from_hash(self.chunk, mid=self.mid)

    @cached_property
    def reported(self) -> dict[str, str]:
        return decode(self.reports)

    def members(self) -> dict[str, str] | None:
        """Mobile → message of a submission that can fold now, else ``None``."""
        chunk = self.submission
        owner = Message.from_hash(self.owner, id=self.mid)
        members = chunk.members
        if not members and owner.recipients == 1 and not owner.via and len(chunk.mobiles) == 1:
            members = {chunk.mobiles[0]: self.mid}  # a lone message's own submission
        if chunk.state != "submitted" or self.n != 0 or owner.chunk_seq != 1 or not members:
            return None
        if len(self.reported) < len(members):
            return None  # scheduled again by the last report or the window's end
        return members


@dataclass
class _Plan:
    """What a fold writes: each member's record in its bucket, and the submission's records gone."""

    read: _Read
    members: dict[str, str]
    msgs: dict[str, Message]

    def names(self) -> list[str]:
        return [n for msg in self.msgs.values() for n in (msg.api_key, msg.account)]

    def values(self, codes: dict[str, str]) -> dict[str, bytes] | None:
        """Each member's folded record, or ``None`` when one cannot fold (raises ValueError for
        a linkid of another form)."""
        chunk, reports = self.read.submission, self.read.reported
        values = {}
        for mobile, m in self.members.items():
            msg = self.msgs[m]
            if msg.state != MessageState.SENDING or mobile_of(msg.items) not in ("", mobile):
                return None
            msg.items = msg.items or mobile  # a planned message's own list is dropped: it is the chunk's
            report = ReportValue.decode(reports[mobile])
            values[m] = msg.fold(
                Folded(chunk.linkid, chunk.submitted_at, report.state, report.code, float(report.at)),
                (codes[msg.api_key], codes[msg.account]),
            )
        return values

    def write(self, writes: _Writes, values: dict[str, bytes]) -> None:
        mid, n, life = self.read.mid, self.read.n, max(int(self.read.ttl), 60)
        chunk = self.read.submission
        linkids = {chunk.linkid} | _linkids(self.read.history)
        until = int(time.time()) + life  # a bucket lives as long as its longest-lived record
        for m, value in values.items():  # a batch's members were made together: a bucket or two
            writes.record(schema.folded_key(m), schema.folded_field(m), value, until)
        writes.gone += [
            *(schema.message_key(m) for m in self.members.values()),
            schema.message_key(mid),
            schema.chunk_key(mid, n),
            schema.recipients_key(mid, n),
            schema.history_key(mid, n),
            *(schema.report_seen_key(lk) for lk in linkids),
            *(schema.callback_log_key(m) for m in self.members.values()),  # its counters are in the record
        ]
        lone = list(self.members.values()) == [mid]
        for lk in linkids:
            if lone and linkid_owner(lk) == mid:
                writes.gone.append(schema.linkid_key(lk))  # the linkid names its message (chunks.new_linkid)
            else:
                writes.refs.append((schema.linkid_key(lk), _members_ref(list(self.members.values())), life))
        writes.folded.append(schema.chunk_ref(mid, n))
        writes.count += len(values)


@dataclass
class _Writes:
    """The writes of one transaction's folds, merged: a group of lone messages (:func:`fold_lone`)
    shares one ``DEL``, one ``ZREM``, one count and each bucket's ``HSET``, where each fold made
    seven commands of its own. redis-py's packing of a command cost a folding worker more CPU
    than anything else it does (cProfile), and Redis a command each."""

    buckets: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    until: dict[str, int] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    refs: list[tuple[str, str, int]] = field(default_factory=list)  # linkid record, members, lifetime
    folded: list[str] = field(default_factory=list)
    count: int = 0

    def record(self, bucket: str, name: bytes, value: bytes, until: int) -> None:
        self.buckets.setdefault(bucket, {})[name] = value
        self.until[bucket] = max(until, self.until.get(bucket, 0))

    def queue(self, pipe: redis.client.Pipeline) -> None:
        for bucket, fields in self.buckets.items():
            pipe.hset(bucket, mapping=fields)  # type: ignore[arg-type]
            pipe.expireat(bucket, self.until[bucket], nx=True)
            pipe.expireat(bucket, self.until[bucket], gt=True)
        if self.gone:
            pipe.delete(*self.gone)
        for key, ref, life in self.refs:
            pipe.set(key, ref, ex=life)
        if self.folded:
            pipe.zrem(FOLD, *self.folded)
        pipe.hincrby(schema.COUNTS, "folded", self.count)


def fold(conn: redis.Redis, mid: str, n: int) -> int:
    """Fold submission ``n`` of message ``mid`` if it can be; returns the messages folded, or
    ``LATER``.

    WATCH/MULTI over every record it reads: a report, a reply's callback or an operator that
    writes meanwhile makes it try again on the next schedule, never fold a stale copy. Each
    record is watched on ``pipe``'s connection before it is read, and reads go in one round
    trip on another: a lone message's fold is four round trips (watch, read, its names' codes,
    the transaction), a batch's two more (its members').
    """
    with conn.pipeline() as pipe:
        try:
            pipe.watch(*_Read.watched(mid, n))
            with conn.pipeline(transaction=False) as reads:
                _Read.queue(reads, mid, n)
                read = _Read(mid, n, *reads.execute())
            members = read.members()
            if members is None:
                return 0
            if list(members.values()) == [mid]:
                found, waiting = [read.owner], read.waiting  # a lone message: watched and read above
            else:
                # The members' messages are watched, their callback queues only read: an event
                # queued after this read is delivered against the folded record, as one queued
                # just after the fold is (its counters in a live hash laid over it). Each key a
                # WATCH adds costs Redis a look through those watched before it: a batch of
                # 1000 cost it 16 µs a member watching both, 4 watching the messages alone.
                callbacks = [schema.callback_queue_key(m) for m in members.values()]
                pipe.watch(*(schema.message_key(m) for m in members.values()))
                with conn.pipeline(transaction=False) as reads:
                    reads.exists(*callbacks)
                    for m in members.values():
                        reads.hgetall(schema.message_key(m))
                    waiting, *found = reads.execute()
            if waiting:
                return LATER
            plan = _Plan(
                read, members, {m: Message.from_hash(raw, id=m) for m, raw in zip(members.values(), found, strict=True)}
            )
            values = plan.values(schema.name_codes(conn, plan.names()))
            if values is None:
                return 0
        except redis.WatchError:
            return LATER
        except ValueError:
            return 0  # a linkid of another form: it stays as it is
        pipe.multi()
        writes = _Writes()
        plan.write(writes, values)
        writes.queue(pipe)
        try:
            pipe.execute()
        except redis.WatchError:
            return LATER  # something wrote meanwhile: look again later
    return len(values)


def fold_lone(conn: redis.Redis, subs: list[tuple[str, int]]) -> list[int]:
    """Fold lone messages' submissions in one transaction, as :func:`fold` folds one: every
    record watched, then read in one round trip, their names' codes in one, the writes in one.
    Returns what :func:`fold` would for each. A write to any of them meanwhile fails the
    transaction whole: then each is folded on its own."""
    results: list[int] = []
    plans: list[tuple[int, _Plan]] = []
    apart: list[int] = []
    with conn.pipeline() as pipe:
        try:
            pipe.watch(*(key for mid, n in subs for key in _Read.watched(mid, n)))
            with conn.pipeline(transaction=False) as reads:
                for mid, n in subs:
                    _Read.queue(reads, mid, n)
                got = reads.execute()
            for i, (mid, n) in enumerate(subs):
                read = _Read(mid, n, *got[i * _Read.FIELDS : (i + 1) * _Read.FIELDS])
                members = read.members()
                if members is not None and list(members.values()) != [mid]:
                    results.append(0)
                    apart.append(i)  # a batch after all: folded on its own, after this
                elif members is None or read.waiting:
                    results.append(LATER if members is not None else 0)
                else:
                    results.append(0)  # until its plan says otherwise
                    plans.append((i, _Plan(read, members, {mid: Message.from_hash(read.owner, id=mid)})))
            codes = schema.name_codes(conn, [name for _, plan in plans for name in plan.names()]) if plans else {}
            pipe.multi()
            writes = _Writes()
            for i, plan in plans:
                try:
                    values = plan.values(codes)
                except ValueError:
                    continue  # a linkid of another form: it stays as it is
                if values is not None:
                    plan.write(writes, values)
                    results[i] = len(values)
            if writes.folded:
                writes.queue(pipe)
                pipe.execute()
        except redis.WatchError:
            return [fold(conn, mid, n) for mid, n in subs]  # something wrote meanwhile: one by one
    for i in apart:
        results[i] = fold(conn, *subs[i])
    return results


def _linkids(history: list[bytes]) -> set[str]:
    """Every linkid the submission carried (an ambiguous outcome sends it again under another)."""
    out = set()
    for line in history:
        step = json.loads(line)
        out |= {step[k] for k in ("linkid", "old_linkid") if step.get(k)}
    return out


def _members_ref(mids: list[str]) -> str:
    """The members' ids once, their common prefix apart: the ids of one submission's messages
    were made within its window, so they share their first 8 or 9 hex digits."""
    lo, hi = min(mids), max(mids)  # the common prefix of all is that of the least and greatest
    prefix = lo[: next((i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if a != b), len(lo))]
    rests = [m[len(prefix) :] for m in mids]
    width = schema.MID_LENGTH - len(prefix)
    if width > 0 and all(len(r) == width for r in rests):
        try:
            raw = bytes.fromhex("".join("0" * (width % 2) + r for r in rests))
            return PACKED + prefix + ";" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
        except ValueError:
            pass  # an id not in hex: spelled out
    return FOLDED + ";".join([prefix, *rests])


def is_folded(conn: redis.Redis, mid: str) -> bool:
    return bool(mid) and any(v is not None for v in conn.hmget(schema.folded_key(mid), schema.folded_fields(mid)))


def members(ref: str) -> list[str] | None:
    """A linkid record's folded members, or ``None`` if it names a live chunk."""
    if ref.startswith(PACKED):
        prefix, packed = ref[len(PACKED) :].split(";", 1)
        raw = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
        width = schema.MID_LENGTH - len(prefix)
        size = (width + 1) // 2
        return [prefix + raw[i : i + size].hex()[-width:] for i in range(0, len(raw), size)]
    if not ref.startswith(FOLDED):
        return None
    prefix, *rest = ref[len(FOLDED) :].split(";")
    return [prefix + m for m in rest]
