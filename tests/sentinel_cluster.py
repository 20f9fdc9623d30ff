"""A real Redis master, one replica and three Sentinels on loopback ports (Debian's redis-server
runs as a Sentinel with ``--sentinel``), for failover tests. Never port 6379."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from devkit.redis_server import _binary
from tests.test_metrics import free_port

PASSWORD = "cluster-pass-123"
SERVICE = "smsgw"


class SentinelCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}/0"

    def _server(self, name: str, port: int, *extra: str) -> None:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        args = [
            _binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "",
            "--appendonly", "yes", "--requirepass", PASSWORD, "--masterauth", PASSWORD,
            "--maxmemory-policy", "noeviction", "--logfile", str(d / "redis.log"), *extra,
        ]  # fmt: skip
        self.procs[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> SentinelCluster:
        self._server("master", self.master_port)
        self._server("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        for i, port in enumerate(self.sentinel_ports):
            d = self.root / f"sentinel{i}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 4000\n"
            )
            self.procs[f"sentinel{i}"] = subprocess.Popen(
                [_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                replica = redis.Redis(port=self.replica_port, password=PASSWORD)
                linked = replica.info("replication").get("master_link_status") == "up"
                seen = all(
                    len(redis.Redis(port=p).sentinel_slaves(SERVICE)) == 1
                    and redis.Redis(port=p).sentinel_master(SERVICE)["num-other-sentinels"] == 2
                    for p in self.sentinel_ports
                )
                if linked and seen:
                    return
            except (redis.RedisError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the sentinel cluster did not come up")

    def master(self) -> tuple[str, int]:
        return redis.Redis(port=self.sentinel_ports[0]).sentinel_get_master_addr_by_name(SERVICE)

    def add_replica(self) -> None:
        """A fresh replica of whoever is master now (the old master's host is gone for good)."""
        host, port = self.master()
        new_port = free_port()
        self._server(f"replica{new_port}", new_port, "--replicaof", host, str(port))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=new_port, password=PASSWORD).info("replication")["master_link_status"] == "up":
                    return
            except (redis.RedisError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the new replica did not sync")

    def kill_master(self) -> None:
        self.procs["master"].kill()
        self.procs["master"].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
