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


def new_linkid() -> str:
    """A fresh linkid: 128 random bits as 32 hex digits (letters and digits, the maximum length).

    Random, not counted, so that any number of workers on any number of hosts mint them with no
    coordination; a collision needs about 2^64 of them.
    """
    return secrets.token_hex(16)


_LINKID = re.compile(r"[A-Za-z0-9]{1,32}")


def is_linkid(value: str) -> bool:
    return _LINKID.fullmatch(value) is not None
