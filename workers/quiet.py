"""Quiet hours: when a priority of an account may not be sent, in China time.

``SMSGW_QUIET_HOURS_BULK=20:00-08:00`` (a window may cross midnight; ``SMSGW_ACCOUNT_<NAME>_
QUIET_HOURS_<PRIORITY>`` for a named account, which otherwise keeps the default account's). A
send accepted inside its window is deferred, not refused: the API answers 202 ``scheduled`` with
the window's end as its ``send_at``, and the release is paced by the account's rate like any
``send_at``. A campaign still sending when its window opens pauses between submissions: each
chunk's send waits for the window's end. Validity still runs from when the caller wanted it
sent, so what a window outlives ends ``expired``. Alibaba refuses marketing between 20:00 and
08:00; the README recommends that window for ``bulk``.
"""

from __future__ import annotations

import re

#: China has one time zone and no daylight saving.
CHINA_OFFSET = 8 * 3600
DAY = 86400
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")

Window = tuple[int, int]  # start and end, in seconds after midnight China time


def parse(raw: str) -> Window | None:
    """``"HH:MM-HH:MM"`` → the window (``None`` for an empty setting); ValueError otherwise."""
    raw = raw.strip()
    if not raw:
        return None
    match = _WINDOW.match(raw)
    if match is None or raw[:5] == raw[6:]:
        raise ValueError(f"{raw!r} is not HH:MM-HH:MM (China time, two different times)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    return (h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60)


def ends(window: Window | None, ts: float) -> float | None:
    """When the window that ``ts`` falls in ends (epoch seconds), or ``None`` outside it."""
    if window is None:
        return None
    start, end = window
    local = ts + CHINA_OFFSET
    midnight = local - local % DAY
    second = local - midnight
    if start < end:
        inside = start <= second < end
        end_at = midnight + end
    else:  # across midnight: 20:00-08:00
        inside = second >= start or second < end
        end_at = midnight + end + (DAY if second >= start else 0)
    return end_at - CHINA_OFFSET if inside else None
