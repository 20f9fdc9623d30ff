"""Cutting recipient lists into provider submissions, and naming each submission.

A submission carries at most 1000 mobiles (POST) or 1000 parameter groups (点点通); an account
may be configured lower, and lowers itself when the provider answers 3. Each submission gets a
linkid: the only key that ties the provider's reports and replies back to it.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
from typing import TypeVar

PROVIDER_MAX_PER_SUBMISSION = 1000
LINKID_ALPHABET = string.ascii_letters + string.digits
LINKID_MAX = 32

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """Consecutive slices of at most ``size`` (capped at the provider's 1000), order kept."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    size = min(size, PROVIDER_MAX_PER_SUBMISSION)
    return [items[i : i + size] for i in range(0, len(items), size)]


def chunk_count(n: int, size: int) -> int:
    size = min(size, PROVIDER_MAX_PER_SUBMISSION)
    return -(-n // size)


def new_linkid(owner: str) -> str:
    """A fresh linkid for a submission of message ``owner`` (a batch's id without its ``b``):
    32 letters and digits, the provider's maximum.

    The first 16 are the message id (its 92 bits in base 62), so a reply's linkid still names
    its message once ``workers.archive`` has folded it and dropped the linkid's record; the other
    16 are 95 random bits, so the linkids of one message (its chunks, splits, resubmissions)
    never repeat: a collision needs about 2^47 of them for one message. Any number of workers
    on any number of hosts mint them with no coordination.
    """
    mid = owner.removeprefix("b")
    named = len(mid) == 23 and all(c in string.hexdigits for c in mid)  # schema.MID_LENGTH; else random
    return _base62(int(mid, 16) if named else secrets.randbelow(62**16)) + _base62(secrets.randbelow(62**16))


def linkid_owner(linkid: str) -> str:
    """The message id a linkid was minted for ('' for a linkid of another form)."""
    if len(linkid) != LINKID_MAX or not is_linkid(linkid):
        return ""
    value = _from_base62(linkid[:16])
    return f"{value:023x}" if value < 16**23 else ""


def linkid_bytes(linkid: str) -> bytes:
    """A linkid of 32 letters and digits in 24 bytes (ours, and any of that form)."""
    if len(linkid) != LINKID_MAX or not is_linkid(linkid):
        raise ValueError("not a 32-character linkid")
    return _from_base62(linkid).to_bytes(24, "big")


def linkid_from_bytes(raw: bytes) -> str:
    value = int.from_bytes(raw, "big")
    return _base62(value // 62**16) + _base62(value % 62**16)


def _from_base62(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 62 + _DIGIT[ch]
    return value


def _base62(value: int) -> str:
    out = []
    for _ in range(16):
        value, digit = divmod(value, 62)
        out.append(LINKID_ALPHABET[digit])
    return "".join(reversed(out))


_LINKID = re.compile(r"[A-Za-z0-9]{1,32}")
_DIGIT = {ch: i for i, ch in enumerate(LINKID_ALPHABET)}


def is_linkid(value: str) -> bool:
    return _LINKID.fullmatch(value) is not None
