"""A real TCP proxy on loopback in front of a Redis Unix socket, to break the wire on cue.

``delay(marker, seconds)``: the next client chunk holding ``marker`` reaches Redis that much
later (a stalled network: the client times out, Redis still executes it afterwards).
``cut_after(marker)``: the next client chunk holding ``marker`` is delivered, then the client's
connection is reset before any answer (Redis executed it; the client never learns).
"""

from __future__ import annotations

import socket
import threading
import time


class FaultProxy:
    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._rules: list[tuple[str, bytes, float]] = []
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def delay(self, marker: bytes, seconds: float) -> None:
        with self._lock:
            self._rules.append(("delay", marker, seconds))

    def cut_after(self, marker: bytes) -> None:
        with self._lock:
            self._rules.append(("cut", marker, 0.0))

    def close(self) -> None:
        self._stop = True
        self.listener.close()

    def _take(self, data: bytes) -> tuple[str, float] | None:
        with self._lock:
            for rule in self._rules:
                if rule[1] in data:
                    self._rules.remove(rule)
                    return rule[0], rule[2]
        return None

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.unix_path)
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                rule = self._take(data)
                if rule is not None and rule[0] == "delay":
                    time.sleep(rule[1])
                upstream.sendall(data)
                if rule is not None and rule[0] == "cut":
                    time.sleep(0.05)  # let Redis read it before the client's side goes
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    client.close()
                    return
        except OSError:
            pass
        finally:
            upstream.close()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
