"""What smsgw keeps in Redis, and the only code that writes it.

Keys (short on purpose: a million-recipient campaign has a thousand chunks and a million
recipient entries, and every byte of key name is paid per entry)::

    sg:m:<mid>          hash  the message: state, account, priority, text/template, counts, …
    sg:c:<mid>:<n>      hash  chunk n: state, linkid, attempts, last code/text/error, mobiles
    sg:ce:<mid>:<n>     list  chunk n's history (capped), one JSON line per step
    sg:lk:<linkid>      str   "<mid>:<n>": ties a report or reply to the chunk
    sg:acct:<name>      hash  account state (active|held), reason, since, lowered chunk size
    sg:held:<name>      zset  chunk refs waiting on a held account, scored by hold time
    sg:watch            zset  refs ("m:<mid>" or "c:<mid>:<n>") the sweeper checks, by deadline
    sg:idem:<key>:<h>   str   idempotency record of one API key's Idempotency-Key
    sg:failures         list  the latest failed chunks, for operators

Chunk states and who moves them (compare-and-set, see :func:`transition`)::

    pending ─► submitting ─► submitted                     (provider answered 0)
       ▲            ├──────► retry ─► submitting …         (transport error, 5xx, garbage)
       │            ├──────► unconfirmed ─► submitted      (ambiguous; a report came)
       │            │              └─────► pending         (no report: new linkid)
       │            ├──────► held ─► pending               (account held; resumed)
       │            ├──────► split                          (answer 3: two new chunks)
       │            └──────► failed                         (5, 7, budget spent, held too long)
       └── cancelled (from pending, retry, held)
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.client import Pipeline

PENDING = "pending"
SUBMITTING = "submitting"
SUBMITTED = "submitted"
RETRY = "retry"
UNCONFIRMED = "unconfirmed"
HELD = "held"
SPLIT = "split"
FAILED = "failed"
CANCELLED = "cancelled"

#: A chunk in one of these states will never be submitted again.
FINAL = frozenset({SUBMITTED, FAILED, CANCELLED, SPLIT})
#: States a send job may start a provider call from.
SENDABLE = frozenset({PENDING, RETRY})
CANCELLABLE = frozenset({PENDING, RETRY, HELD})

HISTORY_MAX = 50
FAILURES_MAX = 200


def msg_key(mid: str) -> str:
    return f"sg:m:{mid}"


def chunk_key(mid: str, n: int) -> str:
    return f"sg:c:{mid}:{n}"


def history_key(mid: str, n: int) -> str:
    return f"sg:ce:{mid}:{n}"


def linkid_key(linkid: str) -> str:
    return f"sg:lk:{linkid}"


def account_key(name: str) -> str:
    return f"sg:acct:{name}"


def held_key(name: str) -> str:
    return f"sg:held:{name}"


def await_key(account: str) -> str:
    """Chunks of this account submitted and still within the report window, by submit time."""
    return f"sg:await:{account}"


WATCH = "sg:watch"
FAILURES = "sg:failures"


def chunk_ref(mid: str, n: int) -> str:
    return f"c:{mid}:{n}"


def parse_ref(ref: str) -> tuple[str, str, int]:
    """``"c:<mid>:<n>"`` → ``("c", mid, n)``; ``"m:<mid>"`` → ``("m", mid, -1)``."""
    kind, _, rest = ref.partition(":")
    if kind == "c":
        mid, _, n = rest.rpartition(":")
        return kind, mid, int(n)
    return kind, rest, -1


def new_message_id() -> str:
    """Time-ordered (milliseconds, hex), then 48 random bits: sortable, no coordination."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def ttl_of(conn: redis.Redis | Pipeline, key: str, fallback: int = 60) -> int:
    """Seconds the key has left, so what belongs to it expires with it (``fallback`` if none)."""
    ttl = int(conn.ttl(key) or 0)
    return ttl if ttl > 0 else fallback


def decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def load_chunk(conn: redis.Redis, mid: str, n: int) -> dict[str, str]:
    return decode(conn.hgetall(chunk_key(mid, n)))  # type: ignore[arg-type]


def load_message(conn: redis.Redis, mid: str) -> dict[str, str]:
    return decode(conn.hgetall(msg_key(mid)))  # type: ignore[arg-type]


def record(pipe: Pipeline | redis.Redis, mid: str, n: int, event: str, **fields: Any) -> None:
    """Append one step to the chunk's history (kept to the last ``HISTORY_MAX``)."""
    line = json.dumps({"at": round(time.time(), 3), "event": event, **fields}, ensure_ascii=False)
    key = history_key(mid, n)
    pipe.rpush(key, line)
    pipe.ltrim(key, -HISTORY_MAX, -1)


def transition(
    conn: redis.Redis,
    mid: str,
    n: int,
    allowed: Iterable[str],
    new_state: str,
    fields: dict[str, Any] | None = None,
    *,
    linkid: str | None = None,
    also: Callable[[Pipeline, dict[str, str]], None] | None = None,
) -> dict[str, str] | None:
    """Move chunk ``n`` to ``new_state`` if its state is in ``allowed`` (and, given ``linkid``,
    it still carries that linkid); returns the chunk as it was, or ``None`` if it did not move.

    WATCH/MULTI: a concurrent writer (a second run of the same job, the sweeper, an operator)
    makes one of the two fail the check instead of both acting. ``also`` adds writes to the
    same transaction (message counters, indexes) and sees the chunk as it was.
    """
    key = chunk_key(mid, n)
    allowed = frozenset(allowed)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                before = decode(pipe.hgetall(key))  # type: ignore[arg-type]
                if before.get("st") not in allowed:
                    return None
                if linkid is not None and before.get("lk") != linkid:
                    return None
                pipe.multi()
                pipe.hset(key, mapping={"st": new_state, "ts": f"{time.time():.3f}", **(fields or {})})
                if new_state in FINAL:
                    _count_final(pipe, mid, before, new_state)
                if also is not None:
                    also(pipe, before)
                pipe.execute()
                return before
            except redis.WatchError:
                continue


def _count_final(pipe: Pipeline, mid: str, chunk: dict[str, str], state: str) -> None:
    """A chunk reached a final state: the message's counters follow, in the same transaction."""
    pipe.hincrby(msg_key(mid), f"c_{state}", 1)
    if state != SPLIT:
        pipe.hincrby(msg_key(mid), f"r_{state}", int(chunk.get("nr", "0")))
        pipe.hincrby("sg:counts", f"recipients_{state}", int(chunk.get("nr", "0")))
    pipe.zrem(WATCH, chunk_ref(mid, int(chunk.get("n", "-1"))))


def latest_failures(conn: redis.Redis, limit: int) -> list[dict[str, Any]]:
    """The latest failed chunks, newest first, each with the chunk's state now (an operator may
    have requeued it since)."""
    rows = []
    for raw in conn.lrange(FAILURES, 0, limit - 1):
        at, ref, account, reason = [*raw.decode().split(" ", 3), "", "", ""][:4]
        mid, _, n = ref.rpartition(":")
        state = conn.hget(chunk_key(mid, int(n or 0)), "st")
        rows.append(
            {"at": float(at), "message": mid, "chunk": n, "account": account, "reason": reason,
             "state": state.decode() if state else "expired"}
        )  # fmt: skip
    return rows


def message_state(msg: dict[str, str]) -> str:
    """A message's state follows its chunks once they are planned, then its recipients' reports."""
    state = msg.get("st", "")
    if state != "sending":
        return state
    chunks = int(msg.get("chunks", "0"))
    done = {s: int(msg.get(f"c_{s}", "0")) for s in (SUBMITTED, FAILED, CANCELLED, SPLIT)}
    if sum(done.values()) < chunks:
        return "sending"
    live = chunks - done[SPLIT]
    if done[SUBMITTED] == 0:
        return "failed" if done[FAILED] else "cancelled"
    submitted = int(msg.get(f"r_{SUBMITTED}", "0"))
    delivered, undelivered, unknown = (int(msg.get(f"r_{s}", "0")) for s in ("D", "U", "X"))
    if delivered and delivered == submitted and done[SUBMITTED] == live:
        return "delivered"
    if delivered:
        return "partially_delivered"
    if undelivered + unknown >= submitted:
        return "undelivered" if undelivered else "unknown"
    return "submitted" if done[SUBMITTED] == live else "partially_submitted"
