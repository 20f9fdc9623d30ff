"""Guardrails for people and the budget, enforced through Redis by every API process.

- **Frequency caps** (anti SMS-bombing): per account, priority class and mobile, a short string
  of send times (whole seconds); a Lua script checks every window (``SMSGW_MOBILE_CAPS_HIGH=1/60,5/3600,10/86400``)
  and records the send in one step, so two API processes cannot both let the 6th code through.
  A recipient over a cap is ``suppressed`` (``frequency_cap``): not sent, not charged. A send is
  recorded at the time it will go (its ``send_at``, or now) and counted against every send within
  a window either side of that time, so two codes accepted a minute apart for the same moment
  cannot both go. The slot is taken at the door and given back when the request is then refused
  (a quota's 429, the content check's 422); a request that fails to be stored still counts
  (erring towards fewer texts to a phone, never more). A test key's sends count against caps of
  their own: a test never uses up a real user's slots.
- **Opt-outs (退订)**: a reply whose trimmed text is a keyword (``SMSGW_OPTOUT_KEYWORDS``) puts
  the mobile on the account's suppression list (or the shared one, ``SMSGW_OPTOUT_SCOPE=all``);
  ``normal`` and ``bulk`` sends to it are suppressed (``opted_out``), ``high`` is not: a
  verification code is something the person asked for.
"""

from __future__ import annotations

import json
import time
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import redis

from workers.settings import Settings
from workers.storage import schema, scripts
from workers.times import rfc3339

OPTED_OUT = "opted_out"
FREQUENCY_CAP = "frequency_cap"


@dataclass(frozen=True)
class Suppressed:
    index: int  # in the accepted items
    mobile: str
    reason: str


@dataclass(frozen=True)
class Caps:
    """A request's caps check (``scripts.CAPS``): run on its own, or, for a one-recipient send,
    inside its accept (``scripts.ACCEPT``), so the door makes one round trip, not two."""

    keys: list[str]
    now: int
    at: int
    tag: str
    longest: int
    windows: list[int]

    def run(self, conn: redis.Redis) -> list[bool]:
        """Whether each mobile is over a cap; the sends of the rest are recorded."""
        over = scripts.CAPS(
            conn, caps=self.keys, now=self.now, at=self.at, tag=self.tag, longest=self.longest, windows=self.windows
        )
        return [bool(hit) for hit in over]

    def accept_args(self) -> dict[str, Any]:
        """``scripts.ACCEPT``'s arguments for its one mobile."""
        [key] = self.keys
        return {
            "cap": key,
            "cap_now": self.now,
            "cap_at": self.at,
            "cap_tag": self.tag,
            "cap_longest": self.longest,
            "cap_windows": self.windows,
        }

    #: ``scripts.ACCEPT``'s arguments without a cap.
    NONE: ClassVar[dict[str, Any]] = {"cap": "", "cap_now": 0, "cap_at": 0, "cap_tag": "", "cap_longest": 0}


def caps_for(
    settings: Settings,
    *,
    account: str,
    priority: str,
    mobiles: list[str],
    ref: str,
    at: float | None = None,
    test: bool = False,
    now: float | None = None,
) -> Caps | None:
    """The caps check of ``mobiles`` sent at ``at`` (default now); ``None`` when none applies."""
    caps = settings.mobile_caps.get(priority, ())
    if not caps or not mobiles:
        return None
    now = time.time() if now is None else now
    return Caps(
        keys=cap_keys(account, priority, mobiles, test),
        now=int(now),
        at=int(max(now, at or now)),
        tag=cap_tag(ref),
        longest=max(seconds for _, seconds in caps),
        windows=[value for count, seconds in caps for value in (count, seconds)],
    )


def optout_scope(settings: Settings, account: str) -> str:
    return "*" if settings.optout_scope == "all" else account


def cap_scope(account: str, test: bool) -> str:
    """Whose caps a send counts against: a test key's have a scope of their own."""
    return f"{account}~test" if test else account


def cap_keys(account: str, priority: str, mobiles: list[str], test: bool) -> list[str]:
    return [schema.cap_key(cap_scope(account, test), priority, mobile) for mobile in mobiles]


def check(
    conn: redis.Redis,
    settings: Settings,
    *,
    account: str,
    priority: str,
    mobiles: list[str],
    ref: str,
    at: float | None = None,
    test: bool = False,
    now: float | None = None,
    caps: bool = True,
) -> list[Suppressed]:
    """Which of ``mobiles`` may not be sent to at ``at`` (default now), and why; records the
    sends of the rest against their caps, each as the member ``ref``. ``caps=False``: opt-outs
    only (the caller checks the caps later, :func:`caps_for`)."""
    out: list[Suppressed] = []
    live = list(range(len(mobiles)))
    if priority != "high" and mobiles:
        listed = conn.hmget(schema.suppression_key(optout_scope(settings, account)), mobiles)
        out += [Suppressed(i, mobiles[i], OPTED_OUT) for i, hit in enumerate(listed) if hit is not None]
        live = [i for i, hit in enumerate(listed) if hit is None]
    live_mobiles = [mobiles[i] for i in live]
    capped = (
        caps_for(settings, account=account, priority=priority, mobiles=live_mobiles, ref=ref, at=at, test=test, now=now)
        if caps
        else None
    )
    if capped is not None:
        over = capped.run(conn)
        out += [Suppressed(i, mobiles[i], FREQUENCY_CAP) for i, hit in zip(live, over, strict=True) if hit]
    return sorted(out, key=lambda s: s.index)


def give_back(
    conn: redis.Redis, *, account: str, priority: str, mobiles: list[str], ref: str, test: bool = False
) -> None:
    """Undo :func:`check`'s records for a request refused after it (nothing of it is sent)."""
    if mobiles:
        scripts.UNCAP(conn, caps=cap_keys(account, priority, mobiles, test), tag=cap_tag(ref))


def cap_tag(ref: str) -> str:
    """Which request a recorded send was: 3 digits from its id, 100 to 999, enough to give one
    back; two requests with one tag count the same. Digits with no leading zero, so a mobile's
    one send (tag and second: 13 digits) is an integer to Redis, kept in its object header (88
    bytes a capped mobile, where a hex tag made it text: 120). The format is the one every
    release reads, so releases side by side in a rolling upgrade read each other's caps."""
    return str(100 + zlib.crc32(ref.encode()) % 900)


#: Traditional spellings of the default keywords, read as the simplified ones.
TRADITIONAL = str.maketrans({"訂": "订", "復": "复", "覆": "复", "謝": "谢"})
#: Polite words around a refusal, as people type them: 回复退订, 退订谢谢, 请退订.
POLITE_BEFORE = ("回复", "请帮我", "请", "我要", "麻烦")
POLITE_AFTER = ("谢谢你", "谢谢您", "谢谢", "谢了", "了", "吧", "啦")


def normalise_reply(text: str) -> str:
    """A reply as a keyword would read: NFKC (full-width ``ＴＤ`` is ``TD``), upper case,
    traditional keywords as simplified, no whitespace or invisible characters anywhere, no
    punctuation or symbols at either end (``退订。``, ``退订！``, ``退订🙏``)."""
    folded = unicodedata.normalize("NFKC", text).upper().translate(TRADITIONAL)
    return _trim("".join(c for c in folded if not c.isspace() and unicodedata.category(c) != "Cf"))


def _trim(text: str) -> str:
    """Without punctuation or symbols at either end."""
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start])[0] in "PS":
        start += 1
    while end > start and unicodedata.category(text[end - 1])[0] in "PS":
        end -= 1
    return text[start:end]


def is_optout(settings: Settings, text: str) -> bool:
    """Whether a reply refuses further messages (MIIT order 31): a keyword once normalised,
    with the polite words people add around it, or an ASCII keyword beside a Chinese one
    (``TD退订``). Anything else around it is not a refusal: ``不要退订了`` keeps the messages."""
    words = {normalise_reply(word) for word in settings.optout_keywords}
    reply = normalise_reply(text)
    reply = next((reply[len(p) :] for p in POLITE_BEFORE if reply.startswith(p) and len(reply) > len(p)), reply)
    reply = next((reply[: -len(s)] for s in POLITE_AFTER if reply.endswith(s) and len(reply) > len(s)), reply)
    reply = _trim(reply)  # 退订，谢谢
    if reply in words:
        return True
    return any(
        reply[:i] in words and reply[i:] in words and reply[:i].isascii() != reply[i:].isascii()
        for i in range(1, len(reply))
    )


def opt_out(conn: redis.Redis, settings: Settings, account: str, mobile: str, reason: str, source: str) -> None:
    entry = json.dumps({"reason": reason, "source": source, "at": round(time.time(), 3)}, ensure_ascii=False)
    conn.hset(schema.suppression_key(optout_scope(settings, account)), mobile, entry)


def opt_in(conn: redis.Redis, settings: Settings, account: str, mobile: str) -> bool:
    return bool(conn.hdel(schema.suppression_key(optout_scope(settings, account)), mobile))


def suppressions(
    conn: redis.Redis, settings: Settings, account: str, cursor: int, limit: int
) -> tuple[list[dict[str, object]], int]:
    """One page of the suppression list; a returned cursor of 0 means the end."""
    nxt, page = conn.hscan(schema.suppression_key(optout_scope(settings, account)), cursor, count=limit)
    items = [{"mobile": m.decode(), **json.loads(v)} for m, v in page.items()]
    for item in items:
        item["at"] = rfc3339(item.get("at"))
    return items, int(nxt)
