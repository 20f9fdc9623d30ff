"""Verification codes as a service, and conversion: whether the codes an account sends are used.

A code is never written anywhere: not in Redis, not in a job's arguments, a log line or a
callback, not even between accept and send (an append-only file keeps every write until its next
rewrite). A verification keeps a random ``nonce``; its code follows from ``SMSGW_VERIFY_SECRET``
and that nonce (:func:`code_for`: RFC 4226's HMAC and truncation, with SHA-256 and 64 bits so
that ten digits come out even). Its message is an ordinary ``high`` 点点通 message whose one value
is a *token* (:func:`token`) naming the nonce; the worker turns the token into the code in
memory, in the provider call's form (:func:`render`), and nowhere else. A check recomputes the
code and compares in constant time; the verdict is one Lua script, so two checks of the right
code at once approve once.

The same key keys every digest smsgw takes of a text (:func:`digest`): coalescing pools and the
content check's cache are named after one, and an unsalted hash of a six-digit code's text is
reversed in a second.

Conversion: per account and minute, ``high`` recipients submitted (``s``, counted by the
worker) and codes used (``u``: verifications approved, and uses that callers report for
messages they verify themselves). :func:`check_conversion` compares the last
``SMSGW_VERIFY_CONVERSION_WINDOW`` seconds with the account's own trailing baseline; a drop by
``SMSGW_VERIFY_CONVERSION_DROP`` over enough volume marks the account unhealthy for ``high``
traffic (``workers.routes``) and raises an alert. Routes that report ``DELIVRD`` for texts that
never arrive show up here first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from workers.alerts import alert
from workers.settings import Settings
from workers.storage import schema, scripts
from workers.storage.schema import AccountState, Chunk, Verification, VerificationState

log = logging.getLogger("smsgw.verify")

#: A token starts with this control character, which no caller's value may hold (the door
#: refuses control characters), so only smsgw can write one.
TOKEN_MARK = "\x1f"
LENGTHS = range(4, 11)
#: How long a caller's report of a used code is remembered, so it counts once.
CONVERSION_SEEN_TTL = 2 * 86400


def code_for(key: bytes, nonce: str, length: int) -> str:
    """The verification's code: HMAC-SHA256 of its nonce under the server key, truncated as
    HOTP does (a 64-bit window at an offset the digest chooses), ``length`` digits."""
    mac = hmac.new(key, b"smsgw-verify:" + nonce.encode(), hashlib.sha256).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 8], "big") & 0x7FFF_FFFF_FFFF_FFFF
    return str(value % 10**length).zfill(length)


def token(nonce: str, length: int) -> str:
    """What a verification's message carries where its code goes."""
    return f"{TOKEN_MARK}{length:02d}{nonce}"


def render(key: bytes, items: list[str]) -> list[str]:
    """点点通 groups as the provider must get them: each token becomes its code (in memory)."""
    if not any(TOKEN_MARK in item for item in items):
        return items
    out = []
    for item in items:
        if TOKEN_MARK in item:
            values = item.split(",")
            for i, value in enumerate(values):
                if value.startswith(TOKEN_MARK):
                    values[i] = code_for(key, value[3:], int(value[1:3]))
            item = ",".join(values)
        out.append(item)
    return out


def digest(key: bytes, text: str) -> str:
    """A keyed digest of a text: names it (a pool, a cache entry) without revealing it."""
    return hmac.new(key, b"smsgw-text:" + text.encode(), hashlib.sha256).hexdigest()


def minutes(valid_for: int) -> int:
    """``{minutes}`` in a template: the validity, rounded up."""
    return math.ceil(valid_for / 60)


# -- the store ---------------------------------------------------------------------------------


def open_verification(conn: redis.Redis, api_key: str, mobile: str) -> Verification | None:
    """The key's latest verification of this mobile that is not approved (pending, locked or
    just ended), if any."""
    vid = conn.get(schema.verification_index_key(api_key, mobile))
    return Verification.load(conn, vid.decode()) if vid else None


def create(
    conn: redis.Redis,
    settings: Settings,
    *,
    api_key: str,
    mobile: str,
    account: str,
    length: int,
    valid_for: int,
    template: str,
    reference: str,
    now: float,
    replace: str = "",
) -> Verification | None:
    """A new pending verification, indexed as the key's open one for the mobile. ``None`` when
    another request made one first (the index is taken; ``replace`` names an ended one that
    may be replaced)."""
    v = Verification(
        id="v" + schema.new_message_id(),
        api_key=api_key,
        mobile=mobile,
        account=account,
        status=VerificationState.PENDING,
        nonce=secrets.token_hex(16),
        length=length,
        template=template,
        created=now,
        expires=now + valid_for,
        reference=reference,
    )
    index = schema.verification_index_key(api_key, mobile)
    ttl = valid_for + 60  # a check just after the end is told "expired", not "none"
    with conn.pipeline() as pipe:
        try:
            pipe.watch(index)
            held = pipe.get(index)
            if held is not None and held.decode() != replace:
                pipe.reset()
                return None
            pipe.multi()
            pipe.set(index, v.id, ex=ttl)
            pipe.hset(schema.verification_key(v.id), mapping=v.to_hash())
            pipe.expire(schema.verification_key(v.id), settings.retention_seconds)
            pipe.zadd(schema.VERIFY_DUE, {v.id: v.expires})
            _count(pipe, v, "started", now)
            pipe.execute()
        except redis.WatchError:
            return None
    return v


def take_send(conn: redis.Redis, settings: Settings, vid: str) -> int:
    """Reserve one more send; returns the sends so far with it, or 0 when the budget is spent."""
    key, field = schema.verification_key(vid), Verification.field_of("sends")
    sends = int(conn.hincrby(key, field, 1))
    if sends > settings.verify_max_sends:
        conn.hincrby(key, field, -1)
        return 0
    return sends


def give_back_send(conn: redis.Redis, vid: str) -> None:
    conn.hincrby(schema.verification_key(vid), Verification.field_of("sends"), -1)


def note_message(conn: redis.Redis, v: Verification, mid: str) -> None:
    """Add a send's message to the verification's list (WATCH: two resends at once keep both)."""
    key, field = schema.verification_key(v.id), Verification.field_of("messages")
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                current = (pipe.hget(key, field) or b"").decode()
                messages = ";".join(filter(None, (current, mid)))
                pipe.multi()
                pipe.hset(key, field, messages)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    v.messages = messages


@dataclass(frozen=True)
class Verdict:
    status: str
    checks_left: int
    closed_now: bool  # this check approved, failed or expired it


def check(conn: redis.Redis, settings: Settings, v: Verification, code: str, now: float) -> Verdict:
    """Compare ``code`` with the verification's (constant time) and record the verdict
    atomically: approved at most once, wrong codes counted, locked after the last one."""
    expected = code_for(settings.verify_key, v.nonce, v.length)
    match = hmac.compare_digest(expected.encode(), code.encode())
    return _settle(conn, settings, v, "check", match, now)


def expire_due(conn: redis.Redis, settings: Settings, now: float, limit: int = 500) -> int:
    """Pending verifications past their end become ``expired`` (and count as such) whether
    or not anyone checks them. Returns how many."""
    expired = 0
    for raw in conn.zrangebyscore(schema.VERIFY_DUE, "-inf", now, start=0, num=limit):
        v = Verification.load(conn, raw.decode())
        if v is None:
            conn.zrem(schema.VERIFY_DUE, raw)
            continue
        expired += _settle(conn, settings, v, "expire", False, now).closed_now
    return expired


def _settle(conn: redis.Redis, settings: Settings, v: Verification, mode: str, match: bool, now: float) -> Verdict:
    day = schema.usage_day(now)
    status, left, closed = scripts.SETTLE_VERIFICATION(
        conn,
        record=schema.verification_key(v.id),
        index=schema.verification_index_key(v.api_key, v.mobile),
        due=schema.VERIFY_DUE,
        counts=schema.COUNTS,
        usage=schema.usage_key(v.api_key, day),
        conv=schema.conv_key(used_route(conn, v.account), int(now // 60)),
        vid=v.id,
        mode=mode,
        match=int(match),
        max_checks=settings.verify_max_checks,
        now=f"{now:.3f}",
        fields=json.dumps(Verification.FIELDS),
        account=v.account,
        usage_ttl=schema.USAGE_TTL,
        conv_ttl=conv_ttl(settings),
        pending=VerificationState.PENDING,
        approved=VerificationState.APPROVED,
        failed=VerificationState.FAILED,
        expired=VerificationState.EXPIRED,
    )
    return Verdict(status.decode(), int(left), bool(closed))


def _count(pipe: Pipeline, v: Verification, outcome: str, now: float) -> None:
    pipe.hincrby(schema.COUNTS, f"verify:{v.account}:{outcome}", 1)
    usage = schema.usage_key(v.api_key, schema.usage_day(now))
    pipe.hincrby(usage, f"verifications_{outcome}", 1)
    pipe.expire(usage, schema.USAGE_TTL)


def status_of(v: Verification, now: float) -> str:
    """What the API says: a pending verification past its end is expired, swept or not."""
    if v.status == VerificationState.PENDING and now >= v.expires:
        return VerificationState.EXPIRED
    return v.status


def outcomes(counts: dict[str, int]) -> dict[tuple[str, str], int]:
    """(account, outcome) → verifications so far, from the fleet's counters (``schema.COUNTS``
    as read: ``/metrics``, the dashboard)."""
    out = {}
    for name, value in counts.items():
        if name.startswith("verify:"):
            _, account, outcome = name.rsplit(":", 2)
            out[(account, outcome)] = value
    return out


# -- conversion --------------------------------------------------------------------------------


def conv_ttl(settings: Settings) -> int:
    return settings.verify_conversion_baseline + settings.verify_conversion_window + 180


def used_route(conn: redis.Redis, account: str) -> str:
    """The account a code of ``account`` goes through now (its failover route for ``high``):
    a use counts for the route that most likely carried it."""
    return (conn.hget(schema.route_key(account), "high") or account.encode()).decode()


def count_submitted(pipe: Pipeline, chunk: Chunk, *, settings: Settings, now: float) -> None:
    """A submission the provider took, in its transaction (``lifecycle.mark_submitted``): a
    ``high`` one's recipients are the denominator of its account's conversion."""
    if chunk.priority != "high":
        return
    key = schema.conv_key(chunk.account, int(now // 60))
    pipe.hincrby(key, "s", chunk.recipients)
    pipe.expire(key, conv_ttl(settings))


def report_use(conn: redis.Redis, settings: Settings, mid: str, account: str, now: float) -> bool:
    """A caller says message ``mid``'s code was used: counted once. Returns whether it counted."""
    if not conn.set(schema.conversion_seen_key(mid), 1, nx=True, ex=CONVERSION_SEEN_TTL):
        return False
    key = schema.conv_key(used_route(conn, account), int(now // 60))
    with conn.pipeline(transaction=False) as pipe:
        pipe.hincrby(key, "u", 1)
        pipe.expire(key, conv_ttl(settings))
        pipe.hincrby(schema.COUNTS, f"verify:{account}:reported", 1)
        pipe.execute()
    return True


@dataclass(frozen=True)
class Conversion:
    sent: int
    used: int

    @property
    def rate(self) -> float:
        return self.used / self.sent if self.sent else 0.0


def conversion(conn: redis.Redis, settings: Settings, account: str, now: float) -> tuple[Conversion, Conversion]:
    """(recent, baseline): the last window's whole minutes, and the baseline before them."""
    last = int(now // 60) - 1  # the current minute is not over: its codes are not used yet
    window = settings.verify_conversion_window // 60
    first = last - window - settings.verify_conversion_baseline // 60 + 1
    with conn.pipeline(transaction=False) as pipe:
        for minute in range(first, last + 1):
            pipe.hmget(schema.conv_key(account, minute), "s", "u")
        rows = [(int(s or 0), int(u or 0)) for s, u in pipe.execute()]
    recent, base = rows[-window:], rows[:-window]
    return (
        Conversion(sum(s for s, _ in recent), sum(u for _, u in recent)),
        Conversion(sum(s for s, _ in base), sum(u for _, u in base)),
    )


def check_conversion(conn: redis.Redis, settings: Settings, account: str, now: float) -> bool:
    """Mark the account low on conversion (unhealthy for ``high``) while its recent rate is
    ``SMSGW_VERIFY_CONVERSION_DROP`` below its baseline over enough codes; returns whether it is."""
    recent, base = conversion(conn, settings, account, now)
    enough = min(recent.sent, base.sent) >= settings.verify_conversion_min and base.used > 0
    low = enough and recent.rate < base.rate * (1 - settings.verify_conversion_drop)
    state = AccountState.load(conn, account)
    fields: dict[str, object] = {"conversion_recent": round(recent.rate, 4), "conversion_base": round(base.rate, 4)}
    if low != bool(state.conversion_low):
        fields["conversion_low"] = int(low)
        if not low:
            fields["healthy_since"] = now
        log.warning(
            "%s: codes used %.0f%% of the time, against %.0f%% before: %s",
            account,
            100 * recent.rate,
            100 * base.rate,
            "unhealthy for high" if low else "back to normal",
            extra={"account": account},
        )
        event = "conversion_dropped" if low else "conversion_recovered"
        alert(settings, conn, event, account=account, recent=round(recent.rate, 3), baseline=round(base.rate, 3))
    conn.hset(schema.account_key(account), mapping=AccountState.short(**fields))
    return low
