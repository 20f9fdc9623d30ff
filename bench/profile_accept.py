"""Where an accept's time goes: pyinstrument over 2,800 one-recipient POSTs (a 点点通 template,
``high``) through the Flask test client against a private Redis, after 200 to warm up.

Run: ``.venv/bin/python -m bench.profile_accept`` (prints ms a POST, then the call tree).
"""

from __future__ import annotations

import json
import tempfile
import time

from pyinstrument import Profiler

from devkit.redis_server import RedisServer
from gateway import create_app
from workers.settings import settings_from_env

KEY = "bench-key-0123456789abcdef"


def main() -> None:
    server = RedisServer(tempfile.mkdtemp(prefix="smsgw-profile-")).start()
    env = {
        "SMSGW_REDIS_URL": server.url,
        "SMSGW_PROVIDER_UID": "test",
        "SMSGW_PROVIDER_PASSWORD": "secret",
        "SMSGW_API_KEYS": f"bench:{KEY}",
        "SMSGW_ALLOW_DEV_DEFAULTS": "1",
        "SMSGW_MOBILE_CAPS_HIGH": "",
        "SMSGW_LOG_LEVEL": "WARNING",
    }
    try:
        client = create_app(settings_from_env(env)).test_client()
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        bodies = [
            json.dumps(
                {
                    "template": "您的验证码是{code}，5分钟内有效",
                    "recipients": [{"to": f"139{i:08d}", "vars": {"code": f"{i:06d}"}}],
                    "priority": "high",
                }
            )
            for i in range(3000)
        ]
        for body in bodies[:200]:
            client.post("/v1/messages", data=body, headers=headers)
        profiler = Profiler(interval=0.0005)
        profiler.start()
        started = time.perf_counter()
        for body in bodies[200:]:
            assert client.post("/v1/messages", data=body, headers=headers).status_code == 202
        elapsed = time.perf_counter() - started
        profiler.stop()
        print(f"{elapsed / 2800 * 1000:.3f} ms a POST")
        print(profiler.output_text(unicode=False, color=False))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
