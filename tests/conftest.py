"""Shared fixtures: our own Redis server per session, the simulator on a free loopback port.

No test may touch a Redis it did not start: the default settings point at an address that
cannot resolve, and the only server flushed is the one this suite started.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from workers.redis_server import RedisServer
from workers.settings import Settings, settings_from_env
from workers.simulator import SimState, SimulatorServer

FORGOT_REDIS = "redis://forgot-the-redis-fixture.invalid:1"
API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture
def redis_conn(redis_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()  # our own server, started above
    yield conn
    conn.close()


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    server = SimulatorServer(SimState(uid="test", password="s3cret+%pass")).start()
    yield server
    server.stop()


def make_settings(redis_url: str = FORGOT_REDIS, **env: str) -> Settings:
    """Settings as the environment would give them; unset Redis fails loudly."""
    base = {
        "SMSGW_PROVIDER_UID": "test",
        "SMSGW_PROVIDER_PASSWORD": "s3cret+%pass",
        "SMSGW_PROVIDER_TIMEOUT": "2",
        "SMSGW_API_KEYS": f"tester:{API_KEY}",
        "SMSGW_RETRY_BASE_SECONDS": "0.2",
        "SMSGW_RETRY_MAX_SECONDS": "1",
    }
    base.update(env)
    return settings_from_env(base, redis_url=redis_url)
