"""Every Lua script smsgw runs, in one place, each with its KEYS and ARGV by name.

A script is called through :class:`Script` with named arguments, never by position:
``CAPS(conn, caps=[…], now=…, at=…, ref=…, longest=…, windows=[…])``. The names are the
legend: ``keys`` and ``args`` list them in the order Lua sees them as ``KEYS[i]`` and
``ARGV[i]``; a name ending in ``*`` takes a sequence and fills the rest. Each script reads its
arguments into named locals first, so the body reads like the legend. States, field names and
lifetimes reach Lua as arguments from their Python homes (``workers.storage.schema``), never as
copies typed a second time.

Scripts run by EVALSHA (redis-py loads a script on first use on each server), so the text
crosses the network once; inside a pipeline they run by EVAL, with the batch. ``tests/test_scripts.py``
runs each script on its own against a real Redis: what it reads, writes and returns, failure
branches included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis


class Script:
    """A Lua script with named KEYS and ARGV (see the module docstring)."""

    def __init__(self, *, keys: str, args: str, source: str) -> None:
        self.keys = tuple(keys.split())
        self.args = tuple(args.split())
        self.source = source
        # register_script only hashes the text: no connection is made here.
        self._script = redis.Redis().register_script(source)

    def __call__(self, client: Any, **named: Any) -> Any:
        """Run on ``client`` (a connection or a pipeline, whose ``execute`` returns the result)."""
        known = {name.rstrip("*") for name in (*self.keys, *self.args)}
        if unknown := set(named) - known:
            raise TypeError(f"unknown script argument(s): {', '.join(sorted(unknown))}")
        keys, args = _ordered(self.keys, named), _ordered(self.args, named)
        if isinstance(client, redis.client.Pipeline):
            # EVAL, not EVALSHA: redis-py would check with SCRIPT EXISTS before every pipeline,
            # one more round trip each time, to save sending a text that travels in the batch.
            return client.eval(self.source, len(keys), *keys, *args)
        return self._script(keys=keys, args=args, client=client)

    def queue(self, pipe: redis.client.Pipeline, **named: Any) -> None:
        """Queue a call by EVALSHA alone, with no SCRIPT EXISTS before the pipeline: its answer
        is a ``NoScriptError`` when the server does not hold the script yet (a restart, a new
        server), and the caller runs that call again through the script, which loads it."""
        keys, args = _ordered(self.keys, named), _ordered(self.args, named)
        pipe.evalsha(self._script.sha, len(keys), *keys, *args)

    def batch(self, pipe: redis.client.Pipeline, **named: Any) -> None:
        """Queue a call by EVALSHA in a pipeline of many calls: redis-py checks SCRIPT EXISTS
        once a pipeline, which hundreds of calls share (a pipeline of one would pay it: use the
        call itself there)."""
        keys, args = _ordered(self.keys, named), _ordered(self.args, named)
        self._script(keys=keys, args=args, client=pipe)


def _ordered(names: Sequence[str], named: Mapping[str, Any]) -> list[Any]:
    values: list[Any] = []
    for name in names:
        if name.endswith("*"):
            values.extend(named.get(name[:-1], ()))
        elif name in named:
            values.append(named[name])
        else:
            raise TypeError(f"missing script argument: {name}")
    return values


#: A Lua function both the caps' script and the accept's use (a one-recipient send checks its
#: cap inside its accept: one round trip, not two).
_CAP_CHECK = """
-- Per-mobile frequency caps (workers.guardrails). A mobile's sends are one string,
-- "<tag><second>,<tag><second>…" (`tag`: 3 digits from the request's id, for give_back), which
-- lives as long as its latest send matters. One send is 13 digits with no leading zero, which
-- Redis keeps as an integer in its object header: 88 bytes for the day a code's mobile is kept,
-- where a hex tag made it text (120: a short string a script writes takes the allocation of the
-- Lua engine's cached argument at its position, as long as the longest seen) and a sorted set
-- 152. Drops the sends older than the longest window, counts those within each window either
-- side of `at` (when this one goes), and records this one when no window is full. `windows` are
-- (count, seconds) pairs. Returns 1 when over a cap (the record as it was), 0 when recorded.
local function cap_check(key, now, at, tag, longest, windows)
  -- Recorded first, read in the same command (SET … GET): a mobile with no send in its windows
  -- (most, for codes) is then one command, not a read and a write. Every cap allows at least
  -- one send (workers.settings), so that first send is never over one.
  local raw = redis.pcall('SET', key, tag .. at, 'EX', math.ceil(at - now + longest), 'GET')
  if not raw then return 0 end
  local kept, times, older = {}, {}, false
  if type(raw) == 'table' and raw.err then
    -- A sorted set an older smsgw wrote (send times as scores), left as it was by the failed
    -- SET: read once; the SET below replaces it.
    local old, parts = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES'), {}
    for j = 2, #old, 2 do parts[#parts + 1] = '___' .. math.floor(tonumber(old[j])) end
    raw, older = table.concat(parts, ','), true
  end
  local before = 0  -- the latest send recorded before this one
  for entry in string.gmatch(raw, '[^,]+') do
    local t = tonumber(string.sub(entry, 4))
    if t and t > now - longest then
      kept[#kept + 1], times[#times + 1] = entry, t
      if t > before then before = t end
    end
  end
  for w = 1, #windows, 2 do
    local count, window = 0, tonumber(windows[w + 1])
    for _, t in ipairs(times) do
      if t >= at - window and t <= at + window then count = count + 1 end
    end
    if count >= tonumber(windows[w]) then
      -- Over: what was recorded before goes back as it was, as long as its latest send matters.
      if not older then redis.call('SET', key, raw, 'EX', math.ceil(before - now + longest)) end
      return 1
    end
  end
  kept[#kept + 1] = tag .. at
  redis.call('SET', key, table.concat(kept, ','), 'EX', math.ceil(math.max(at, before) - now + longest))
  return 0
end
"""

ACCEPT = Script(
    keys="fence message index idempotency pool pools cap woken",
    args=(
        "ttl index_min_ms index_ttl idem_value idem_ttl pool_entry pool_size pool_due fields id_ms date_index id_random"
        " cap_now cap_at cap_tag cap_longest cap_windows*"
    ),
    source=_CAP_CHECK
    + """
-- Accept a message: its hash, the key's index, the idempotency answer, and (one-recipient
-- sends) its entry in a coalescing pool (workers.coalesce), all at once. Its counts and usage
-- are added up in the process (workers.tally). idempotency, pool and cap may be '' (none).
-- `cap`: a one-recipient send's frequency caps (`cap_check` above), checked here so the door
-- makes one round trip, not two. Returns the pool's size (0 without one); -1 when the fence was
-- set first: a settle() already answered that nothing was stored, so nothing is; -2 when the
-- mobile is over a cap: nothing is stored, and the caller stores the message suppressed.
-- A second run (redis-py retries a command once on a timeout; the first may still arrive) finds
-- the message and writes nothing again.
local fence, message, index = KEYS[1], KEYS[2], KEYS[3]
local idempotency, pool, pools = KEYS[4], KEYS[5], KEYS[6]
local ttl, index_min_ms, index_ttl = ARGV[1], ARGV[2], ARGV[3]
local idem_value, idem_ttl, pool_entry, pool_size = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local pool_due, fields_json, id_ms, date_index, id_random = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local cap, woken = KEYS[7], KEYS[8]
if redis.call('EXISTS', fence, message) > 0 then
  if redis.call('EXISTS', fence) == 1 then return -1 end
  return 0
end
if cap ~= '' then
  local cap_now, cap_at, cap_longest = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[16])
  if cap_check(cap, cap_now, cap_at, ARGV[15], cap_longest, {unpack(ARGV, 17)}) == 1 then return -2 end
end
local fields = {}
for name, value in pairs(cjson.decode(fields_json)) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', message, unpack(fields))
redis.call('EXPIRE', message, ttl)
-- The index entry is dated by Redis and holds the id as two integers: its random part (`n`) and
-- its milliseconds modulo 2^20 (`t`), which with the entry's own date give them back (within
-- 8 minutes either side). About 28 bytes an entry, where the id's 12 hex digits took 32 and the
-- whole id 45. Dated by Redis, an entry never comes before the last one: dated by the id, every
-- message accepted after a younger one (most, under load) needed a second XADD with its whole id.
redis.call('XADD', index, 'MINID', '~', index_min_ms, '*', 'n', id_random, 't', tonumber(id_ms) % 1048576)
-- The index's lifetime is pushed out by the process's first request of the key each day, and by
-- a message scheduled past it (`date_index`): far enough to cover the whole day's messages.
if date_index == '1' and redis.call('TTL', index) < tonumber(index_ttl) then redis.call('EXPIRE', index, index_ttl) end
if idempotency ~= '' then redis.call('SET', idempotency, idem_value, 'EX', idem_ttl) end
if pool == '' then return 0 end
redis.call('ZADD', pool, pool_due, pool_entry)  -- scored by when it must leave
local size = redis.call('ZCARD', pool)
if size == pool_size then
  -- Full: it leaves now. Only as it fills: a pool that holds more (no worker has claimed it yet)
  -- is due now already, and a claim that leaves a full pool behind dates it now itself.
  redis.call('ZADD', pools, 0, pool)
elseif size == 1 then
  -- A new pool. One that holds more is in `pools` already: a claim that leaves entries behind
  -- re-dates it there, and only an emptied pool leaves. A coalescer that found no pool at all
  -- waits on `woken` (BLPOP), not polling: one token wakes one, which takes it from there.
  redis.call('ZADD', pools, 'NX', pool_due, pool)
  redis.call('LPUSH', woken, 1)
  redis.call('LTRIM', woken, 0, 0)
end
return size
""",
)

CLAIM_POOL = Script(
    keys="pool pools batch watch",
    args=(
        "size message_prefix now batch_id mode fields grace ttl account priority batch_ref member_ref_prefix"
        " scan_factor accepted sending"
    ),
    source="""
-- Take up to `size` of a pool's oldest sends, at most one per mobile, skipping those no longer
-- `accepted` (cancelled, expired), into a batch message, or alone when only one was taken. The
-- batch's validity is its earliest member's (the send prunes members past their own). Re-dates
-- the pool from its oldest remaining entry (0: full, due now) or drops it from `pools` when empty.
-- Returns the batch id, the one member's id when it was alone, or false when nothing was taken.
-- A batch whose every member is to be redacted says so (`redact` 2) and each member gets its
-- text's length now (in characters: UTF-8 lead bytes), so its redaction reads nothing
-- (workers.lifecycle._member_texts).
local pool, pools, batch, watch = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local size, prefix, now, batch_id = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local mode, grace, ttl, account, priority = ARGV[5], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]
local batch_ref, member_ref, scan, accepted, sending = ARGV[11], ARGV[12], tonumber(ARGV[13]), ARGV[14], ARGV[15]
local f = cjson.decode(ARGV[6])
local cands = redis.call('ZRANGE', pool, 0, size * scan - 1)
local seen, items, mids, taken = {}, {}, {}, {}
local text, redact, valid_until, every, lengths = nil, '0', 0, true, {}
for _, member in ipairs(cands) do
  if #items >= size then break end
  local bar = string.find(member, '|', 1, true)
  local mid, item = string.sub(member, 1, bar - 1), string.sub(member, bar + 1)
  local st = redis.call('HMGET', prefix .. mid, f.state, f.text, f.redact, f.valid_until)
  if st[1] ~= accepted then
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
      if st[3] == '1' then
        redact = '1'
        local _, length = string.gsub(st[2] or '', '[^\\128-\\191]', '')
        lengths[mid] = length
      else
        every = false
      end
      local its_end = tonumber(st[4] or '0') or 0
      if its_end > 0 and (valid_until == 0 or its_end < valid_until) then valid_until = its_end end
    end
  end
end
for i = 1, #taken, 500 do
  redis.call('ZREM', pool, unpack(taken, i, math.min(i + 499, #taken)))
end
local oldest = redis.call('ZRANGE', pool, 0, 0, 'WITHSCORES')
if #oldest == 0 then
  redis.call('ZREM', pools, pool)
else
  local due = tonumber(oldest[2])
  if redis.call('ZCARD', pool) >= size then due = 0 end
  redis.call('ZADD', pools, due, pool)
end
if #items == 0 then return false end
if #items == 1 then
  -- Alone: it goes as the message it is, no batch around it (a batch of one only costs keys).
  redis.call('ZADD', watch, now + grace, member_ref .. mids[1])
  return mids[1]
end
for _, mid in ipairs(mids) do
  if lengths[mid] then
    redis.call('HSET', prefix .. mid, f.state, sending, f.via, batch_id, f.chunks, 1, f.planned, now,
      f.text_length, lengths[mid])
  else
    redis.call('HSET', prefix .. mid, f.state, sending, f.via, batch_id, f.chunks, 1, f.planned, now)
  end
end
if redact == '1' and every then redact = '2' end
local kind = 't'
if mode == 'v' then kind, text = 'p', '{value0}' elseif mode == 'p' then kind = 'p' end
redis.call('HSET', batch, f.state, accepted, f.account, account, f.priority, priority, f.kind, kind,
  f.text, text or '', f.items, table.concat(items, ';'), f.mids, table.concat(mids, ';'),
  f.recipients, #items, f.created, now, f.redact, redact, f.job_seq, 1)
if valid_until > 0 then redis.call('HSET', batch, f.valid_until, valid_until) end
redis.call('EXPIRE', batch, ttl)
redis.call('ZADD', watch, now + grace, batch_ref)
return batch_id
""",
)

CAPS = Script(
    keys="caps*",
    args="now at tag longest windows*",
    source=_CAP_CHECK
    + """
-- Per-mobile frequency caps for every mobile of a request (workers.guardrails). Returns, per
-- mobile, 1 when over a cap (nothing recorded) or 0 (recorded).
local now, at, tag, longest = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local windows = {unpack(ARGV, 5)}
local out = {}
for i, key in ipairs(KEYS) do out[i] = cap_check(key, now, at, tag, longest, windows) end
return out
""",
)

UNCAP = Script(
    keys="caps*",
    args="tag",
    source="""
-- Give one recorded send back (workers.guardrails.give_back): the first whose tag is `tag`, in
-- each mobile's caps. Another request's send with the same tag counts the same.
for _, key in ipairs(KEYS) do
  local kept, found, raw = {}, false, redis.pcall('GET', key)
  if type(raw) ~= 'string' then raw = '' end  -- none, or an older smsgw's sorted set: kept as it is
  for entry in string.gmatch(raw, '[^,]+') do
    if not found and string.sub(entry, 1, 3) == ARGV[1] then found = true else kept[#kept + 1] = entry end
  end
  if found and #kept == 0 then
    redis.call('DEL', key)
  elseif found then
    redis.call('SET', key, table.concat(kept, ','), 'KEEPTTL')
  end
end
return 1
""",
)

LEASE = Script(
    keys="lease",
    args="owner ttl_ms",
    source="""
-- Take a fleet-wide lease if it is free, renew it if `owner` holds it. Returns 1 when held.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
""",
)

MERGE_REPORTS = Script(
    keys="pairs*",
    args="ttl unknown delivered owner reports*",
    source="""
-- Merge reports, in order (two of one recipient merge as they would one call each), each (or
-- the end of the report window: state `unknown`) into its chunk's recipient hash as
-- "state|code|time", keeping the latest, with `delivered` winning a tie, and never letting
-- `unknown` replace a real report. Counts the message's recipients by state (`r_<state>`); the
-- fleet's counts and the day's usage are added up by the caller (workers.tally) from what this
-- returns. One call for many reports: a call's own cost (its arguments, its reply, its
-- propagation) was more than a report's merge (issue 24).
-- `pairs`: (recipients, message) a report; `reports`: (mobile, state, code, at, all) a report,
-- `all` the chunk's recipients (0: do not check); `owner`: the message's fields to return,
-- comma-separated.
-- Returns, a report: {result, first, owner fields...}: result 2 when this was the chunk's last
-- report, 1 when the recipient reached a new final state, 0 otherwise (the message gone
-- included, with no owner fields); first 1 when it is the recipient's first final state.
local ttl, unknown, delivered = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local fields = {}
for name in string.gmatch(ARGV[4], '[^,]+') do fields[#fields + 1] = name end
-- Each recipients hash the call names is read once (the recipients the call names, and its
-- size) and written once, at the end; the reports merge in order in between, on those values.
-- A report then costs two commands on its message (its owner, its count), where reading and
-- writing its recipient in the hash one report at a time cost five (issue 24).
local hashes, order = {}, {}
for i = 1, #KEYS / 2 do
  local key, mobile = KEYS[2 * i - 1], ARGV[5 + (i - 1) * 5]
  local h = hashes[key]
  if not h then
    h = {mobiles = {}, cur = {}, writes = {}, written = {}}
    hashes[key], order[#order + 1] = h, key
  end
  if h.cur[mobile] == nil then h.cur[mobile], h.mobiles[#h.mobiles + 1] = false, mobile end
end
for _, key in ipairs(order) do
  local h = hashes[key]
  local values = redis.call('HMGET', key, unpack(h.mobiles))
  for j, mobile in ipairs(h.mobiles) do h.cur[mobile] = values[j] or false end
  h.size = redis.call('HLEN', key)
end
local function write(h, mobile, value)
  h.cur[mobile] = value
  if not h.writes[mobile] then h.written[#h.written + 1] = mobile end
  h.writes[mobile] = value
end
local function merge(h, message, mobile, state, code, at, all)
  -- The message is gone (expired, or folded while this report was on its way): nothing to merge.
  local owner = redis.call('HMGET', message, unpack(fields))
  if not owner[1] then return {0, 0} end
  for i = 1, #owner do owner[i] = owner[i] or '' end
  local cur = h.cur[mobile]
  local value = state .. '|' .. code .. '|' .. at
  if cur then
    local st, _, ts = string.match(cur, '^(%a)|(.*)|([%d.]+)$')
    if state == unknown then return {0, 0} end
    if st ~= unknown then
      local t_old, t_new = tonumber(ts), tonumber(at)
      if t_old > t_new then return {0, 0} end
      if t_old == t_new and (st == delivered or st == state) then return {0, 0} end
    end
    if st == state then
      write(h, mobile, value)
      return {0, 0}
    end
    redis.call('HINCRBY', message, 'r_' .. st, -1)
  end
  local result = 1
  if not cur then
    h.size = h.size + 1
    if h.size == 1 then h.made = message end  -- made now: its lifetime (its message's), once
    if all > 0 and h.size >= all then result = 2 end
  end
  write(h, mobile, value)
  redis.call('HINCRBY', message, 'r_' .. state, 1)
  return {result, cur and 0 or 1, unpack(owner)}
end
local out = {}
for i = 1, #KEYS / 2 do
  local a = 4 + (i - 1) * 5
  out[i] = merge(hashes[KEYS[2 * i - 1]], KEYS[2 * i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
    tonumber(ARGV[a + 5]) or 0)
end
for _, key in ipairs(order) do
  local h = hashes[key]
  if #h.written > 0 then
    local args = {}
    for _, mobile in ipairs(h.written) do args[#args + 1], args[#args + 2] = mobile, h.writes[mobile] end
    redis.call('HSET', key, unpack(args))
    if h.made then
      local left = redis.call('TTL', h.made)
      redis.call('EXPIRE', key, left > 0 and left or ttl)
    end
  end
end
return out
""",
)

STORE_REPLY = Script(
    keys="seen reply indexes*",
    args="ttl received rid fields",
    source="""
-- Store a reply once (`seen` is set first: a replay stores nothing and returns 0) and add it to
-- every index (the global one, by mobile, account, message and key); each index drops what
-- outlived the retention and expires with it. Returns 1 when stored.
local seen, reply = KEYS[1], KEYS[2]
local ttl, received, rid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if not redis.call('SET', seen, 1, 'NX', 'EX', ttl) then return 0 end
for k, v in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', reply, k, v) end
redis.call('EXPIRE', reply, ttl)
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], received, rid)
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', received - ttl)
  redis.call('EXPIRE', KEYS[i], ttl)
end
return 1
""",
)

CLAIM_DUE = Script(
    keys="due",
    args="now until count",
    source="""
-- Claim up to `count` members that are due (score <= now) in a schedule: each is moved to
-- `until`, past the work's deadline, so no other worker takes it meanwhile and any worker takes
-- it again if the work dies. Callbacks due (workers.notifications) and submissions to fold
-- (workers.archive) are claimed so. Returns the members claimed.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, mid in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], mid) end
return due
""",
)

SETTLE_CALLBACKS = Script(
    keys="due queue",
    args="mid next",
    source="""
-- After a delivery: a message with no event left leaves `due`; one with events is due at `next`.
-- One step, so an event queued meanwhile is never stranded. Returns 1 if it stays due.
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
""",
)

SWITCH_ROUTE = Script(
    keys="routes counts",
    args="priority target own",
    source="""
-- Note where a priority's traffic goes; a change (from what was noted, or from the account itself
-- when nothing was) is a switch, counted once however many workers see it. Returns 1 on a switch.
local before = redis.call('HGET', KEYS[1], ARGV[1]) or ARGV[3]
if before == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'route_switches', 1)
return 1
""",
)

SETTLE_VERIFICATION = Script(
    keys="record index due counts usage conv",
    args=("vid mode match max_checks now fields account usage_ttl conv_ttl pending approved failed expired"),
    source="""
-- A verification's verdict (workers.verify), at most once: mode 'check' with match 1 approves,
-- with 0 counts a wrong code and locks it at max_checks; mode 'expire' only ends what is past
-- its end. A closed verification changes no more. The outcome is counted (fleet, the key's day,
-- and a use for the route's conversion); approval frees the mobile's index for a new one, a
-- lock keeps it until it expires. Returns {status, checks_left, closed_now}.
local record, index, due, counts, usage, conv = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local vid, mode, match, max_checks, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local f = cjson.decode(ARGV[6])
local account, usage_ttl, conv_ttl = ARGV[7], ARGV[8], ARGV[9]
local pending, approved, failed, expired = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local v = redis.call('HMGET', record, f.status, f.expires, f.checks)
if not v[1] then
  redis.call('ZREM', due, vid)
  return {'missing', 0, 0}
end
local checks = tonumber(v[3] or '0')
if v[1] ~= pending then
  redis.call('ZREM', due, vid)
  return {v[1], math.max(0, max_checks - checks), 0}
end
local outcome
if tonumber(now) >= tonumber(v[2]) then
  outcome = expired
elseif mode == 'expire' then
  return {pending, max_checks - checks, 0}
elseif match == '1' then
  outcome = approved
else
  checks = redis.call('HINCRBY', record, f.checks, 1)
  if checks < max_checks then return {pending, max_checks - checks, 0} end
  outcome = failed
end
redis.call('HSET', record, f.status, outcome, f.closed, now)
redis.call('ZREM', due, vid)
if outcome == approved and redis.call('GET', index) == vid then redis.call('DEL', index) end
if outcome == approved then
  redis.call('HINCRBY', conv, 'u', 1)
  redis.call('EXPIRE', conv, conv_ttl)
end
redis.call('HINCRBY', counts, 'verify:' .. account .. ':' .. outcome, 1)
redis.call('HINCRBY', usage, 'verifications_' .. outcome, 1)
redis.call('EXPIRE', usage, usage_ttl)
return {outcome, math.max(0, max_checks - checks), 1}
""",
)

#: Every script, by name: what ``tests/test_scripts.py`` checks each of.
ALL = {name: value for name, value in dict(globals()).items() if isinstance(value, Script) and name.isupper()}
