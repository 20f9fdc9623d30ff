"""Times as smsgw shows them: RFC 3339 in UTC, to the millisecond, in every answer, callback and
CLI line (``2026-12-05T02:00:00.123+00:00``). Stored times stay epoch seconds; the provider's own
times are China Standard Time without an offset, and are read here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

CST = timezone(timedelta(hours=8))


def rfc3339(ts: float | str | None) -> str | None:
    """Epoch seconds → RFC 3339 (UTC); ``None`` for no time (0, empty, None)."""
    if not ts or not float(ts):
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="milliseconds")


def epoch(provider_time: str) -> float:
    """The provider's ``YYYY-MM-DD HH:MM:SS`` (China Standard Time) → epoch seconds (0 if unreadable)."""
    try:
        return datetime.strptime(provider_time.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST).timestamp()
    except ValueError:
        return 0.0


def from_provider(provider_time: str) -> str | None:
    """The provider's China time as RFC 3339; what cannot be read is passed on as it came."""
    ts = epoch(provider_time)
    return rfc3339(ts) if ts else (provider_time or None)
