"""Callers are contained: a callback_url never reaches loopback, private or metadata addresses."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import AUTH, Receiver, drain
from tests.test_reports import pull_all, send, view
from workers import egress

INSIDE = [
    "http://127.0.0.1:6379/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://127.1/",
    "http://0177.0.0.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://localhost:8081/_sim/reset",
    "http://app.localhost/",
    "http://10.1.2.3/",
    "http://192.168.1.1/",
    "http://100.100.100.200/",
    "http://[fd00:ec2::254]/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[64:ff9b::127.0.0.1]/",  # NAT64 to loopback
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 to the metadata service
    "http://[64:ff9b:1::10.0.0.1]/",  # NAT64 local use, to a private host
    "http://[::ffff:0:7f00:1]/",  # SIIT
]


@pytest.mark.parametrize("url", INSIDE)
def test_inside_addresses_are_refused_at_the_door(api, runtime, url):
    r = api.post("/v1/messages", json={"to": ["13800138000"], "text": "x", "callback_url": url}, headers=AUTH)
    assert r.status_code == 422, url
    assert r.get_json()["errors"][0]["pointer"] == "/callback_url"
    assert sum(runtime.queue(p).count for p in ("high", "normal", "bulk")) == 0


@pytest.mark.parametrize(
    ("host", "address"),
    [("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("127.1", "127.0.0.1"), ("[::ffff:a00:1]", "10.0.0.1")],
)
def test_every_spelling_of_an_address_is_read_as_one(host, address):
    assert str(egress.parse_address(host)) == address


def test_no_setting_opens_loopback_or_metadata():
    nets = egress.parse_networks("0.0.0.0/0,::/0")
    for address in ("127.0.0.1", "169.254.169.254", "::1", "fd00:ec2::254", "100.100.100.200"):
        assert not egress.allowed(egress.parse_address(address), nets)
    assert egress.allowed(egress.parse_address("10.1.2.3"), nets)
    assert egress.allowed(egress.parse_address("8.8.8.8"))


def test_a_name_that_resolves_inside_passes_the_door_and_is_refused_at_delivery(api, runtime, simulator, receiver):
    """The door cannot know where a name leads; the worker resolves it, checks every address
    and never connects. This machine's own name resolves to loopback or its private address."""
    name = socket.gethostname()
    resolved = {egress.parse_address(str(i[4][0])) for i in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    if any(a is not None and a.is_global for a in resolved):
        pytest.skip(f"{name} resolves to a global address here")
    port = receiver.rsplit(":", 1)[1].split("/")[0]
    mid = send(api, {"to": ["13800138000"], "text": "x", "callback_url": f"http://{name}:{port}/hook"})
    drain(runtime)
    pull_all(runtime)
    from workers.notifications import deliver_now

    assert deliver_now(runtime, mid) == "retry"
    attempts = view(api, mid)["callbacks"]["attempts"]
    assert attempts and attempts[-1]["outcome"].startswith("refused")
    assert Receiver.calls == 0


def test_an_allowed_private_network_is_reached_at_the_checked_address(api, runtime, simulator, receiver):
    mid = send(api, {"to": ["13800138000"], "text": "x", "callback_url": receiver})
    drain(runtime)
    pull_all(runtime)
    drain(runtime, timeout=30)
    assert view(api, mid)["callbacks"]["events_sent"] == 1 and Receiver.calls >= 1


def test_a_redirect_is_not_followed(api, runtime, simulator, receiver):
    Receiver.redirect_to = "http://127.0.0.1:6379/"
    try:
        mid = send(api, {"to": ["13800138000"], "text": "x", "callback_url": receiver})
        drain(runtime)
        pull_all(runtime)
        from workers.notifications import deliver_now

        assert deliver_now(runtime, mid) == "retry"
        assert view(api, mid)["callbacks"]["attempts"][-1]["outcome"] == "HTTP 302"
    finally:
        Receiver.redirect_to = ""
