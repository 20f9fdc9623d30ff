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

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence

import redis

from workers import accounts, lifecycle, schema
from workers.runtime import Runtime
from workers.schema import Message
from workers.settings import Settings
from workers.text import expansion_problem

log = logging.getLogger("smsgw.coalesce")

#: How long a coalescer sleeps at most when no pool is due (the windows are far longer).
IDLE = 0.05
#: Candidates the claim looks at per batch size (it skips repeated mobiles and cancelled sends).
SCAN_FACTOR = 3

# KEYS: pool, POOLS, batch message, WATCH.
# ARGV: size, message key prefix, now, batch id, mode, Message.FIELDS (JSON), grace,
#       ttl, account, priority, batch's watch ref, a message's watch ref without its id.
CLAIM = """
local size, now = tonumber(ARGV[1]), tonumber(ARGV[3])
local f = cjson.decode(ARGV[6])
local cands = redis.call('ZRANGE', KEYS[1], 0, size * 3 - 1)
local seen, items, mids, taken = {}, {}, {}, {}
local text, redact = nil, '0'
for _, member in ipairs(cands) do
  if #items >= size then break end
  local bar = string.find(member, '|', 1, true)
  local mid, item = string.sub(member, 1, bar - 1), string.sub(member, bar + 1)
  local key = ARGV[2] .. mid
  local st = redis.call('HMGET', key, f.state, f.text, f.redact)
  if st[1] ~= 'accepted' then
    table.insert(taken, member)
  else
    local comma = string.find(item, ',', 1, true)
    local mobile = comma and string.sub(item, 1, comma - 1) or item
    if not seen[mobile] then
      seen[mobile] = true
      table.insert(items, item)
      table.insert(mids, mid)
      table.insert(taken, member)
      text = text or st[2]
      if st[3] == '1' then redact = '1' end
    end
  end
end
for i = 1, #taken, 500 do
  redis.call('ZREM', KEYS[1], unpack(taken, i, math.min(i + 499, #taken)))
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #oldest == 0 then
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  local due = tonumber(oldest[2])
  if redis.call('ZCARD', KEYS[1]) >= size then due = 0 end
  redis.call('ZADD', KEYS[2], due, KEYS[1])
end
if #items == 0 then return false end
if #items == 1 then
  -- Alone: it goes as the message it is, no batch around it (a batch of one only costs keys).
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[7]), ARGV[12] .. mids[1])
  return mids[1]
end
for _, mid in ipairs(mids) do
  redis.call('HSET', ARGV[2] .. mid, f.state, 'sending', f.via, ARGV[4], f.chunks, 1, f.planned, ARGV[3])
end
local kind = 't'
if ARGV[5] == 'v' then kind, text = 'p', '{value0}' elseif ARGV[5] == 'p' then kind = 'p' end
redis.call('HSET', KEYS[3], f.state, 'accepted', f.account, ARGV[9], f.priority, ARGV[10], f.kind, kind,
  f.text, text or '', f.items, table.concat(items, ';'), f.mids, table.concat(mids, ';'),
  f.recipients, #items, f.created, ARGV[3], f.redact, redact, f.job_seq, 1)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[7]), ARGV[11])
return ARGV[4]
"""


def pool_for(
    settings: Settings, account: str, priority: str, kind: str, text: str, items: Sequence[str]
) -> tuple[str, str] | None:
    """The pool a send joins and its entry there, or ``None`` if it is sent on its own (more than
    one recipient, coalescing off for its priority). ``send_at`` and test keys are the caller's
    to exclude."""
    if len(items) != 1 or not settings.coalesce_ms.get(priority):
        return None
    item = items[0]
    if kind == "p":
        mode, shared = "p", text
    elif settings.accounts[account].coalesce_plain and _fits_one_value(text):
        mode, shared, item = "v", "", f"{item},{text}"
    else:
        mode, shared = "t", text
    digest = hashlib.sha1(f"{mode}\x00{shared}".encode()).hexdigest()[:16]
    return schema.pool_key(account, priority, mode + digest), item


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
    taken = conn.eval(
        CLAIM,
        4,
        pool,
        schema.POOLS,
        schema.message_key(bid),
        schema.WATCH,
        size,
        schema.message_key(""),
        f"{now:.3f}",
        bid,
        what[0],
        json.dumps(Message.FIELDS),
        settings.job_grace_seconds,
        settings.retention_seconds,
        account,
        priority,
        schema.message_ref(bid),
        schema.message_ref(""),
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


def loop(rt: Runtime, stop: threading.Event) -> None:
    """Sleep until the next pool is due (at most :data:`IDLE`), flush, repeat; a Redis error is
    logged and waited out."""
    while not stop.is_set():
        try:
            made = flush_due(rt)
            due = next_due(rt.conn)
            wait = IDLE if due is None else min(IDLE, max(0.0, due - time.time()))
            if not made and due is not None and due <= time.time():
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
