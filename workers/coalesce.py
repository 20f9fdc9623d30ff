"""Many one-recipient requests, one provider submission.

Services mostly send one recipient per request (verification codes, order notices). Each would
cost a provider call and a slot of the account's rate; the provider takes 1000 recipients a
call. So a one-recipient send does not get a plan job of its own: accept (``gateway.messages``)
puts it in a *pool* (``schema.pool_key``: one per account, priority and text, or template,
entries ``<mid>|<item>`` scored by when each must leave: its accept time plus its priority's
window, as the accepting API process is configured) and notes in ``schema.POOLS`` when the
pool's oldest send must leave (``NX``: a pool already waiting keeps its earlier time). A claim
that leaves sends behind re-dates the pool from its oldest remaining entry, so no process
applies its own window to another's sends. Any worker's coalescer thread
(:func:`loop`) takes a due pool's sends into a *batch*: a message of its own (``b…``, no API
key sees it) whose plan cuts the usual chunks, with the member message of each recipient on
the chunk. From there a batch is sent, held, split, retried and settled like any message; what
ends on its chunks is counted on each member (``workers.lifecycle``), and reports find the
member by (linkid, mobile) (``workers.reports``).

Three ways to share a submission:

- ``t``: the same plain text (one ``post_send`` text);
- ``p``: the same 点点通 template (one ``post_send_ddt``, each member's values in its group);
- ``v``: plain texts that differ, on an account with ``COALESCE_PLAIN=1``: one 点点通 whose
  template is ``{value0}`` and each member's whole text its value. Only for texts without an
  ASCII ``,`` or ``;`` (the groups' separators), so the text sent is the caller's, exactly.

A pool that is due but not full waits while the account's provider calls this second are at
their evenly paced share of its rate (``accounts.take_pace``): under load, submissions grow to
carry what arrives instead of queueing small ones behind the rate limit. A full pool (due ``0``)
leaves at once. ``high`` pools are tried first and paced apart, with a reserve the others
cannot spend.

The claim is one Lua script: it takes the pool's oldest sends, at most one per mobile (a phone
twice in one submission would get one message), skips those cancelled meanwhile, marks each
member ``sending`` with the batch's id, and writes the batch, unplanned and on the sweeper's
watch, all at once; a send taken alone is not wrapped in a batch but planned as the message
it is (a batch of one cost twice the keys, and the sweeper's watch covers it the same way).
Any number of coalescers on any number of hosts may claim one pool: each
send goes into exactly one batch. A coalescer that dies after the claim leaves a batch the
sweeper plans, as it would a message whose plan job was lost.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence

import redis

from workers import accounts, lifecycle, verify
from workers.runtime import Runtime
from workers.settings import Settings
from workers.storage import schema, scripts
from workers.storage.schema import Message, MessageState
from workers.text import expansion_problem

log = logging.getLogger("smsgw.coalesce")

#: How long a coalescer sleeps at most when a pool waits but is not due (the windows are far longer).
IDLE = 0.05
#: How long a coalescer that found no pool at all waits on ``schema.POOLS_NEW`` at most (the
#: accept that makes a pool wakes it at once): a look a second, not twenty, from an idle fleet.
#: The bound catches what no token announces (a pool an older release made) and a stop.
WAIT_NEW = 1.0
#: Candidates the claim looks at per batch size (it skips repeated mobiles and cancelled sends).
SCAN_FACTOR = 3


def entry(mid: str, item: str) -> str:
    """A send's member in its pool: ``<mid>|<item>`` (the item is its mobile, or its 点点通 group)."""
    return f"{mid}|{item}"


def parse_entry(member: str) -> tuple[str, str]:
    mid, _, item = member.partition("|")
    return mid, item


def due_at(settings: Settings, priority: str, now: float) -> float:
    """When a send accepted ``now`` must leave its pool: its priority's window later, as the
    accepting process is configured (the pool's score; ``ACCEPT`` also notes it in ``POOLS``)."""
    return now + settings.coalesce_ms.get(priority, 0) / 1000


def pooled(settings: Settings, priority: str, items: Sequence[str]) -> bool:
    """Whether a send waits in a pool (:func:`pool_for`): one recipient, coalescing on for its
    priority. ``send_at`` and test keys are the caller's to exclude."""
    return len(items) == 1 and bool(settings.coalesce_ms.get(priority))


def pool_for(
    settings: Settings, account: str, priority: str, kind: str, text: str, items: Sequence[str]
) -> tuple[str, str] | None:
    """The pool a send joins and its entry there, or ``None`` if it is sent on its own
    (:func:`pooled`). ``send_at`` and test keys are the caller's to exclude."""
    if not pooled(settings, priority, items):
        return None
    item = items[0]
    if kind == "p":
        mode, shared = "p", text
    elif settings.accounts[account].coalesce_plain and _fits_one_value(text):
        mode, shared, item = "v", "", f"{item},{text}"
    else:
        mode, shared = "t", text
    # Keyed: a pool of a code's text must not name the text (``verify.digest``).
    name = verify.digest(settings.verify_key, f"{mode}\x00{shared}")[:16]
    return schema.pool_key(account, priority, mode + name), item


def _fits_one_value(text: str) -> bool:
    """A plain text that can travel as a 点点通 value exactly: no separator, nothing the provider
    would expand."""
    return "," not in text and ";" not in text and expansion_problem(text) is None


def claim(rt: Runtime, pool: str, now: float | None = None) -> str | None:
    """Take up to a chunk of the pool's sends into a new batch; returns the id of the message to
    plan: the batch, or the one send taken when it was alone (``None``: the pool had nothing to
    take). Either is unplanned and on the sweeper's watch until planned."""
    conn, settings = rt.conn, rt.settings
    now = time.time() if now is None else now
    _, account, priority, what = pool.rsplit(":", 3)
    if account not in settings.accounts:
        conn.zrem(schema.POOLS, pool)
        return None
    bid = schema.new_batch_id()
    size = accounts.chunk_size(conn, settings, account)
    taken = scripts.CLAIM_POOL(
        conn,
        pool=pool,
        pools=schema.POOLS,
        batch=schema.message_key(bid),
        watch=schema.WATCH,
        size=size,
        message_prefix=schema.message_key(""),
        now=f"{now:.3f}",
        batch_id=bid,
        mode=what[0],
        fields=json.dumps(Message.FIELDS),
        grace=settings.job_grace_seconds,
        ttl=settings.retention_seconds,
        account=account,
        priority=priority,
        batch_ref=schema.message_ref(bid),
        member_ref_prefix=schema.message_ref(""),
        scan_factor=SCAN_FACTOR,
        accepted=MessageState.ACCEPTED,
        sending=MessageState.SENDING,
    )
    return taken.decode() if taken else None


def flush_due(rt: Runtime, now: float | None = None) -> int:
    """Claim every due pool and plan what each claim made (a batch, or a send that was alone) at
    once; returns how many were planned."""
    conn = rt.conn
    now = time.time() if now is None else now
    made = 0
    due_now = [
        (raw[0].decode(), raw[1])
        for raw in conn.zrangebyscore(schema.POOLS, "-inf", now, start=0, num=100, withscores=True)
    ]
    due_now.sort(key=lambda entry: entry[0].rsplit(":", 3)[2] != "high")  # high first, then by due time
    for pool, due in due_now:
        _, account, priority, _ = pool.rsplit(":", 3)
        rate = rt.settings.accounts[account].rate_per_second if account in rt.settings.accounts else 0
        if due > 0 and rate and not accounts.take_pace(conn, account, rate, time.time(), priority):
            continue  # not full, and the account's calls are spent for now: let it grow
        while (claimed := claim(rt, pool)) is not None:  # a batch, or a send that was alone
            lifecycle.plan(conn, rt.settings, claimed)
            made += 1
            if (conn.zscore(schema.POOLS, pool) or float("inf")) > now:
                break  # what is left is not due yet
    return made


def next_due(conn: redis.Redis) -> float | None:
    first = conn.zrange(schema.POOLS, 0, 0, withscores=True)
    return float(first[0][1]) if first else None


def wait_for_a_pool(rt: Runtime) -> bool:
    """Block until an accept makes a pool (its token on ``schema.POOLS_NEW``: True) or
    :data:`WAIT_NEW` passes; within the connection's socket timeout, so the wait is not taken
    for a dead server."""
    timeout = rt.settings.redis_socket_timeout
    return rt.conn.blpop([schema.POOLS_NEW], timeout=min(WAIT_NEW, timeout / 2) if timeout else WAIT_NEW) is not None


def wake_another(conn: redis.Redis) -> None:
    """Pass the token on, as ``ACCEPT`` leaves it: one token wakes one coalescer, and one woken
    while pools wait wakes the next, so a quiet fleet is all looking within moments of the first
    code, not one coalescer alone until the others' waits end."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.lpush(schema.POOLS_NEW, 1)
        pipe.ltrim(schema.POOLS_NEW, 0, 0)
        pipe.execute()


def loop(rt: Runtime, stop: threading.Event) -> None:
    """Sleep until the next pool is due (at most :data:`IDLE`), flush, repeat; with no pool at
    all, wait for one to be made (:func:`wait_for_a_pool`). A Redis error is logged and waited
    out."""
    woken = False
    while not stop.is_set():
        try:
            made = flush_due(rt)
            due = next_due(rt.conn)
            if due is None:
                woken = wait_for_a_pool(rt)
                continue
            if woken:  # pools wait: a peer still waiting joins in
                wake_another(rt.conn)
                woken = False
            wait = min(IDLE, max(0.0, due - time.time()))
            if not made and due <= time.time():
                wait = IDLE / 5  # due but paced out: look again soon, not in a busy loop
        except redis.RedisError as e:
            log.warning("coalescer: %s; retrying", type(e).__name__)
            wait = 1.0
        if wait:
            stop.wait(wait)


def start(rt: Runtime) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(rt, stop), name="smsgw-coalescer", daemon=True)
    thread.start()
    return thread, stop
