"""The provider client against the simulator over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests

from devkit.simulator import SimulatorServer
from workers import provider as p

PASSWORD = "s3cret+%pass"
MD5 = hashlib.md5(PASSWORD.encode()).hexdigest()


def admin(sim: SimulatorServer, path: str, **body: object) -> dict:
    response = requests.post(f"{sim.url}/_sim/{path}", json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def submissions(sim: SimulatorServer) -> list[dict]:
    return requests.get(f"{sim.url}/_sim/submissions", timeout=5).json()


@pytest.fixture
def client(simulator: SimulatorServer) -> p.ProviderClient:
    return p.ProviderClient(simulator.api_url, "test", PASSWORD, read_timeout=1.0)


@pytest.mark.parametrize("variant", ["md5", "urldecode"])
def test_send_reaches_the_provider_exactly(simulator, variant):
    client = p.ProviderClient(simulator.api_url, "test", PASSWORD, variant=variant)
    text = "验证码 1+1=2, 100% 真 & ok"
    result = client.send(["13800138000", "13900139000"], text, linkid="abc123")
    assert result.code == 0 and result.linkid == "abc123"
    [sub] = submissions(simulator)
    assert sub["endpoint"] == f"post_send_{variant}"
    assert sub["mobiles"] == ["13800138000", "13900139000"]
    assert sub["texts"] == [text, text]
    assert sub["linkid"] == "abc123"


def test_single_encoding_would_corrupt_plus_and_percent(simulator):
    """The simulator decodes urldecode fields twice, as PHP does: sending once-encoded breaks."""
    raw = "uid=test&pwd=" + requests.utils.quote(PASSWORD) + "&mobile=13800138000&linkid=x1&msg=1%2B1%3D2"
    requests.post(
        simulator.api_url + "post_send_urldecode/",
        data=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )
    assert submissions(simulator)[0]["texts"] == ["1 1=2"]


def test_dtime_is_passed(client, simulator):
    client.send(["13800138000"], "hi", linkid="l1", dtime="2030-01-02 03:04:05")
    assert submissions(simulator)[0]["dtime"] == "2030-01-02 03:04:05"


def test_personalized_renders_each_recipients_text(client, simulator):
    groups = ["13800138000,王伟,1+1", "13900139000,李%,a b"]
    client.send_personalized("{value0}您好，码{value1}", groups, linkid="d1")
    [sub] = submissions(simulator)
    assert sub["endpoint"] == "post_send_ddt"
    assert sub["texts"] == ["王伟您好，码1+1", "李%您好，码a b"]


@pytest.mark.parametrize(
    ("codes", "exc", "code"),
    [
        ([1], p.BadCredentials, 1),
        ([2], p.InsufficientBalance, 2),
        ([3], p.TooManyRecipients, 3),
        ([4], p.NotAllowed, 4),
        ([5], p.EmptyMessage, 5),
        ([7], p.TextTooLong, 7),
        ([8], p.AccountFrozen, 8),
    ],
)
def test_every_code_maps_to_its_exception(client, simulator, codes, exc, code):
    admin(simulator, "script", endpoint="post_send_md5", codes=codes)
    with pytest.raises(exc) as info:
        client.send(["13800138000"], "hi", linkid="c1")
    assert info.value.code == code and info.value.text
    assert not info.value.ambiguous


def test_real_conditions_reach_each_code(simulator):
    good = p.ProviderClient(simulator.api_url, "test", PASSWORD)
    with pytest.raises(p.BadCredentials):
        p.ProviderClient(simulator.api_url, "test", "wrong").send(["13800138000"], "x", linkid="a")
    with pytest.raises(p.TooManyRecipients):
        good.send([f"138{i:08d}" for i in range(1001)], "x", linkid="b")
    with pytest.raises(p.EmptyMessage):
        good.send(["13800138000"], "", linkid="c")
    with pytest.raises(p.TextTooLong) as info:
        good.send(["13800138000"], "字" * 71, linkid="d")
    assert info.value.max_chars == 70
    admin(simulator, "config", balance=1)
    with pytest.raises(p.InsufficientBalance):
        good.send(["13800138000", "13900139000"], "x", linkid="e")
    admin(simulator, "config", frozen=True)
    with pytest.raises(p.AccountFrozen):
        good.send(["13800138000"], "x", linkid="f")
    admin(simulator, "config", frozen=False, not_allowed=True)
    with pytest.raises(p.NotAllowed):
        good.send(["13800138000"], "x", linkid="g")
    assert submissions(simulator) == []


def test_balance_and_sensitive_words(client, simulator):
    assert client.balance() == Decimal(1_000_000)
    client.send(["13800138000"], "x", linkid="b1")
    assert client.balance() == Decimal(999_999)
    assert client.sensitive_words("开发票吗") == ["发票"]
    assert client.sensitive_words("你好") == []


def test_pull_reports_then_empty(client):
    client.send([f"1380000{i:04d}" for i in range(25)], "x", linkid="r1")
    first = client.pull_reports()
    assert len(first) == 20 and all(r.linkid == "r1" and r.delivered for r in first)
    assert len(client.pull_reports()) == 5
    assert client.pull_reports() == []


def test_reply_with_slash_plus_percent_and_chinese(client, simulator):
    content = "回复 a/b 1+1 100% ok"
    admin(simulator, "reply", mobile="13800138000", content=content, linkid="L9")
    [reply] = client.pull_replies()
    assert (reply.mobile, reply.linkid, reply.content) == ("13800138000", "L9", content)
    assert client.pull_replies() == []


def test_parse_reply_line_keeps_slashes_in_content():
    reply = p.parse_reply_line("13800138000/2024-01-01 10:00:00/L1/a/b/c/01", urlencoded=False)
    assert reply.content == "a/b/c" and reply.subcode == "01"


@pytest.mark.parametrize("line", ["garbage", "1/2/3", ""])
def test_bad_report_line(line):
    with pytest.raises(p.ParseError):
        p.parse_report_line(line)


def test_wrong_password_on_pulls_and_balance(simulator):
    bad = p.ProviderClient(simulator.api_url, "test", "nope")
    for call in (bad.balance, bad.pull_reports, bad.pull_replies, lambda: bad.sensitive_words("x")):
        with pytest.raises(p.BadCredentials):
            call()


def test_read_timeout_is_ambiguous(client, simulator):
    admin(simulator, "fault", endpoint="post_send_md5", mode="hang", seconds=3, accept=True)
    with pytest.raises(p.ReadTimeout) as info:
        client.send(["13800138000"], "x", linkid="t1")
    assert info.value.ambiguous
    assert [s["linkid"] for s in submissions(simulator)] == ["t1"]  # it was accepted after all


def test_http_5xx(client, simulator):
    admin(simulator, "fault", mode="http", status=502)
    with pytest.raises(p.HTTPStatusError) as info:
        client.send(["13800138000"], "x", linkid="h1")
    assert info.value.status == 502 and not info.value.ambiguous


def test_garbage_is_unknown_answer_with_raw_text(client, simulator):
    admin(simulator, "fault", mode="garbage")
    with pytest.raises(p.UnknownAnswer) as info:
        client.send(["13800138000"], "x", linkid="g1")
    assert "gateway says hello" in info.value.text


def test_dropped_connection_after_sending_is_ambiguous(client, simulator):
    admin(simulator, "fault", mode="drop")
    with pytest.raises(p.TransportError) as info:
        client.send(["13800138000"], "x", linkid="d1")
    assert info.value.ambiguous


def test_connection_refused_is_safe_to_retry():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = p.ProviderClient(f"http://127.0.0.1:{port}/api/", "u", PASSWORD)
    with pytest.raises(p.ConnectError) as info:
        client.send(["13800138000"], "x", linkid="x")
    assert not info.value.ambiguous


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A raw socket server that accepts and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/api/"
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    server.close()


def test_no_secret_in_exceptions_repr_or_logs(silent_server, caplog):
    caplog.set_level(logging.DEBUG)
    client = p.ProviderClient(silent_server, "u", PASSWORD, read_timeout=0.3)
    errors = []
    for call in (
        client.balance,
        client.pull_reports,
        lambda: client.send(["13800138000"], "x", linkid="s"),
    ):
        with pytest.raises(p.ProviderError) as info:
            call()
        errors.append(info.value)
    import traceback

    text = repr(client) + caplog.text
    for e in errors:
        text += str(e) + repr(e) + "".join(traceback.format_exception(e))
        assert e.__cause__ is None and e.__context__ is None
    for secret in (PASSWORD, MD5, requests.utils.quote(PASSWORD)):
        assert secret not in text
    assert "pwd" not in text
