"""Quiet hours: deferred, not refused (issue 21 §3)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from rq.registry import ScheduledJobRegistry

from gateway import create_app
from tests.conftest import AUTH, drain, sim_submissions
from workers import quiet
from workers.queues import QUEUE_NAMES
from workers.settings import SettingsError, settings_from_env

# 2026-12-05 12:00:00 in China (04:00 UTC)
NOON = datetime(2026, 12, 5, 4, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("window", "at", "ends"),
    [
        ("20:00-08:00", NOON, None),  # noon: outside the night window
        ("20:00-08:00", NOON + 9 * 3600, NOON + 20 * 3600),  # 21:00 → 08:00 next morning
        ("20:00-08:00", NOON + 15 * 3600, NOON + 20 * 3600),  # 03:00 → 08:00 that morning
        ("11:30-12:30", NOON, NOON + 1800),
        ("11:30-12:30", NOON + 1800, None),  # the end itself is outside
        ("12:00-12:01", NOON, NOON + 60),
    ],
)
def test_a_window_in_china_time_and_when_it_ends(window, at, ends):
    assert quiet.ends(quiet.parse(window), at) == ends


@pytest.mark.parametrize("raw", ["8-20", "24:00-08:00", "20:00-20:00", "20:00 08:00"])
def test_a_malformed_window_is_refused_at_start(raw):
    from tests.conftest import make_settings

    with pytest.raises(SettingsError, match="QUIET_HOURS_BULK"):
        make_settings(SMSGW_QUIET_HOURS_BULK=raw)


def window_around_now(before: int = 60, after: int = 180) -> tuple[str, float]:
    """A window (HH:MM-HH:MM, China time) that holds this moment, and when it ends."""
    now = time.time()
    start, end = now - before, now + after
    end -= (end + 8 * 3600) % 60  # whole minutes

    def hhmm(ts: float) -> str:
        return time.strftime("%H:%M", time.gmtime(ts + 8 * 3600))

    return f"{hhmm(start)}-{hhmm(end)}", end


def test_a_send_inside_its_quiet_hours_is_scheduled_for_their_end_and_high_goes_at_once(
    settings_env, runtime, simulator
):
    window, end = window_around_now()
    api = create_app(settings_from_env({**settings_env, "SMSGW_QUIET_HOURS_NORMAL": window})).test_client()
    r = api.post("/v1/messages", json={"to": ["13800138000"], "text": "双十二促销"}, headers=AUTH)
    body = r.get_json()
    assert r.status_code == 202 and body["status"] == "scheduled"
    assert datetime.fromisoformat(body["send_at"]).timestamp() == pytest.approx(end, abs=1)
    code = {"to": ["13900139000"], "text": "验证码 123456", "priority": "high"}
    assert api.post("/v1/messages", json=code, headers=AUTH).get_json()["status"] == "accepted"
    drain(runtime, until=lambda: len(sim_submissions(simulator)) >= 1)
    assert [s["mobiles"] for s in sim_submissions(simulator)] == [["13900139000"]]  # normal waits
    registry = ScheduledJobRegistry(QUEUE_NAMES["normal"], connection=runtime.conn)
    [job_id] = registry.get_job_ids()
    assert registry.get_scheduled_time(job_id).timestamp() == pytest.approx(end, abs=1)


def test_a_campaign_still_sending_when_its_window_opens_pauses_until_it_ends(settings_env, runtime, simulator):
    api = create_app(settings_from_env(settings_env)).test_client()
    mid = api.post("/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "x"}, headers=AUTH).get_json()[
        "id"
    ]
    window, end = window_around_now()
    runtime.settings = settings_from_env({**settings_env, "SMSGW_QUIET_HOURS_NORMAL": window})  # the window opens
    drain(runtime, until=lambda: api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["chunks"])
    [chunk] = api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()["chunks"]
    assert chunk["state"] == "pending" and "quiet_hours" in [h["event"] for h in chunk["history"]]
    assert sim_submissions(simulator) == []
    registry = ScheduledJobRegistry(QUEUE_NAMES["normal"], connection=runtime.conn)
    [job_id] = registry.get_job_ids()
    assert registry.get_scheduled_time(job_id).timestamp() == pytest.approx(end, abs=1)
