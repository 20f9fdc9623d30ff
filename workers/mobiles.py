"""Mainland China mobile numbers: normalise what callers type, reject what is not a mobile.

A mainland mobile is ``1[3-9]`` and nine more digits. Callers write ``+86 138-0013-8000``,
``0086…`` or ``86…``; all of those become ``13800138000``. Anything else is invalid and is
reported exactly as the caller gave it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_NOISE = str.maketrans("", "", " -\t()")
# A Chinese input method types full-width digits and signs: １３８…, ＋８６, －, （）, and the
# ideographic space. They become their ASCII forms; other scripts' digits stay invalid.
_FULL_WIDTH = str.maketrans("０１２３４５６７８９＋－（）\u3000", "0123456789+-() ")


def normalise(raw: str) -> str | None:
    """The 11-digit form of a mainland mobile, or ``None`` if ``raw`` is not one."""
    digits = raw.translate(_FULL_WIDTH).translate(_NOISE)
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits if _MOBILE.fullmatch(digits) else None


@dataclass
class Recipients:
    """The outcome of normalising a list: valid mobiles in order, each once."""

    valid: list[str] = field(default_factory=list)
    # (index in the caller's list, what the caller wrote)
    invalid: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    # index in the caller's list of each entry of ``valid``
    positions: list[int] = field(default_factory=list)


def normalise_all(raw: Iterable[str]) -> Recipients:
    """Normalise and dedupe: first occurrence kept, order kept, invalid ones listed."""
    out = Recipients()
    seen: set[str] = set()
    for index, item in enumerate(raw):
        mobile = normalise(item)
        if mobile is None:
            out.invalid.append((index, item))
        elif mobile in seen:
            out.duplicates += 1
        else:
            seen.add(mobile)
            out.valid.append(mobile)
            out.positions.append(index)
    return out
