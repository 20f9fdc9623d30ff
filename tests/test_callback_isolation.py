"""A caller's callback receiver can never slow anyone's sends, nor lose events (issue 19).

Real worker processes, the simulator over loopback and hostile receivers on raw sockets: one
trickles a byte a second and never finishes its headers, one answers a body of gigabytes.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import AUTH, Receiver, sim_submissions, wait_for
from workers.storage import schema


class Hostile:
    """A receiver on a raw socket that misbehaves the same way on every connection."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.server = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if self.behaviour == "trickle":
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 10_000:
                    if self.stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(1.0)
            else:  # a body of 1.5 GB, as fast as the socket takes it
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1500000000\r\n\r\n")
                block = b"x" * 1_000_000
                for _ in range(1500):
                    if self.stop.is_set():
                        return
                    conn.sendall(block)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.fixture
def hostile() -> Iterator[dict[str, Hostile]]:
    receivers = {"trickle": Hostile("trickle"), "huge": Hostile("huge")}
    yield receivers
    for receiver in receivers.values():
        receiver.close()


def post(api, body, headers=AUTH) -> str:
    r = api.post("/v1/messages", json=body, headers=headers)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def worker_rss(workers) -> float:
    """Resident MB of the worker processes and their children, the largest one."""
    sizes = []
    for proc in workers.procs:
        if proc.poll() is None:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            sizes += [p.memory_info().rss / 2**20 for p in tree]
    return max(sizes)


@pytest.mark.slow
def test_codes_reach_the_provider_within_a_second_while_receivers_trickle_and_answer_gigabytes(
    api, workers, simulator, runtime, hostile, settings_env
):
    workers.env.update(SMSGW_CALLBACK_DEADLINE_SECONDS="3", SMSGW_CALLBACK_CONCURRENCY="4")
    for name in ("w1", "w2"):
        workers.start(name)
    # Twelve messages whose events go to the hostile receivers: three times the dispatcher's threads.
    for i in range(12):
        url = hostile["trickle" if i % 2 else "huge"].url
        post(api, {"to": [f"1350013{i:04d}"], "text": "您的快递已到", "callback_url": url})
    wait_for(lambda: hostile["trickle"].connections >= 2 and hostile["huge"].connections >= 2, what="deliveries")
    late = []
    for i in range(20):
        accepted = time.time()
        post(api, {"to": [f"1380013{i:04d}"], "text": f"验证码{100000 + i}", "priority": "high"})
        wait_for(lambda i=i: any(f"1380013{i:04d}" in s["mobiles"] for s in sim_submissions(simulator)), 30)
        [sent] = [s for s in sim_submissions(simulator) if f"1380013{i:04d}" in s["mobiles"]]
        late.append(sent["at"] - accepted)
        time.sleep(0.2)
    assert max(late) < 1.0, late
    assert worker_rss(workers) < 300, "a receiver's answer is never read into memory"
    # The deliveries were cut at their deadline and retried, never left hanging.
    assert hostile["trickle"].connections >= 4
    for mid in runtime.conn.zrange(schema.CALLBACKS_DUE, 0, -1):
        attempts = runtime.conn.lrange(schema.callback_log_key(mid.decode()), 0, -1)
        assert all(b"deadline" in a or b"HTTP 200" in a for a in attempts)


@pytest.mark.slow
def test_events_of_a_delivery_killed_with_its_worker_are_delivered_by_another(
    api, workers, simulator, runtime, receiver, settings_env
):
    slow = Hostile("trickle")
    try:
        workers.env.update(SMSGW_CALLBACK_DEADLINE_SECONDS="4")
        victim = workers.start("victim")
        mid = post(api, {"to": ["13800138000"], "text": "x", "callback_url": slow.url})
        wait_for(lambda: slow.connections >= 1, what="the delivery to start")
        workers.kill(victim)
        # The receiver is fixed meanwhile: the message's URL now leads to a good one.
        runtime.conn.hset(schema.message_key(mid), schema.Message.field_of("callback_url"), receiver)
        workers.start("rescuer")
        wait_for(lambda: Receiver.bodies, timeout=60, what="the events delivered after the crash")
        events = [e for _, body in Receiver.bodies for e in body["events"]]
        assert [e["message_id"] for e in events] == [mid] and events[0]["type"] == "recipient.final"
        view = api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()
        assert view["callbacks"]["events_sent"] == 1 and view["callbacks"]["state"] == "ok"
        assert runtime.conn.zcard(schema.CALLBACKS_DUE) == 0
    finally:
        slow.close()


def test_a_worker_with_no_callback_threads_delivers_none(settings_env):
    import dataclasses

    from tests.conftest import make_settings
    from workers import notifications
    from workers.runtime import Runtime

    rt = Runtime.from_settings(dataclasses.replace(make_settings(), callback_concurrency=0))
    thread, _ = notifications.start(rt)
    assert thread is None
