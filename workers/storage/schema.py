"""What smsgw keeps in Redis: every key, and the records its hashes hold. Nothing else spells a key.

Keys are short on purpose: a million-recipient campaign has a thousand chunks and a million
recipient entries, and every byte of key name is paid per entry. Every family, the function
that builds it, and what it holds (``tests/test_schema.py`` keeps this table true against the
functions below and against a live Redis after a full run)::

    sg:m:<mid>                 message_key       hash  the message (:class:`Message`)
    sg:af:<mid>                accept_fence_key  str   written only when an accept's answer was lost: voids its EXEC
    sg:c:<mid>:<n>             chunk_key         hash  chunk n of a message (:class:`Chunk`)
    sg:ce:<mid>:<n>            history_key       list  chunk n's history, one JSON line per step
    sg:r:<mid>:<n>             recipients_key    hash  mobile -> "state|code|time" once reported
    sg:lk:<linkid>             linkid_key        str   "<mid>:<n>": ties reports and replies to a chunk
    sg:rl:<linkid>             report_seen_key   str   some report came for this linkid while its chunk was not final
    sg:acct:<account>          account_key       hash  account state (:class:`AccountState`)
    sg:held:<account>          held_key          zset  chunk refs parked on a held account, by hold time
    sg:await:<account>         awaiting_key      zset  chunk refs submitted, awaiting reports, by submit time
    sg:rate:<account>:<sec>    rate_key          str   provider calls of the account in that second
    sg:pace:<account>:<sec>    pace_key          str   partial pools the coalescers sent off in that second
    sg:hpace:<account>:<sec>   high_pace_key     str   the same for high pools, counted apart
    sg:pull:<account>          pull_schedule_key hash  kind -> when the next pull of that kind is due
    sg:lease:<name>            lease_key         str   which process holds a fleet-wide lease
    sg:watch                   WATCH             zset  refs the sweeper checks ("m:<mid>", "c:<mid>:<n>")
    sg:failures                FAILURES          list  the latest failed chunks, for operators
    sg:counts                  COUNTS            hash  fleet counters (recipients, reports…; most via ``workers.tally``)
    sg:alerts                  ALERTS            hash  alerts raised, by event
    sg:metrics                 METRICS           hash  provider call and job figures
    sg:minute:<minute>         minute_key        hash  the same figures per minute, kept two hours
    sg:idem:<key>:<sha256>     idempotency_key   str   an API key's Idempotency-Key and its answer
    sg:route:<account>         route_key         hash  priority -> the account its traffic goes to now (failover)
    sg:lag:<account>:<minute>  lag_key           hash  reports of the account that minute: n, and slow (failover)
    sg:spend:<acct>:<day>      spend_key         str   billable parts an account sent that China day (daily limit)
    sg:cap:<acct>:<pr>:<mobile> cap_key          str   send times to a mobile, for its frequency caps
    sg:lim:<limit>             LIMITS            str   an API key's request rate (keys built by ``limits``)
    sg:quota:<key>:<day>       quota_key         str   billable parts an API key took that China day (its daily quota)
    sg:usage:<key>:<day>       usage_key         hash  an API key's requests, recipients, parts, suppressed that day
    sg:mx:<key>                key_messages_key  stream an API key's message ids as accepted (GET /v1/messages)
    sg:ausage:<acct>:<day>     account_usage_key hash  the same day's counters of a provider account
    sg:optout:<scope>          suppression_key   hash  mobile -> why and when it opted out (scope: account or *)
    sg:cache:<what>:<id>       cache_key         str   cached provider answers (balance, sensitive words)
    sg:inbox                   INBOX             list  raw pushed and pulled items, not yet applied
    sg:dead                    DEAD              list  pulled lines that could not be parsed
    sg:orphans                 ORPHANS           list  reports for linkids smsgw does not know
    sg:seen:<item>             reply_seen_key    str   a reply already applied
    sg:reply:<rid>             reply_key         hash  one reply (:class:`Reply`)
    sg:replies                 REPLIES           zset  every reply id, by receive time
    sg:replies:<by>:<value>    replies_index_key zset  reply ids by mobile (m), account (a), message (msg), API key (k)
    sg:cbq:<mid>               callback_queue_key list events waiting for the caller's callback URL
    sg:cbh:<mid>               callback_log_key  list  the caller callback attempts, one JSON line each
    sg:cbdue                   CALLBACKS_DUE     zset  messages with callback events, by when due (or a claim's end)
    sg:pool:<acct>:<pr>:<what> pool_key          zset  sends waiting to share a submission ("<mid>|<item>")
    sg:pools                   POOLS             zset  pool keys by when their oldest send must leave
    sg:pools:new               POOLS_NEW         list  one token: a pool was made, for a coalescer waiting on it
    sg:f:<bucket>              folded_key        hash  one-recipient messages at rest, folded (:meth:`Message.fold`)
    sg:names                   NAMES             hash  API key and account names as folded records' codes
    sg:fold                    FOLD              zset  submission refs to fold at rest, by when (``workers.archive``)
    sg:expiry                  EXPIRY            zset  chunk refs with a validity, by when it ends
    sg:probe                   WRITE_PROBE       str   a write that tells whether Redis takes writes
    sg:v:<vid>                 verification_key  hash  one verification (:class:`Verification`); never its code
    sg:vi:<key>:<mobile>       verification_index_key str the API key's open verification of a mobile
    sg:vdue                    VERIFY_DUE        zset  pending verifications by when they expire
    sg:conv:<acct>:<minute>    conv_key          hash  high recipients submitted (s) and codes used (u) that minute
    sg:convd:<mid>             conversion_seen_key str a caller reported this message's code used (once)

Records map readable attribute names to the short hash fields in one place (each class's
``FIELDS``); code reads and writes attributes, never the two-letter names. Counters that the
Lua scripts and ``HINCRBY`` update are named by :meth:`Message.final_field`.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar, Self

import redis
from redis.client import Pipeline

from workers.chunks import linkid_bytes, linkid_from_bytes
from workers.text import mobile_of

PREFIX = "sg:"

# -- lifetimes (seconds), each defined here once; a message's own is SMSGW_RETENTION_SECONDS ---

#: The per-minute buckets behind the dashboard's last-hour charts.
MINUTE_TTL = 2 * 3600
#: Usage per API key and account, by day: what finance reconciles against the provider's bill.
USAGE_DAYS = 90
USAGE_TTL = USAGE_DAYS * 86400
#: An API key's daily-quota counter: its China day, and one more for clocks that disagree.
QUOTA_TTL = 2 * 86400
#: An account's spend counter for the day: the same.
SPEND_TTL = 2 * 86400

# -- keys -------------------------------------------------------------------------------------


def message_key(mid: str) -> str:
    return f"sg:m:{mid}"


def accept_fence_key(mid: str) -> str:
    return f"sg:af:{mid}"


def chunk_key(mid: str, n: int) -> str:
    return f"sg:c:{mid}:{n}"


def history_key(mid: str, n: int) -> str:
    return f"sg:ce:{mid}:{n}"


def recipients_key(mid: str, n: int) -> str:
    return f"sg:r:{mid}:{n}"


def linkid_key(linkid: str) -> str:
    return f"sg:lk:{linkid}"


def report_seen_key(linkid: str) -> str:
    return f"sg:rl:{linkid}"


def account_key(account: str) -> str:
    return f"sg:acct:{account}"


def held_key(account: str) -> str:
    return f"sg:held:{account}"


def awaiting_key(account: str) -> str:
    return f"sg:await:{account}"


def rate_key(account: str, second: int) -> str:
    return f"sg:rate:{account}:{second}"


def pace_key(account: str, second: int) -> str:
    return f"sg:pace:{account}:{second}"


def high_pace_key(account: str, second: int) -> str:
    """``high`` pools have a pace of their own: bulk pools cannot spend it."""
    return f"sg:hpace:{account}:{second}"


def pull_schedule_key(account: str) -> str:
    return f"sg:pull:{account}"


def lease_key(name: str) -> str:
    """``maintenance``, ``ingest`` or ``pull:<account>``."""
    return f"sg:lease:{name}"


def minute_key(ts: float) -> str:
    return f"sg:minute:{int(ts // 60)}"


def idempotency_key(api_key: str, digest: str) -> str:
    return f"sg:idem:{api_key}:{digest}"


def quota_key(key_name: str, day: str) -> str:
    return f"sg:quota:{key_name}:{day}"


def route_key(account: str) -> str:
    """Where each priority of the account's traffic goes now (``workers.routes``)."""
    return f"sg:route:{account}"


def lag_key(account: str, minute: int) -> str:
    return f"sg:lag:{account}:{minute}"


def verification_key(vid: str) -> str:
    return f"sg:v:{vid}"


def verification_index_key(api_key: str, mobile: str) -> str:
    return f"sg:vi:{api_key}:{mobile}"


VERIFY_DUE = "sg:vdue"


def conv_key(account: str, minute: int) -> str:
    return f"sg:conv:{account}:{minute}"


def conversion_seen_key(mid: str) -> str:
    return f"sg:convd:{mid}"


def spend_key(account: str, day: str) -> str:
    return f"sg:spend:{account}:{day}"


def cap_key(account: str, priority: str, mobile: str) -> str:
    return f"sg:cap:{account}:{priority}:{mobile}"


def suppression_key(scope: str) -> str:
    return f"sg:optout:{scope}"


def cache_key(what: str, ident: str) -> str:
    return f"sg:cache:{what}:{ident}"


def reply_seen_key(item: str) -> str:
    return f"sg:seen:{item}"


def reply_key(rid: str) -> str:
    return f"sg:reply:{rid}"


def replies_index_key(by: str, value: str) -> str:
    """``by``: ``m`` (mobile), ``a`` (account), ``msg`` (message id) or ``k`` (the API key that
    sent the message replied to)."""
    return f"sg:replies:{by}:{value}"


def callback_queue_key(mid: str) -> str:
    return f"sg:cbq:{mid}"


def callback_log_key(mid: str) -> str:
    return f"sg:cbh:{mid}"


CALLBACKS_DUE = "sg:cbdue"
WRITE_PROBE = "sg:probe"
EXPIRY = "sg:expiry"


def folded_key(mid: str) -> str:
    """The bucket a finished message is folded into: its id's time to 4.1 s (the first 8 hex
    digits of its milliseconds) and its last, random, hex digit. A bucket holds about a quarter
    of a second's messages, so it stays small enough for Redis's compact hash encoding, and its
    messages expire together."""
    return f"sg:f:{mid[:8]}{mid[-1]}"


def folded_field(mid: str) -> bytes:
    """The message's field in its bucket: what the bucket's name does not already say, the 14
    hex digits between, as 7 raw bytes (an id not in hex: as it is)."""
    try:
        return bytes.fromhex(mid[8:-1])
    except ValueError:
        return mid[8:].encode()


def folded_fields(mid: str) -> tuple[bytes, str]:
    """Where a folded message may be: its field, then the field an older release wrote (the
    id's last 15 hex digits as text), read until the retention has removed those."""
    return folded_field(mid), mid[8:]


def pool_key(account: str, priority: str, what: str) -> str:
    """``what``: the mode (``t`` one text, ``p`` one template, ``v`` plain texts as ``{value0}``)
    and a digest of the text; see ``workers.coalesce``."""
    return f"sg:pool:{account}:{priority}:{what}"


def key_messages_key(api_key: str) -> str:
    """A stream, not a sorted set: 38 bytes a message, not 118 (``sg:mk:``, its sorted-set
    predecessor, is left to expire; its messages stay readable by id)."""
    return f"sg:mx:{api_key}"


def usage_key(api_key: str, day: str) -> str:
    """``day`` is :func:`usage_day`: ``YYYYMMDD`` in China Standard Time, as the provider bills."""
    return f"sg:usage:{api_key}:{day}"


def account_usage_key(account: str, day: str) -> str:
    return f"sg:ausage:{account}:{day}"


def usage_day(ts: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts + 8 * 3600))


#: The prefix the ``limits`` package builds its keys under (``sg:lim:LIMITER/<key>/…``).
LIMITS = "sg:lim"
WATCH = "sg:watch"
FAILURES = "sg:failures"
COUNTS = "sg:counts"
ALERTS = "sg:alerts"
METRICS = "sg:metrics"
INBOX = "sg:inbox"
DEAD = "sg:dead"
ORPHANS = "sg:orphans"
POOLS = "sg:pools"
POOLS_NEW = "sg:pools:new"
FOLD = "sg:fold"
REPLIES = "sg:replies"


# -- references the sweeper and the account sets hold -----------------------------------------


def chunk_ref(mid: str, n: int) -> str:
    return f"c:{mid}:{n}"


def message_ref(mid: str) -> str:
    return f"m:{mid}"


def parse_ref(ref: str) -> tuple[str, str, int]:
    """``"c:<mid>:<n>"`` → ``("c", mid, n)``; ``"m:<mid>"`` → ``("m", mid, -1)``."""
    kind, _, rest = ref.partition(":")
    if kind == "c":
        mid, _, n = rest.rpartition(":")
        return kind, mid, int(n)
    return kind, rest, -1


#: What a batch message's id starts with.
BATCH_PREFIX = "b"


def new_batch_id() -> str:
    """A batch message (``workers.coalesce``): a message id with ``b`` in front, so no API
    key's id can ever name one."""
    return BATCH_PREFIX + new_message_id()


#: 11 hex digits of milliseconds and 12 random ones (a batch has a ``b`` in front).
MID_LENGTH = 23


def new_message_id() -> str:
    """Time-ordered (milliseconds, hex), then 48 random bits: sortable, no coordination."""
    return message_id_at(time.time()) + secrets.token_hex(6)


def message_id_at(ts: float) -> str:
    """The prefix of every message id created at ``ts``: ids compare as their times do."""
    return f"{max(0, int(ts * 1000)):011x}"


def ttl_of(conn: redis.Redis | Pipeline, key: str, fallback: int = 60) -> int:
    """Seconds the key has left, so what belongs to it expires with it (``fallback`` if none)."""
    ttl = int(conn.ttl(key) or 0)
    return ttl if ttl > 0 else fallback


def decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


# -- states -----------------------------------------------------------------------------------


class MessageState(StrEnum):
    """A message's stored state. What the API reports once it is planned follows its chunks and
    its recipients' reports (``workers.lifecycle.message_state``)."""

    ACCEPTED = "accepted"  # waiting for its plan job, or in a coalescing pool
    SCHEDULED = "scheduled"  # waiting for send_at
    SENDING = "sending"  # planned: its chunks (or its batch's) carry it
    SUPPRESSED = "suppressed"  # every recipient was (caps, opt-outs): final at accept
    CANCELLED = "cancelled"  # cancelled before it was planned


class ChunkState(StrEnum):
    """A chunk's one state machine, moved only by ``workers.lifecycle.transition``."""

    PENDING = "pending"
    SUBMITTING = "submitting"  # the provider call is under way (or its worker died)
    SUBMITTED = "submitted"
    RETRY = "retry"  # nothing reached the provider: again under the same linkid
    UNCONFIRMED = "unconfirmed"  # an ambiguous call: waiting for a report before a new linkid
    HELD = "held"  # its account is held (2, 8, …): waits, burning nothing
    SPLIT = "split"  # halved under new linkids (answer 3, or to find a refused member)
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its validity ended before it could be sent: never sent, never billed


class VerificationState(StrEnum):
    """A verification's life (``workers.verify``): pending until a check closes it or it ends."""

    PENDING = "pending"
    APPROVED = "approved"  # the right code, once
    FAILED = "failed"  # SMSGW_VERIFY_MAX_CHECKS wrong codes: locked until it expires
    EXPIRED = "expired"


class ReportState(StrEnum):
    """A recipient's final report, one letter in ``recipients_key`` values and ``r_<letter>``
    counters; :attr:`label` is what the API says."""

    DELIVERED = "D"
    UNDELIVERED = "U"
    UNKNOWN = "X"  # no report within the report window

    @property
    def label(self) -> str:
        return self.name.lower()


# -- records ----------------------------------------------------------------------------------


def _h(short: str, default: Any = "") -> Any:
    """A record attribute stored in the hash field ``short``."""
    return field(default=default, metadata={"h": short})


class Record:
    """A hash as a typed record: ``FIELDS`` maps attribute → hash field, in one place."""

    FIELDS: ClassVar[dict[str, str]]
    _TYPES: ClassVar[dict[str, type]]

    @classmethod
    def _setup(cls) -> None:
        cls.FIELDS = {f.name: f.metadata["h"] for f in fields(cls) if "h" in f.metadata}  # type: ignore[arg-type]
        hints = {"int": int, "float": float, "str": str}
        cls._TYPES = {f.name: hints[str(f.type)] for f in fields(cls) if "h" in f.metadata}  # type: ignore[arg-type]

    @classmethod
    def short(cls, **values: Any) -> dict[str, Any]:
        """Attribute names → hash fields, for a partial write; an unknown name raises."""
        return {cls.FIELDS[name]: _wire(value) for name, value in values.items()}

    @classmethod
    def field_of(cls, name: str) -> str:
        return cls.FIELDS[name]

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes] | dict[str, str], **ids: Any) -> Self:
        values = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        kwargs: dict[str, Any] = dict(ids)
        for name, short in cls.FIELDS.items():
            if short in values and values[short] != "":
                kind = cls._TYPES[name]
                kwargs[name] = kind(float(values[short])) if kind is int else kind(values[short])
        record = cls(**kwargs)
        record._extra(values)
        return record

    def _extra(self, values: dict[str, str]) -> None:
        """Fields outside ``FIELDS`` (counters); records that have some read them here."""

    def to_hash(self) -> dict[str, Any]:
        """The fields that differ from their default: an absent field reads as its default."""
        defaults = {f.name: f.default for f in fields(self)}  # type: ignore[arg-type]
        return {
            short: _wire(getattr(self, name))
            for name, short in self.FIELDS.items()
            if getattr(self, name) != defaults[name]
        }


def _wire(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.3f}"
    return value


# Hash fields of the message's per-state counters (HINCRBY and Lua scripts write them).
CHUNKS_IN = "c_"  # c_<state>: chunks that reached a final state
RECIPIENTS_IN = "r_"  # r_<state>: recipients of those chunks; r_D/r_U/r_X: by report


@dataclass
class Message(Record):
    """``sg:m:<mid>``. ``items`` (the recipients) is dropped once the message is planned."""

    id: str = ""
    state: str = _h("st")
    account: str = _h("a")
    priority: str = _h("pr")
    kind: str = _h("k", "t")  # t: plain text, p: 点点通 template
    text: str = _h("text")
    variables: str = _h("vars")  # a template's variable names, joined by ',': {value0} is the first
    items: str = _h("to")  # mobiles (or 点点通 groups) joined by ';'
    recipients: int = _h("n", 0)
    parts: int = _h("parts", 0)  # billable parts, all recipients together
    duplicates: int = _h("dup", 0)
    invalid: str = _h("inv", "[]")  # JSON list of {index, value}
    suppressed: str = _h("sup")  # JSON list of {mobile, reason}: not sent, not charged
    flagged: str = _h("flag")  # SMSGW_CONTENT_CHECK=flag: the words found, joined by commas
    reference: str = _h("ref")
    callback_url: str = _h("cb")
    api_key: str = _h("key")
    test: int = _h("test", 0)  # 1: a test key's message, never sent to the provider
    #: 1: drop text and variables once no chunk needs them (high, or asked); a batch: 2 when every
    #: member is to be (``scripts.CLAIM_POOL``)
    redact: int = _h("rd", 0)
    valid_until: float = _h("vu", 0.0)  # never sent after this (0: no limit); a batch: its members' earliest
    text_length: int = _h("tlen", 0)  # kept when the text is dropped (no digest: a code's would give it back)
    created: float = _h("created", 0.0)
    send_at: float = _h("send_at", 0.0)
    job: str = _h("job")  # the plan job that owns it until planned
    job_seq: int = _h("jq", 0)
    chunks: int = _h("chunks", 0)  # live count (a split adds two)
    chunk_seq: int = _h("nseq", 0)  # chunk numbers handed out
    planned: float = _h("planned", 0.0)
    cancelled: float = _h("cancelled", 0.0)
    callbacks_sent: int = _h("cb_sent", 0)
    callback_fail_since: float = _h("cb_fail_since", 0.0)
    callback_fails: int = _h("cb_fails", 0)
    callback_state: str = _h("cb_state")
    callbacks_dropped: int = _h("cb_dropped", 0)
    via: str = _h("via")  # coalesced: the batch message whose submission carries it
    mids: str = _h("ms")  # a batch: its members' ids, parallel to ``items`` (dropped when planned)
    chunks_final: dict[str, int] = field(default_factory=dict)
    recipients_final: dict[str, int] = field(default_factory=dict)
    folded: Folded | None = None  # set when read from its folded record (:meth:`read`)

    def _extra(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            if k.startswith(CHUNKS_IN):
                self.chunks_final[k[len(CHUNKS_IN) :]] = int(v)
            elif k.startswith(RECIPIENTS_IN):
                self.recipients_final[k[len(RECIPIENTS_IN) :]] = int(v)
        if self.via:
            # A batch member's one chunk ends as its one recipient does (lifecycle._count_member;
            # an older release wrote both counters, alike).
            self.chunks_final = {s: n for s, n in self.recipients_final.items() if s in _CHUNK_FINALS}

    @property
    def redacted(self) -> bool:
        """Its text was dropped (``workers.lifecycle.redact``)."""
        return bool(self.text_length) and not self.text

    @staticmethod
    def final_field(counter: str, state: str) -> str:
        """``final_field(CHUNKS_IN, "failed")`` → ``"c_failed"``."""
        return counter + state

    @classmethod
    def load(cls, conn: redis.Redis, mid: str) -> Message | None:
        """The live record: what writers change. A folded message is not live (see :meth:`read`)."""
        raw = conn.hgetall(message_key(mid))
        return cls.from_hash(raw, id=mid) if raw else None

    #: What still changes once a message is folded (a reply's callback): kept in a live hash
    #: without a state, laid over the folded record (``workers.notifications``).
    CALLBACK_FIELDS = ("callbacks_sent", "callback_fail_since", "callback_fails", "callback_state", "callbacks_dropped")

    @classmethod
    def read(cls, conn: redis.Redis, mid: str) -> Message | None:
        """For readers (the API, replies, callbacks): the live record, or the folded one at rest."""
        raw = conn.hgetall(message_key(mid))
        if (raw and cls.FIELDS["state"].encode() in raw) or len(mid) != MID_LENGTH:
            return cls.from_hash(raw, id=mid) if raw else None
        folded = next((v for v in conn.hmget(folded_key(mid), folded_fields(mid)) if v is not None), None)
        if folded is None:
            return cls.from_hash(raw, id=mid) if raw else None
        return cls.unfold(mid, folded, decode(raw) if raw else None, functools.partial(name_of, conn))

    def fold(self, sub: Folded, names: tuple[str, str] | None = None) -> bytes:
        """This message at rest, as one bucket field (``folded_key``): about 110 bytes where its
        own hash and its share of the submission's records took 400 to 1,600.

        ``2`` when the text was redacted (``0`` when it is kept; ``1`` and a SHA-256, in records
        written before digests were dropped), the linkid in 24 bytes, then
        ``key|account|p|kind|mobile|parts|length|test|redact|+sent|report|+at|tail``: the
        priority's letter, the times as whole seconds after the message's creation (which its
        id holds) and after the submission, the report as its state letter with the operator's
        code unless it is ``DELIVRD``, and in ``tail`` (JSON, often empty) any other field that
        differs from its default: a text that was kept, a reference. The plan's and the
        sweeper's bookkeeping is dropped: nothing runs on a folded message.

        ``names``: the API key's and the account's codes (:func:`name_codes`), written in their
        place (first byte ``3``, or ``4`` with a kept text).
        """
        created = int(time_of(self.id))
        code = "" if (sub.report, sub.code) == ("D", "DELIVRD") else sub.code
        head = [str(getattr(self, name)) for name in _FOLD_HEAD]
        head[2] = head[2][:1]  # the priority's letter: high, normal, bulk
        if names is not None:
            head[0], head[1] = names
        tail = {k: v for k, v in self.to_hash().items() if k not in _FOLD_KEPT}
        for i, name in enumerate(_FOLD_HEAD):
            if "|" in head[i]:  # a 点点通 value with the separator in it: the tail holds it
                tail[self.FIELDS[name]], head[i] = head[i], ""
        if "|" in code:  # an operator's code is theirs: one with the separator goes to the tail too
            tail[_FOLD_CODE], code = code, ""
        head += [
            str(int(sub.submitted) - created),
            sub.report + code,
            str(int(sub.reported) - int(sub.submitted)),
        ]
        text = "|".join(head) + "|" + (json.dumps(tail, ensure_ascii=False, separators=(",", ":")) if tail else "")
        if names is not None:
            version = _FOLD_NAMED_REDACTED if self.redacted else _FOLD_NAMED_KEPT_TEXT
        else:
            version = _FOLD_REDACTED if self.redacted else _FOLD_KEPT_TEXT
        return version + linkid_bytes(sub.linkid) + text.encode()

    @classmethod
    def unfold(
        cls,
        mid: str,
        raw: bytes,
        callbacks: dict[str, str] | None = None,
        names: Callable[[str], str] | None = None,
    ) -> Message:
        """A folded message as a record: one chunk, submitted, its one recipient reported; so
        its state reads exactly as it did before it was folded. ``callbacks``: its callback
        fields as they are now, if they changed since. ``names``: a code's name (the API key
        and account of a record that holds codes; an unknown code reads as no name)."""
        rest = raw[33:] if raw[:1] == _FOLD_HASHED else raw[1:]  # an old record's digest is not read
        linkid = linkid_from_bytes(rest[:24])
        *head, sent, report, at, tail = rest[24:].decode().split("|", len(_FOLD_HEAD) + 3)
        if raw[:1] in (_FOLD_NAMED_REDACTED, _FOLD_NAMED_KEPT_TEXT):
            head[0], head[1] = (names(head[0]), names(head[1])) if names is not None else ("", "")
        values = dict(zip((cls.FIELDS[name] for name in _FOLD_HEAD), head, strict=True))
        values[cls.FIELDS["priority"]] = _PRIORITIES.get(values[cls.FIELDS["priority"]], "")
        values.update(json.loads(tail) if tail else {})
        if callbacks is not None:
            for name in cls.CALLBACK_FIELDS:
                values.pop(cls.FIELDS[name], None)
            values.update(callbacks)
        code_in_tail = values.pop(_FOLD_CODE, None)
        msg = cls.from_hash(values, id=mid)
        created = time_of(mid)
        state, code = report[:1], code_in_tail or report[1:] or ("DELIVRD" if report == "D" else "")
        msg.state, msg.chunks, msg.recipients, msg.created = MessageState.SENDING, 1, 1, created
        msg.chunks_final = {"submitted": 1}
        msg.recipients_final = {"submitted": 1, state: 1}
        submitted = float(int(created) + int(sent))
        msg.folded = Folded(linkid, submitted, state, code, submitted + int(at))
        return msg


@dataclass(frozen=True)
class Folded:
    """What a folded message keeps of the submission that carried it."""

    linkid: str
    submitted: float
    report: str  # D, U or X (``workers.reports``)
    code: str  # the operator's code
    reported: float


#: The first byte: the text is kept (in the tail), redacted, or redacted by an older smsgw that
#: kept its SHA-256 in the 32 bytes after it; ``3`` and ``4`` (redacted, kept) hold the API key
#: and account as codes (:func:`name_codes`).
_FOLD_KEPT_TEXT, _FOLD_REDACTED, _FOLD_HASHED = b"0", b"2", b"1"
_FOLD_NAMED_REDACTED, _FOLD_NAMED_KEPT_TEXT = b"3", b"4"

#: API key and account names as short codes, for folded records (``sg:names``: ``n:<name>`` →
#: code, ``#<code>`` → name; the prefixes keep a name that begins with ``#`` from ever reading
#: as a code). A name is spelled once, not in each of a week's messages (13 bytes a
#: message for ``bench|default``, more for real names); kept for ever, a few fields a key or
#: account. Codes are 4 random characters, not a count: a process that remembers a code's name
#: (:func:`name_of`) can never read another name for it, even if Redis were emptied and codes
#: handed out again.
NAMES = "sg:names"
_NAMED: dict[str, str] = {}
_CODE_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"


def name_codes(conn: redis.Redis, names: list[str]) -> dict[str, str]:
    """The codes of API key and account names, each handed out once (two folds at once agree:
    the first to name it wins). One read when they have codes already."""
    wanted = sorted(set(names))
    out = {}
    for name, found in zip(wanted, conn.hmget(NAMES, [f"n:{n}" for n in wanted]), strict=True):
        out[name] = found.decode() if found is not None else _hand_out(conn, name)
    return out


def _hand_out(conn: redis.Redis, name: str) -> str:
    while True:
        code = "".join(secrets.choice(_CODE_CHARS) for _ in range(4))
        if not conn.hsetnx(NAMES, f"#{code}", name):
            continue  # taken by another name
        if conn.hsetnx(NAMES, f"n:{name}", code):
            return code
        conn.hdel(NAMES, f"#{code}")  # another fold named it first: its code stands
        return (conn.hget(NAMES, f"n:{name}") or b"").decode()


def name_of(conn: redis.Redis, code: str) -> str:
    """The name a code stands for ("" for one never handed out)."""
    if (name := _NAMED.get(code)) is not None:
        return name
    found = conn.hget(NAMES, f"#{code}")
    if found is None:
        return ""
    _NAMED[code] = found.decode()
    return _NAMED[code]


_FOLD_CODE = "~rc"  # the tail's name for an operator code holding "|" (no record field has "~")
_PRIORITIES = {p[0]: p for p in ("high", "normal", "bulk")}
#: The final states of a chunk, as a message counts them.
_CHUNK_FINALS = frozenset({ChunkState.SUBMITTED, ChunkState.FAILED, ChunkState.CANCELLED, ChunkState.EXPIRED})
#: Message attributes a folded record holds by position, after its SHA-256 and linkid.
_FOLD_HEAD = ("api_key", "account", "priority", "kind", "items", "parts", "text_length", "test", "redact")


def time_of(mid: str) -> float:
    """When a message id was made (:func:`message_id_at`), to the millisecond."""
    return int(mid[:11], 16) / 1000


@dataclass
class Chunk(Record):
    """``sg:c:<mid>:<n>``: one provider submission and everything about its life."""

    mid: str = ""
    n: int = _h("n", -1)
    state: str = _h("st")
    linkid: str = _h("lk")
    items: str = _h("to")  # mobiles (or 点点通 groups) joined by ';'
    recipients: int = _h("nr", 0)
    account: str = _h("a")
    priority: str = _h("pr")
    attempts: int = _h("att", 0)
    job_seq: int = _h("jq", 0)
    job: str = _h("job")  # the one job that owns the chunk now
    updated: float = _h("ts", 0.0)
    deadline: float = _h("dl", 0.0)  # a provider call in hand is over by then
    wait_until: float = _h("uw", 0.0)  # unconfirmed: when the wait for a report ends
    hold_reason: str = _h("hr")
    code: str = _h("code")  # the provider's last answer code
    provider_text: str = _h("ptext")
    error: str = _h("err")  # the last error's class
    reason: str = _h("reason")  # why it failed
    submitted_at: float = _h("sub", 0.0)
    split_from: int = _h("from", -1)
    possible_duplicates: int = _h("pdup", 0)  # high: resubmitted after an ambiguous outcome
    unconfirmed: int = _h("unc", 0)  # normal/bulk: an ambiguous call no report confirmed, not resent
    redact: int = _h("rd", 0)  # its message's texts go once every chunk is final (2: every member's)
    valid_until: float = _h("vu", 0.0)  # never submitted after this (0: no limit); a batch's: its earliest member's
    api_key: str = _h("key")  # the key that sent its message (for the day's usage counters)
    mids: str = _h("ms")  # a batch's chunk: the message each recipient belongs to, parallel to items

    @property
    def mobiles(self) -> list[str]:
        return [mobile_of(item) for item in self.items.split(";") if item]

    @property
    def members(self) -> dict[str, str]:
        """A batch's chunk: mobile → the message it belongs to (empty for a message's own chunk:
        a mobile is at most once in a submission, so the mobile names the member)."""
        return dict(zip(self.mobiles, self.mids.split(";"), strict=True)) if self.mids else {}

    @classmethod
    def load(cls, conn: redis.Redis, mid: str, n: int) -> Chunk | None:
        raw = conn.hgetall(chunk_key(mid, n))
        return cls.from_hash(raw, mid=mid) if raw else None


@dataclass
class AccountState(Record):
    """``sg:acct:<account>``: what every worker must know of a provider account."""

    name: str = ""
    state: str = _h("st", "active")
    code: str = _h("code")  # the provider code that held it ('' when an operator did)
    reason: str = _h("reason")
    since: float = _h("since", 0.0)
    chunk_size: int = _h("chunk_size", 0)  # lowered after answer 3 (0: as configured)
    chunk_lowered_at: float = _h("csat", 0.0)  # when; the size is probed back up from then
    balance: str = _h("balance")
    balance_at: float = _h("balance_at", 0.0)
    checked: float = _h("checked", 0.0)  # last balance check while held for balance
    balance_low: int = _h("low", 0)  # 1 while the balance is below SMSGW_LOW_BALANCE
    fails: int = _h("cf", 0)  # consecutive calls that failed to connect, timed out or got a 5xx
    healthy_since: float = _h("hs", 0.0)  # when it last became healthy again (0: always was)
    pinned: str = _h("pin")  # an operator's pin: every priority goes to this account
    slow: int = _h("slow", 0)  # 1 while too many of its reports come late (workers.routes)
    pace_balance: str = _h("pb")  # the balance a pace is measured from, and when (up to an hour ago)
    pace_at: float = _h("pa", 0.0)
    runway_hours: float = _h("rw", 0.0)  # at that pace, hours until the balance runs out (0: not spending)
    runway_low: int = _h("rl", 0)  # 1 while that is under SMSGW_BALANCE_RUNWAY_HOURS
    conversion_low: int = _h("cvl", 0)  # 1 while its codes are used far less than before (workers.verify)
    conversion_recent: float = _h("cvr", 0.0)  # share of codes used, last window
    conversion_base: float = _h("cvb", 0.0)  # the same over the trailing baseline

    @classmethod
    def load(cls, conn: redis.Redis, name: str) -> AccountState:
        return cls.from_hash(conn.hgetall(account_key(name)), name=name)


@dataclass
class Reply(Record):
    """``sg:reply:<rid>``: a reply from a mobile, tied to a message when its linkid is ours."""

    id: str = ""
    mobile: str = _h("mobile")
    content: str = _h("content")
    linkid: str = _h("linkid")
    time: str = _h("time")  # as the provider gave it (China time)
    account: str = _h("account")
    message_id: str = _h("message_id")
    api_key: str = _h("key")  # the key that sent the message it answers ('' if unmatched)
    received: float = _h("received", 0.0)

    @classmethod
    def load(cls, conn: redis.Redis, rid: str) -> Reply | None:
        raw = conn.hgetall(reply_key(rid))
        return cls.from_hash(raw, id=rid) if raw else None


@dataclass
class Verification(Record):
    """``sg:v:<vid>``: a verification code's life. The code itself is never stored: it follows
    from ``SMSGW_VERIFY_SECRET`` and ``nonce`` (``workers.verify.code_for``)."""

    id: str = ""
    api_key: str = _h("key")
    mobile: str = _h("to")
    account: str = _h("a")
    status: str = _h("st")
    nonce: str = _h("nc")
    length: int = _h("len", 6)
    template: str = _h("tpl")  # the text with {code} (and {minutes} rendered): what a resend sends
    sends: int = _h("sends", 0)
    checks: int = _h("checks", 0)  # wrong codes so far
    created: float = _h("created", 0.0)
    expires: float = _h("exp", 0.0)
    closed: float = _h("closed", 0.0)
    reference: str = _h("ref")
    messages: str = _h("ms")  # the message of each send, joined by ';'

    @classmethod
    def load(cls, conn: redis.Redis, vid: str) -> Verification | None:
        raw = conn.hgetall(verification_key(vid))
        return cls.from_hash(raw, id=vid) if raw else None


for _record in (Message, Chunk, AccountState, Reply, Verification):
    _record._setup()
#: Short fields a folded record holds by position, or drops: its tail holds any other.
_FOLD_KEPT = {Message.FIELDS[name] for name in _FOLD_HEAD} | {
    Message.FIELDS[name]
    for name in (
        *("state", "job", "job_seq", "chunks", "chunk_seq", "planned", "created", "via", "mids", "recipients"),
        "valid_until",  # a folded message was sent: its validity no longer matters
    )
}
