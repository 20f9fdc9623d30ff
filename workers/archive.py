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
    itself is one WATCH/MULTI, so even two runs on one submission fold it once."""
    folded, until, seen = 0, time.monotonic() + budget, set[bytes]()
    upto = f"{now:.3f}" if math.isfinite(now) else "+inf"
    while True:
        claim = max(now if math.isfinite(now) else 0, time.time()) + CLAIM  # past ``now``: not due to others
        taken = scripts.CLAIM_DUE(conn, due=FOLD, now=upto, until=f"{claim:.3f}", count=page)
        fresh = [raw for raw in taken if raw not in seen]
        for raw in fresh:
            _, mid, n = schema.parse_ref(raw.decode())
            done = fold(conn, mid, n)
            if done == LATER:
                conn.zadd(FOLD, {raw: max(now if math.isfinite(now) else 0, time.time()) + AFTER})
            elif done:
                folded += done  # its fold's transaction took it off the schedule
            else:
                conn.zrem(FOLD, raw)  # never to be folded
        seen.update(fresh)  # not again in this call, whatever ``now`` says
        if len(taken) < page or not fresh or time.monotonic() >= until:
            return folded


def fold(conn: redis.Redis, mid: str, n: int) -> int:
    """Fold submission ``n`` of message ``mid`` if it can be; returns the messages folded, or
    ``LATER``.

    WATCH/MULTI over every record it reads: a report, a reply's callback or an operator that
    writes meanwhile makes it try again on the next schedule, never fold a stale copy. Each
    record is watched on ``pipe``'s connection before it is read, and reads go in one round
    trip on another: a lone message's fold is four round trips (watch, read, its names' codes,
    the transaction), a batch's two more (its members').
    """
    chunk_k, reports_k, owner_k = schema.chunk_key(mid, n), schema.recipients_key(mid, n), schema.message_key(mid)
    own_callbacks = schema.callback_queue_key(mid)  # a lone message's (a batch has none of its own)
    with conn.pipeline() as pipe:
        try:
            pipe.watch(chunk_k, reports_k, owner_k, own_callbacks)
            # The records live as long as the submission's message: a lone message's own
            # lifetime, or a batch's, which was made (with the retention) after each of its members
            # was accepted, so it outlives them all (by their wait in the pool). One TTL a fold.
            with conn.pipeline(transaction=False) as reads:
                reads.hgetall(chunk_k)
                reads.hgetall(owner_k)
                reads.hgetall(reports_k)
                reads.exists(own_callbacks)
                reads.ttl(owner_k)
                reads.lrange(schema.history_key(mid, n), 0, -1)
                raw_chunk, raw_owner, raw_reports, waiting, ttl, history = reads.execute()
            chunk = Chunk.from_hash(raw_chunk, mid=mid)
            owner = Message.from_hash(raw_owner, id=mid)
            members = chunk.members
            if not members and owner.recipients == 1 and not owner.via and len(chunk.mobiles) == 1:
                members = {chunk.mobiles[0]: mid}  # a lone message's own submission
            if chunk.state != "submitted" or n != 0 or owner.chunk_seq != 1 or not members:
                return 0
            reports = decode(raw_reports)
            if len(reports) < len(members):
                return 0  # scheduled again by the last report or the window's end
            keys = [schema.message_key(m) for m in members.values()]
            callbacks = [schema.callback_queue_key(m) for m in members.values()]
            if keys == [owner_k]:
                found = [raw_owner]  # a lone message: watched and read above
            else:
                pipe.watch(*keys, *callbacks)
                with conn.pipeline(transaction=False) as reads:
                    reads.exists(*callbacks)
                    for key in keys:
                        reads.hgetall(key)
                    waiting, *found = reads.execute()
            if waiting:
                return LATER
            msgs = {m: Message.from_hash(raw, id=m) for m, raw in zip(members.values(), found, strict=True)}
            life = max(int(ttl), 60)
            values = {}
            codes = schema.name_codes(conn, [n for msg in msgs.values() for n in (msg.api_key, msg.account)])
            for mobile, m in members.items():
                msg = msgs[m]
                if msg.state != MessageState.SENDING or mobile_of(msg.items) not in ("", mobile):
                    return 0
                msg.items = msg.items or mobile  # a planned message's own list is dropped: it is the chunk's
                report = ReportValue.decode(reports[mobile])
                values[m] = msg.fold(
                    Folded(chunk.linkid, chunk.submitted_at, report.state, report.code, float(report.at)),
                    (codes[msg.api_key], codes[msg.account]),
                )
        except redis.WatchError:
            return LATER
        except ValueError:
            return 0  # a linkid of another form: it stays as it is
        linkids = {chunk.linkid} | _linkids(history)
        now = time.time()
        pipe.multi()
        buckets: dict[str, dict[bytes, bytes]] = {}
        for m, value in values.items():
            buckets.setdefault(schema.folded_key(m), {})[schema.folded_field(m)] = value
        until = int(now) + life  # a bucket lives as long as its longest-lived record
        for bucket, fields in buckets.items():  # a batch's members were made together: a bucket or two
            pipe.hset(bucket, mapping=fields)  # type: ignore[arg-type]
            pipe.expireat(bucket, until, nx=True)
            pipe.expireat(bucket, until, gt=True)
        pipe.delete(
            *keys,
            owner_k,
            chunk_k,
            reports_k,
            schema.history_key(mid, n),
            *(schema.report_seen_key(lk) for lk in linkids),
            *(schema.callback_log_key(m) for m in members.values()),  # its counters are in the record
        )
        lone = list(members.values()) == [mid]
        for lk in linkids:
            if lone and linkid_owner(lk) == mid:
                pipe.delete(schema.linkid_key(lk))  # the linkid names its message (chunks.new_linkid)
            else:
                pipe.set(schema.linkid_key(lk), _members_ref(list(members.values())), ex=life)
        pipe.zrem(FOLD, schema.chunk_ref(mid, n))
        pipe.hincrby(schema.COUNTS, "folded", len(values))
        try:
            pipe.execute()
        except redis.WatchError:
            return LATER  # something wrote meanwhile: look again later
    return len(values)


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
