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


@pytest.fixture
def strict(settings_env, runtime):
    """The API and a runtime as production runs them: no loopback for callbacks."""
    import dataclasses

    from gateway import create_app
    from workers.settings import settings_from_env

    settings = settings_from_env({**settings_env, "SMSGW_CALLBACK_ALLOW_LOOPBACK": ""})
    assert not settings.callback_allow_loopback
    return create_app(settings).test_client(), dataclasses.replace(runtime, settings=settings)


@pytest.mark.parametrize("url", INSIDE)
def test_inside_addresses_are_refused_at_the_door(strict, runtime, url):
    api, _ = strict
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
    assert egress.allowed(egress.parse_address("[64:ff9b::8.8.8.8]"))  # NAT64 to a public host


def test_the_development_setting_opens_loopback_only_and_production_refuses_it():
    from tests.conftest import make_settings
    from workers.settings import dev_defaults

    for address in ("127.0.0.1", "::1"):
        assert egress.allowed(egress.parse_address(address), loopback=True)
    for address in ("169.254.169.254", "10.1.2.3", "fd00:ec2::254"):
        assert not egress.allowed(egress.parse_address(address), loopback=True)
    assert egress.door_problem("localhost", loopback=True) is None
    assert "SMSGW_CALLBACK_ALLOW_LOOPBACK" in egress.door_problem("localhost")
    problems = dev_defaults(make_settings(SMSGW_CALLBACK_ALLOW_LOOPBACK="1"))
    assert any("SMSGW_CALLBACK_ALLOW_LOOPBACK" in p for p in problems)


def test_a_name_that_resolves_inside_passes_the_door_and_is_refused_at_delivery(
    strict, simulator, receiver, monkeypatch
):
    """The door cannot know where a name leads; the worker resolves it, checks every address
    and never connects. The name's answer is faked (a rebinding DNS would give the same), so
    the rule is tested on every host whatever its network looks like."""
    real = socket.getaddrinfo
    inside = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
    monkeypatch.setattr(
        egress.socket, "getaddrinfo", lambda host, *a, **k: inside if host == "rebind.example" else real(host, *a, **k)
    )
    name = "rebind.example"
    api, runtime = strict
    port = receiver.rsplit(":", 1)[1].split("/")[0]
    mid = send(api, {"to": ["13800138000"], "text": "x", "callback_url": f"http://{name}:{port}/hook"})
    drain(runtime)
    pull_all(runtime)
    from workers.notifications import deliver_now

    assert deliver_now(runtime, mid) == "retry"
    attempts = view(api, mid)["callbacks"]["attempts"]
    assert attempts and attempts[-1]["outcome"].startswith("refused")
    assert Receiver.calls == 0


def test_a_receiver_on_loopback_is_reached_with_the_development_setting(api, runtime, simulator, receiver):
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
