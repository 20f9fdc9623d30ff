"""Unit tests of account state on fakeredis: holds alert once per change, the rate is shared."""

from __future__ import annotations

import fakeredis

from tests.conftest import make_settings
from workers import accounts
from workers.storage import schema


def test_hold_alerts_once_and_activate_reports_what_it_changed():
    conn, settings = fakeredis.FakeRedis(), make_settings()
    assert accounts.hold(settings, conn, "default", 8, "account frozen") is True
    assert accounts.hold(settings, conn, "default", 8, "account frozen") is False
    assert conn.hget(schema.ALERTS, "account_held") == b"1"
    state = accounts.state(conn, "default")
    assert state.state == "held" and state.code == "8" and state.since > 0
    assert accounts.is_held(conn, "default")
    assert accounts.activate(settings, conn, "default", by="test") is True
    assert accounts.activate(settings, conn, "default", by="test") is False
    assert conn.hget(schema.ALERTS, "account_resumed") == b"1"


def test_chunk_size_only_goes_down_and_never_above_the_setting():
    conn, settings = fakeredis.FakeRedis(), make_settings(SMSGW_PROVIDER_CHUNK_SIZE="500")
    assert accounts.chunk_size(conn, settings, "default") == 500
    accounts.lower_chunk_size(conn, settings, "default", 300)
    accounts.lower_chunk_size(conn, settings, "default", 400)
    assert accounts.chunk_size(conn, settings, "default") == 300


def test_a_lowered_chunk_size_is_probed_back_up_and_an_operator_can_reset_it():
    import time

    conn = fakeredis.FakeRedis()
    settings = make_settings(SMSGW_PROVIDER_CHUNK_SIZE="1000", SMSGW_CHUNK_PROBE_SECONDS="600")
    accounts.lower_chunk_size(conn, settings, "default", 250)
    now = time.time()
    sizes = [accounts.chunk_size(conn, settings, "default", now + s) for s in (0, 599, 601, 1201, 1801, 99999)]
    assert sizes == [250, 250, 500, 1000, 1000, 1000]  # doubles every probe period, never above the setting
    accounts.reset_chunk_size(conn, "default")
    assert accounts.chunk_size(conn, settings, "default") == 1000


def test_rate_slots_are_counted_in_redis_for_every_caller():
    import time

    server = fakeredis.FakeServer()
    one, two = fakeredis.FakeRedis(server=server), fakeredis.FakeRedis(server=server)  # two workers
    for _ in range(5):  # a new second may start between the calls: then take them again
        second = int(time.time())
        slots = [accounts.hold_and_slot(conn, "default")[1] for conn in (one, two, one)]
        if int(time.time()) == second:
            break
        server = fakeredis.FakeServer()
        one, two = fakeredis.FakeRedis(server=server), fakeredis.FakeRedis(server=server)
    assert slots == [1, 2, 3]  # one counter, whoever asks
    assert accounts.acquire_rate(one, "default", 1000)
