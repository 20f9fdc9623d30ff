"""Status reports and replies: stored raw first, then tied to what was sent.

Both arrive once and never again (by push or by pull), so nothing is parsed before it is in
Redis: the push receiver and the pullers append raw items to the inbox; :func:`ingest` (one
process at a time, under a lease) applies them and only then trims them off. Applying is
idempotent, so a crash mid-batch just applies the batch again.

Per recipient, chunk by chunk, ``schema.recipients_key`` maps mobile → ``state|code|time`` with state
``D`` (delivered), ``U`` (undelivered, keeping the operator's code) or ``X`` (unknown: no report
within the window). A missing entry means submitted, no report yet. Reports merge in Lua by
(report time, DELIVRD before the rest): late, duplicated and shuffled reports, by push and pull
mixed, end in the same state whatever their order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from workers import archive, guardrails, lifecycle, routes
from workers import provider as p
from workers.chunks import linkid_owner
from workers.notifications import queue_event
from workers.runtime import Runtime
from workers.storage import schema, scripts
from workers.storage.codecs import ReportValue
from workers.storage.schema import (
    COUNTS,
    DEAD,
    INBOX,
    ORPHANS,
    REPLIES,
    Chunk,
    Message,
    Reply,
    ReportState,
    recipients_key,
)
from workers.text import mobile_of
from workers.times import epoch, from_provider, rfc3339

log = logging.getLogger("smsgw.reports")

DEAD_MAX = 10_000
ORPHANS_MAX = 100_000
BATCH = 500
MERGE_BATCH = 500  # reports merged in one pipeline
#: Reports merged in one script call (``scripts.MERGE_REPORTS``): a script holds Redis while it
#: runs, and a hundred merges take it about a millisecond.
MERGE_GROUP = 100


def item_id(item: dict[str, str]) -> str:
    """The identity of a pushed or pulled item: same linkid, mobile, status or text, and time."""
    parts = [item.get(k, "") for k in ("kind", "linkid", "mobile", "status", "content", "time")]
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()


class _StorePush:
    """A pushed item's inbox entry: one ``RPUSH``, sent with the process's other pushes of the
    moment (``workers.storage.batched``). Nothing marks it as seen: a replay (the provider does
    not retry a push, so a replay is a network's or a proxy's) is stored and applied again, and
    applying changes nothing the first did not (a report merges by its time, a reply is stored
    once by its identity, a folded message ignores both); only an orphan report is counted
    twice. A marker a push cost Redis a ``SET NX`` with its expiry, about 4 µs of every push
    and a key for an hour, to save work on replays that do not come (issue 24)."""

    def __call__(self, conn: redis.Redis, **named: Any) -> Any:
        return conn.rpush(INBOX, named["entry"])

    def queue(self, pipe: Pipeline, *, entry: str) -> None:
        pipe.rpush(INBOX, entry)


STORE_PUSH = _StorePush()


def receive(rt: Runtime, items: list[dict[str, str]]) -> None:
    """Store pushed items in the inbox, raw, before the push is answered."""
    for item in items:
        entry = json.dumps({"src": "push", **item}, ensure_ascii=False)
        rt.batched(STORE_PUSH)(rt.conn, entry=entry)
    rt.tally.add(COUNTS, "pushed", len(items))


def store_pull(conn: redis.Redis, account: str, kind: str, raw: str) -> None:
    """A pulled answer, raw, before anything parses it."""
    conn.rpush(INBOX, json.dumps({"src": "pull", "account": account, "kind": kind, "raw": raw}, ensure_ascii=False))


def ingest(rt: Runtime, batch: int = BATCH) -> int:
    """Apply the oldest inbox entries, then trim them off. Returns how many entries it consumed
    (0: the inbox is empty)."""
    conn = rt.conn
    raw_entries = conn.lrange(INBOX, 0, batch - 1)
    applied = 0
    cache: dict[str, _Sent | None] = {}
    # Reports are merged in one pipeline a few hundred at a time, not one round trip each: a
    # round trip costs Redis more than the merge itself (issue 24). In order, so two reports of
    # one recipient merge as they would one by one.
    pending: list[_Pending] = []
    items = [item for raw in raw_entries for item in _items_of(conn, json.loads(raw))]
    _look_up(rt, (item.get("linkid", "") for item in items if item.get("kind") != "mo"), cache)
    for item in items:
        if item.get("kind") == "mo":
            applied += _apply_reply(rt, item)
        elif (ready := _prepare_report(rt, item, cache)) is not None:
            pending.append(ready)
        if len(pending) >= MERGE_BATCH:
            applied += _merge_pending(rt, pending)
            pending = []
    applied += _merge_pending(rt, pending)
    if raw_entries:
        conn.ltrim(INBOX, len(raw_entries), -1)
        log.debug("ingested %d entries, %d items applied", len(raw_entries), applied)
    return len(raw_entries)


def _items_of(conn: redis.Redis, entry: dict[str, Any]) -> list[dict[str, str]]:
    """A pushed entry's item, or a pulled answer's, parsed line by line (a line that does not
    parse is dead-lettered)."""
    if entry["src"] != "pull":
        # "seen" and "nonce": the replay marker of an older release, in an entry it stored
        return [{k: v for k, v in entry.items() if k not in ("seen", "nonce")}]
    items = []
    for line in entry["raw"].splitlines():
        if not line.strip():
            continue
        try:
            item = _parse_line(entry["kind"], line)
        except p.ParseError as e:
            _dead(conn, line, e.reason, entry)
            continue
        item["account"] = entry["account"]
        items.append(item)
    return items


def _parse_line(kind: str, line: str) -> dict[str, str]:
    if kind == "rpt":
        r = p.parse_report_line(line)
        return {"kind": "rpt", "mobile": r.mobile, "linkid": r.linkid, "status": r.status, "time": r.time}
    m = p.parse_reply_line(line)
    return {"kind": "mo", "mobile": m.mobile, "linkid": m.linkid, "content": m.content, "time": m.time}


def _dead(conn: redis.Redis, line: str, reason: str, entry: dict[str, Any]) -> None:
    record = {"line": line, "reason": reason, "src": entry.get("src"), "at": time.time()}
    with conn.pipeline(transaction=False) as pipe:
        pipe.lpush(DEAD, json.dumps(record, ensure_ascii=False))
        pipe.ltrim(DEAD, 0, DEAD_MAX - 1)
        pipe.hincrby(COUNTS, "dead_lettered", 1)
        pipe.execute()
    log.warning("dead-lettered a %s line: %s", entry.get("kind"), reason)


@dataclass(frozen=True)
class _Sent:
    """What a report needs to know of the chunk its linkid names; looked up once per batch.
    A message's chunk has one owner; a batch's chunk one per mobile (``workers.coalesce``), whose
    own fields (callback, key, account) the merge reads where it writes (``scripts.MERGE_REPORTS``)."""

    mid: str
    n: int
    submitted: float
    members: dict[str, str]  # a batch's: mobile → member id
    account: str = ""
    recipients: int = 0
    folded: bool = False  # the submission is folded (``workers.archive``): its reports are in

    def owner_of(self, mobile: str) -> str | None:
        """The message a reported mobile belongs to (``None``: not one of this chunk's)."""
        return self.members.get(mobile) if self.members else self.mid


def linkid_ref(conn: redis.Redis, linkid: str) -> str | None:
    """What a linkid's record says: ``<mid>:<n>``, or a folded submission's members."""
    ref = conn.get(schema.linkid_key(linkid)) if linkid else None
    return ref.decode() if ref is not None else None


def chunk_of(conn: redis.Redis, linkid: str, ref: str | None = None) -> tuple[str, int] | None:
    """The live chunk a linkid names (any linkid it ever carried); ``None`` once folded."""
    ref = linkid_ref(conn, linkid) if ref is None else ref
    if ref is None or archive.members(ref) is not None:
        return None
    mid, _, n = ref.rpartition(":")
    return mid, int(n)


def _sent(rt: Runtime, linkid: str, cache: dict[str, _Sent | None]) -> _Sent | None:
    if linkid not in cache:
        _look_up(rt, [linkid], cache)
    return cache[linkid]


_SENT_FIELDS = tuple(Chunk.field_of(f) for f in ("state", "submitted_at", "items", "mids", "account", "unconfirmed"))


def _look_up(rt: Runtime, linkids: Iterable[str], cache: dict[str, _Sent | None]) -> None:
    """What each linkid names, into ``cache``, in two round trips for the whole batch (a third
    when a chunk is not final), where each linkid took two of its own (a round trip costs Redis
    more than the reads).
    Marks each live one reported while its chunk is not final, and settles a chunk that waited
    for this report."""
    conn = rt.conn
    todo = [linkid for linkid in dict.fromkeys(linkids) if linkid not in cache]
    named = [linkid for linkid in todo if linkid]  # a report with no linkid names nothing
    refs = dict(zip(named, conn.mget([schema.linkid_key(linkid) for linkid in named]) if named else [], strict=True))
    live: list[tuple[str, tuple[str, int]]] = []
    for linkid in todo:
        ref = refs[linkid].decode() if refs.get(linkid) else None
        found = chunk_of(conn, linkid, ref) if ref is not None else None
        if found is not None:
            live.append((linkid, found))
            continue
        # A folded lone message keeps no record of its linkid: the linkid names it.
        lone = ref is None and bool(linkid) and archive.is_folded(conn, linkid_owner(linkid))
        folded = lone or (ref is not None and archive.members(ref) is not None)
        cache[linkid] = _Sent("", 0, 0.0, {}, folded=True) if folded else None
    if not live:
        return
    with conn.pipeline(transaction=False) as pipe:
        for _, (mid, n) in live:
            pipe.hmget(schema.chunk_key(mid, n), *_SENT_FIELDS)
        rows = pipe.execute()
    # Marked reported, for an ambiguous call that waits for a report on its linkid (or will,
    # once its worker or the sweeper settles it): only a chunk not final yet. A final one (most,
    # submitted on a clear answer) never goes back to its call, and a marker each report cost a
    # command and a key until the fold.
    final = {state.encode() for state in lifecycle.FINAL}
    if seen := [linkid for (linkid, _), row in zip(live, rows, strict=True) if row[0] not in final | {None}]:
        with conn.pipeline(transaction=False) as pipe:
            for linkid in seen:
                pipe.set(schema.report_seen_key(linkid), 1, ex=rt.settings.retention_seconds)
            pipe.execute()
    for (linkid, (mid, n)), (state, submitted, items, mids, account, unconfirmed) in zip(live, rows, strict=True):
        if state == lifecycle.UNCONFIRMED.encode():
            # A report proves the ambiguous submission was accepted.
            lifecycle.settle_unconfirmed(conn, mid, n)
        elif unconfirmed == b"1":
            lifecycle.confirm_late(conn, mid, n, linkid)
        chunk = Chunk(items=(items or b"").decode(), mids=(mids or b"").decode())
        at, size, name = float(submitted or 0), len(chunk.mobiles), (account or b"").decode()
        cache[linkid] = _Sent(mid, n, at, chunk.members, name, size)


def apply_item(rt: Runtime, item: dict[str, str], cache: dict[str, _Sent | None] | None = None) -> int:
    """Apply one parsed report or reply; returns 1 if it changed something."""
    if item.get("kind") == "mo":
        return _apply_reply(rt, item)
    return _apply_report(rt, item, {} if cache is None else cache)


@dataclass(frozen=True)
class _Pending:
    """A report tied to what was sent, waiting for its merge (:func:`_merge_pending`)."""

    item: dict[str, str]
    sent: _Sent
    owner: str  # the message the reported mobile belongs to
    state: ReportState
    ts: float

    @property
    def report(self) -> ReportValue:
        return ReportValue(self.state, self.item.get("status", ""), f"{self.ts:.0f}")

    @property
    def merging(self) -> _Merging:
        recipients = recipients_key(self.sent.mid, self.sent.n)
        return _Merging(recipients, self.owner, self.item.get("mobile", ""), self.report, self.sent.recipients)


def _apply_report(rt: Runtime, item: dict[str, str], cache: dict[str, _Sent | None]) -> int:
    ready = _prepare_report(rt, item, cache)
    return 0 if ready is None else _merge_pending(rt, [ready])


def _prepare_report(rt: Runtime, item: dict[str, str], cache: dict[str, _Sent | None]) -> _Pending | None:
    """What a report names, or ``None`` when it is settled here: a late repeat of a folded
    submission, or an orphan (a linkid or mobile smsgw did not send)."""
    conn = rt.conn
    linkid, mobile, status = item.get("linkid", ""), item.get("mobile", ""), item.get("status", "")
    sent = _sent(rt, linkid, cache)
    if sent is not None and sent.folded:
        # Every recipient of a folded submission had reported: this one is a late repeat.
        conn.hincrby(COUNTS, "reports", 1)
        conn.hincrby(COUNTS, "reports_after_fold", 1)
        return None
    owner = sent.owner_of(mobile) if sent is not None else None
    if sent is None or owner is None:
        with conn.pipeline(transaction=False) as pipe:
            pipe.lpush(ORPHANS, json.dumps(item, ensure_ascii=False))
            pipe.ltrim(ORPHANS, 0, ORPHANS_MAX - 1)
            pipe.hincrby(COUNTS, "orphan_reports", 1)
            pipe.hincrby(COUNTS, "reports", 1)
            pipe.execute()
        return None
    state = ReportState.DELIVERED if status == "DELIVRD" else ReportState.UNDELIVERED
    return _Pending(item, sent, owner, state, epoch(item.get("time", "")) or time.time())


def _merge_pending(rt: Runtime, pending: list[_Pending]) -> int:
    """Merge reports (:func:`_merge_all`), then count each and do what it calls for, in order.
    Returns how many were applied."""
    outs = _merge_all(rt, [ready.merging for ready in pending])
    with rt.conn.pipeline(transaction=False) as done:
        for ready, out in zip(pending, outs, strict=True):
            merged = _merged(rt, out, ready.report, submitted=ready.sent.submitted, is_report=True, usage=True)
            _after_merge(rt, done, ready, merged.result, merged.callback)
        done.execute()  # the chunks whose reports are all in, in one round trip
    return len(pending)


def _after_merge(rt: Runtime, done: Pipeline, ready: _Pending, changed: int, callback: bool) -> None:
    conn, sent, ts = rt.conn, ready.sent, ready.ts
    if changed and sent.account in rt.settings.failover_accounts and sent.submitted:
        routes.count_report(conn, rt.settings, sent.account, ts - sent.submitted, time.time())
    if changed == 2 and sent.account:
        # Every recipient has reported: nothing is left to wait for. The chunk leaves the report
        # wait now, not at the window's end (72 h): the pullers go back to their interval, and
        # a one-recipient message no longer holds a wait entry for three days.
        done.zrem(schema.awaiting_key(sent.account), schema.chunk_ref(sent.mid, sent.n))
        archive.schedule(done, sent.mid, sent.n, time.time() + archive.AFTER)
    if changed and callback:
        queue_event(
            rt,
            ready.owner,
            {
                "type": "recipient.final",
                "mobile": ready.item.get("mobile", ""),
                "state": ready.state.label,
                "operator_code": ready.item.get("status", ""),
                "reported_at": rfc3339(ts),
                "linkid": ready.item.get("linkid", ""),
            },
        )


def _apply_reply(rt: Runtime, item: dict[str, str]) -> int:
    conn, settings = rt.conn, rt.settings
    linkid = item.get("linkid", "")
    mid, sent_by = _replied_to(conn, linkid, item.get("mobile", ""))
    account = item.get("account", "") or sent_by.account
    api_key = sent_by.api_key
    received = time.time()
    rid = f"{int(received * 1000):011x}{item_id(item)[:12]}"
    reply = Reply(
        id=rid,
        mobile=item.get("mobile", ""),
        content=item.get("content", ""),
        linkid=linkid,
        time=item.get("time", ""),
        account=account,
        message_id=mid,
        api_key=api_key,
        received=received,
    )
    indexes = [REPLIES, schema.replies_index_key("m", reply.mobile)]
    indexes += [
        schema.replies_index_key(by, value) for by, value in (("a", account), ("msg", mid), ("k", api_key)) if value
    ]
    stored = scripts.STORE_REPLY(
        conn,
        seen=schema.reply_seen_key(item_id(item)),
        reply=schema.reply_key(rid),
        indexes=indexes,
        ttl=settings.retention_seconds,
        received=f"{received:.3f}",
        rid=rid,
        fields=json.dumps(reply.to_hash(), ensure_ascii=False),
    )
    if stored:
        conn.hincrby(COUNTS, "replies", 1)
        if guardrails.is_optout(settings, reply.content) and (account or settings.optout_scope == "all"):
            guardrails.opt_out(conn, settings, account, reply.mobile, f"replied {reply.content.strip()!r}", "reply")
            conn.hincrby(COUNTS, "opt_outs", 1)
        if mid:
            event = {
                "type": "reply",
                "mobile": reply.mobile,
                "text": reply.content,
                "replied_at": from_provider(reply.time),
                "linkid": linkid,
            }
            queue_event(rt, mid, event)
    return int(stored)


def _replied_to(conn: redis.Redis, linkid: str, mobile: str) -> tuple[str, Message]:
    """The message a reply answers, by its linkid (a batch's: by the mobile too), live or
    folded; ``("", Message())`` when the linkid is not ours."""
    ref = linkid_ref(conn, linkid)
    # Folded: a batch's linkid record holds its members; a lone message's linkid names it.
    folded = archive.members(ref) if ref is not None else [linkid_owner(linkid)]
    found = chunk_of(conn, linkid, ref) if ref is not None else None
    if found is None:
        for mid in folded or ():
            msg = Message.read(conn, mid) if mid else None
            if msg is not None and msg.folded is not None and mobile_of(msg.items) == mobile:
                return mid, msg
        return "", Message()
    mid = found[0]
    items, mids = conn.hmget(schema.chunk_key(*found), Chunk.field_of("items"), Chunk.field_of("mids"))
    members = Chunk(items=(items or b"").decode(), mids=(mids or b"").decode()).members
    mid = members.get(mobile, "") if members else mid
    return mid, (Message.read(conn, mid) if mid else None) or Message(id=mid)


@dataclass(frozen=True)
class Merged:
    """What merging a report did (``scripts.MERGE_REPORTS``): ``result`` 2 when it was the
    chunk's last report, 1 a new final state, 0 nothing changed; the message's callback."""

    result: int
    callback: bool = False


_OWNER_FIELDS = tuple(Message.field_of(f) for f in ("state", "callback_url", "api_key", "account"))


def merge(
    rt: Runtime,
    *,
    recipients: str,
    mid: str,
    mobile: str,
    report: ReportValue,
    submitted: float,
    is_report: bool,
    all: int,
    usage: bool = True,
) -> Merged:
    """Merge one recipient's report (:func:`_merge_all`) and count it (``workers.tally``):
    the fleet's reports by state and lag, and, with ``usage`` (not for the end of the report
    window), this minute's chart and the day's usage of the message's key and account."""
    [out] = _merge_all(rt, [_Merging(recipients, mid, mobile, report, all)])
    return _merged(rt, out, report, submitted=submitted, is_report=is_report, usage=usage)


@dataclass(frozen=True)
class _Merging:
    """One report to merge: into the recipients hash of its chunk, counted on message ``mid``;
    ``all``, the chunk's recipients (0: do not check)."""

    recipients: str
    mid: str
    mobile: str
    report: ReportValue
    all: int


def _merge_all(rt: Runtime, merging: list[_Merging]) -> list[Any]:
    """Merge reports in order (``scripts.MERGE_REPORTS``), :data:`MERGE_GROUP` a script call,
    the calls in one pipeline; returns each report's answer."""
    calls = []
    for i in range(0, len(merging), MERGE_GROUP):
        group = merging[i : i + MERGE_GROUP]
        calls.append(
            {
                "pairs": [key for m in group for key in (m.recipients, schema.message_key(m.mid))],
                "ttl": rt.settings.retention_seconds,
                "unknown": ReportState.UNKNOWN,
                "delivered": ReportState.DELIVERED,
                "owner": ",".join(_OWNER_FIELDS),
                "reports": [v for m in group for v in (m.mobile, m.report.state, m.report.code, m.report.at, m.all)],
            }
        )
    if len(calls) == 1:  # a call: a pipeline would check SCRIPT EXISTS first
        return list(scripts.MERGE_REPORTS(rt.conn, **calls[0]))
    with rt.conn.pipeline(transaction=False) as pipe:
        for named in calls:
            scripts.MERGE_REPORTS.batch(pipe, **named)
        return [out for answer in pipe.execute() for out in answer]


def _merged(rt: Runtime, out: Any, report: ReportValue, *, submitted: float, is_report: bool, usage: bool) -> Merged:
    """Count what a merge did (``workers.tally``) and say it."""
    tally = rt.tally
    if is_report:
        tally.add(COUNTS, "reports")
    result = int(out[0])
    if not result:
        return Merged(0)
    first = out[1] == 1
    callback, api_key, account = (v.decode() for v in out[3:6])
    name = report.state.label
    tally.add(COUNTS, f"reports_{name}")
    if first and submitted > 0:
        tally.add(COUNTS, "report_lag_seconds_sum", max(0, int(float(report.at)) - int(f"{submitted:.0f}")))
        tally.add(COUNTS, "report_lag_count")
    if usage:
        now = time.time()
        tally.add(schema.minute_key(now), name, 1, schema.MINUTE_TTL)
        day = schema.usage_day(now)
        if api_key:
            tally.add(schema.usage_key(api_key, day), name, 1, schema.USAGE_TTL)
        if account:
            tally.add(schema.account_usage_key(account, day), name, 1, schema.USAGE_TTL)
    return Merged(result, bool(callback))


def mark_unknown(rt: Runtime, now: float, window: float) -> int:
    """Recipients with no report within ``window`` seconds of submission become ``unknown``."""
    conn = rt.conn
    marked = 0
    for account in rt.settings.accounts:
        for raw in conn.zrangebyscore(schema.awaiting_key(account), "-inf", now - window, start=0, num=200):
            _, mid, n = schema.parse_ref(raw.decode())
            chunk = Chunk.load(conn, mid, n)
            members = chunk.members if chunk else {}
            for mobile in chunk.mobiles if chunk else []:
                marked += merge(
                    rt,
                    recipients=recipients_key(mid, n),
                    mid=members.get(mobile, mid),
                    mobile=mobile,
                    report=ReportValue(ReportState.UNKNOWN, "", f"{now:.0f}"),
                    submitted=0,
                    is_report=False,
                    all=0,
                    usage=False,
                ).result
            with conn.pipeline(transaction=False) as pipe:
                pipe.zrem(schema.awaiting_key(account), raw)
                archive.schedule(pipe, mid, n, now + archive.AFTER)
                pipe.execute()
    return marked


def recipient_state(conn: redis.Redis, mid: str, n: int, mobile: str) -> tuple[str, str, str] | None:
    """One recipient's report on chunk ``n`` (a coalesced message's, in a batch of up to 1000)."""
    raw = conn.hget(recipients_key(mid, n), mobile)
    if raw is None:
        return None
    report = ReportValue.decode(raw)
    return report.state.label, report.code, report.at


def recipient_states(conn: redis.Redis, mid: str, n: int) -> dict[str, tuple[str, str, str]]:
    raw = conn.hgetall(recipients_key(mid, n))
    out = {}
    for mobile, value in raw.items():
        report = ReportValue.decode(value)
        out[mobile.decode()] = (report.state.label, report.code, report.at)
    return out
