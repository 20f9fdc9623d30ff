"""A faithful fake of the 通用短信平台 HTTP API, for tests, benchmarks and ``make run``.

Faithful: the same paths (``/smsmarketing/wwwroot/api/<name>/``), GB2312 in and out, MD5 and
clear passwords checked, ``*_urldecode`` and 点点通 values decoded a second time as the PHP server
does (so a value encoded only once arrives with its ``+`` and ``%`` corrupted), every answer code
reachable. Strict where the real service would silently do the wrong thing: a malformed
``linkid`` or ``dtime``, or bytes that are not GB2312, answer HTTP 400 so our bugs show.

Everything it accepted is recorded (``GET /_sim/submissions``) with each linkid's count, so tests
assert exactly what reached the provider. Faults are injected at run time through the JSON admin
API under ``/_sim/`` on the same port (the routes below, and docs/provider.md).

State lives in one process behind one lock; the server is threaded.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_to_bytes, urlencode

import requests
from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from workers.mobiles import normalise
from workers.provider import parse_form

log = logging.getLogger(__name__)

API_PREFIX = "/smsmarketing/wwwroot/api"
CST = timezone(timedelta(hours=8))
CODES = {
    0: "发送成功!",
    1: "用户名或密码错误!",
    2: "余额不足!",
    3: "超过发送最大量 {limit} 条",
    4: "此用户不允许发送!",
    5: "手机号或发送信息不能为空!",
    6: "含有敏感字!",
    7: "超过 {max_chars} 个字,请修改后发送!",
    8: "用户已冻结, 请联系客服人员!",
}
SEND_ENDPOINTS = {
    "get_send": ("GET", 100, "clear", ()),
    "get_send_md5": ("GET", 100, "md5", ()),
    "get_send_urldecode": ("GET", 100, "clear", ("msg",)),
    "post_send": ("POST", 1000, "clear", ()),
    "post_send_md5": ("POST", 1000, "md5", ()),
    "post_send_urldecode": ("POST", 1000, "clear", ("uid", "msg")),
    "post_send_ddt": ("POST", 1000, "md5", ("msg", "params")),
}
#: Words the simulated channel refuses: ``mgz`` names them, a send that carries one answers 6.
SENSITIVE = ("敏感词", "发票", "赌博")
_LINKID = re.compile(r"[A-Za-z0-9]{0,32}")
_DTIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_VALUE = re.compile(r"\{value(\d+)\}")


@dataclass
class Fault:
    """One injected fault: ``mode`` is latency, hang, http, garbage or drop.

    ``accept`` (hang, drop, http, garbage): process the submission first, then misbehave, as a
    provider that took the message but whose answer was lost. ``times``: how many requests it
    hits, then it is gone (``None``: until cleared).
    """

    mode: str
    seconds: float = 0.0
    status: int = 500
    accept: bool = False
    times: int | None = None


@dataclass
class Submission:
    endpoint: str
    linkid: str
    mobiles: list[str]
    texts: list[str]
    dtime: str
    at: float  # when the provider took it: after any latency it was told to add
    received: float = 0.0  # when the request reached the provider, before that latency


@dataclass
class SimState:
    uid: str = "test"
    password: str = "secret"
    balance: Decimal = Decimal(1_000_000)
    max_chars: int = 70
    frozen: bool = False
    not_allowed: bool = False
    report_delay: float = 0.0
    undelivered_share: float = 0.0
    push_url: str = ""
    submissions: list[Submission] = field(default_factory=list)
    linkids: Counter[str] = field(default_factory=Counter)
    faults: dict[str, Fault] = field(default_factory=dict)
    scripts: dict[str, deque[int]] = field(default_factory=dict)
    reports: deque[tuple[float, dict[str, str]]] = field(default_factory=deque)
    replies: deque[tuple[float, dict[str, str]]] = field(default_factory=deque)
    #: Pushes the receiver refused (not 2xx) or never took: kept for pull, as a provider that
    #: offers both would (``push_fallback``); without it they are lost, as the original says.
    push_fallback: bool = True
    pushed_failed: int = 0
    unpushed: dict[str, deque[dict[str, str]]] = field(default_factory=lambda: {"rpt": deque(), "mo": deque()})
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.RLock = field(default_factory=threading.RLock)
    wake: threading.Event = field(default_factory=threading.Event)
    # Bumped by reset and by every fault change: hanging requests then return at once.
    epoch: int = 0

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "balance": str(self.balance),
                "submissions": len(self.submissions),
                "recipients": sum(len(s.mobiles) for s in self.submissions),
                "repeated_linkids": {k: v for k, v in self.linkids.items() if v > 1},
                "pending_reports": len(self.reports),
                "pending_replies": len(self.replies),
                "pushes_refused": self.pushed_failed,
                "calls": dict(self.calls),
            }


def php_urldecode(value: bytes) -> bytes:
    return unquote_to_bytes(value.replace(b"+", b" "))


def now_cst() -> str:
    return datetime.now(CST).strftime("%Y-%m-%d %H:%M:%S")


class BadRequest(Exception):
    pass


def create_simulator_app(state: SimState) -> Flask:
    app = Flask("smsgw-simulator")

    def answer(text: str, status: int = 200) -> Response:
        return Response(text.encode("gb2312"), status=status, content_type="text/html; charset=gb2312")

    def code(n: int, **fmt: Any) -> Response:
        return answer(f"{n} {CODES[n].format(**fmt)}")

    def fields() -> dict[str, bytes]:
        raw = parse_form(request.query_string)
        if request.method == "POST":
            raw.update(parse_form(request.get_data(cache=False)))
        return raw

    def text_of(raw: dict[str, bytes], name: str, twice: bool = False) -> str:
        value = raw.get(name, b"")
        if twice:
            value = php_urldecode(value)
        try:
            return value.decode("gb2312")
        except UnicodeDecodeError:
            raise BadRequest(f"{name} is not GB2312") from None

    def take_fault(endpoint: str) -> Fault | None:
        with state.lock:
            fault = state.faults.get(endpoint) or state.faults.get("*")
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    key = endpoint if endpoint in state.faults else "*"
                    del state.faults[key]
            return fault

    def misbehave(fault: Fault) -> Response:
        if fault.mode == "hang":
            epoch, deadline = state.epoch, time.monotonic() + (fault.seconds or 60)
            while state.epoch == epoch and time.monotonic() < deadline:
                time.sleep(0.05)
            return answer("0 发送成功!")
        if fault.mode == "http":
            return answer("Server Error", status=fault.status)
        if fault.mode == "garbage":
            return Response(b"<html>\xff\xfe gateway says hello</html>", content_type="text/html")
        if fault.mode == "drop":
            sock = request.environ.get("werkzeug.socket")
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            return Response(b"", status=200)
        raise BadRequest(f"unknown fault mode {fault.mode}")

    def check_auth(raw: dict[str, bytes], auth: str, twice: tuple[str, ...]) -> bool:
        uid = text_of(raw, "uid", "uid" in twice)
        pwd = text_of(raw, "pwd")
        expected = hashlib.md5(state.password.encode("gb2312")).hexdigest() if auth == "md5" else state.password
        return uid == state.uid and pwd == expected

    @app.errorhandler(BadRequest)
    def bad_request(e: BadRequest) -> Response:
        return answer(f"bad request: {e}", status=400)

    @app.route(f"{API_PREFIX}/<name>/", methods=["GET", "POST"])
    def api(name: str) -> Response:
        request.environ["sim.received"] = time.time()
        with state.lock:
            state.calls[name] += 1
        fault = take_fault(name)
        if fault is not None and fault.mode == "latency":
            time.sleep(fault.seconds)
            fault = None
        if fault is not None and not fault.accept:
            return misbehave(fault)
        response = dispatch(name)
        if fault is not None:
            return misbehave(fault)
        return response

    def dispatch(name: str) -> Response:
        raw = fields()
        if name in SEND_ENDPOINTS:
            method, limit, auth, twice = SEND_ENDPOINTS[name]
            if request.method != method:
                return answer("method not allowed", status=405)
            if not check_auth(raw, auth, twice):
                return code(1)
            return accept_submission(name, raw, limit, twice)
        if name in ("user_info", "user_info_urldecode"):
            if not check_auth(raw, "clear", ("uid",) if name.endswith("urldecode") else ()):
                return code(1)
            with state.lock:
                return answer(f"用户ID={state.uid} 剩余资费={state.balance}")
        if name == "mgz":
            if not check_auth(raw, "clear", ()):
                return code(1)
            words = [w for w in SENSITIVE if w in text_of(raw, "msg")]
            return answer("敏感字:" + "".join(w + ";" for w in words) if words else "不含敏感字")
        if name in ("report", "reve", "reve_urlencode"):
            if not check_auth(raw, "clear", ()):
                return code(1)
            return pull(name)
        return answer("not found", status=404)

    def accept_submission(name: str, raw: dict[str, bytes], limit: int, twice: tuple[str, ...]) -> Response:
        linkid = text_of(raw, "linkid")
        dtime = text_of(raw, "dtime")
        if not _LINKID.fullmatch(linkid):
            raise BadRequest("linkid must be at most 32 letters and digits")
        if dtime and not _DTIME.fullmatch(dtime):
            raise BadRequest("dtime must be YYYY-MM-DD HH:MM:SS")
        msg = text_of(raw, "msg", "msg" in twice)
        if name == "post_send_ddt":
            params = text_of(raw, "params", True)
            mobiles, texts = render_ddt(msg, params)
            if len(params.split(";")) > limit:
                return code(3, limit=limit)
        else:
            given = [m for m in text_of(raw, "mobile").split(";") if m]
            if len(given) > limit:
                return code(3, limit=limit)
            mobiles = list(dict.fromkeys(m for m in given if normalise(m) == m))
            texts = [msg] * len(mobiles)
        with state.lock:
            script = state.scripts.get(name)
            if script:
                scripted = script.popleft()
                if scripted != 0:
                    return code(scripted, limit=limit, max_chars=state.max_chars)
            if state.frozen:
                return code(8)
            if state.not_allowed:
                return code(4)
            if not mobiles or not msg:
                return code(5)
            if any(len(t) > state.max_chars for t in texts):
                return code(7, max_chars=state.max_chars)
            if any(w in t for t in texts for w in SENSITIVE):
                return code(6)
            if state.balance < len(mobiles):
                return code(2)
            state.balance -= len(mobiles)
            received = request.environ.get("sim.received", 0.0)
            state.submissions.append(Submission(name, linkid, mobiles, texts, dtime, time.time(), received))
            state.linkids[linkid] += 1
            ready = time.time() + state.report_delay
            # Once per submission (per recipient it was a third of this call's CPU), and the time the
            # report says it was delivered: report_delay models a slow route, not a slow report.
            at = datetime.fromtimestamp(ready, CST).strftime("%Y-%m-%d %H:%M:%S")
            share = state.undelivered_share
            for mobile in mobiles:
                status = "UNDELIV" if share and _share(linkid + mobile) < share else "DELIVRD"
                state.reports.append((ready, {"Mobile": mobile, "LinkId": linkid, "Report": status, "ReportTime": at}))
            state.wake.set()
        return code(0)

    def pull(name: str) -> Response:
        queue = state.reports if name == "report" else state.replies
        unpushed = state.unpushed["rpt" if name == "report" else "mo"]
        items: list[dict[str, str]] = []
        with state.lock:
            while unpushed and len(items) < 20:
                items.append(unpushed.popleft())
            while queue and len(items) < 20 and queue[0][0] <= time.time() and not state.push_url:
                items.append(queue.popleft()[1])
        if not items:
            return answer("160" if name == "report" else "150")
        lines = []
        for item in items:
            if name == "report":
                lines.append(f"{item['Mobile']}/{item['ReportTime']}/{item['LinkId']}/{item['Report']}/")
            else:
                content = item["Message"]
                if name == "reve_urlencode":
                    content = urlencode({"": content}, encoding="gb2312")[1:]
                lines.append(f"{item['Mobile']}/{item['RevertTime']}/{item['LinkId']}/{content}/01")
        return answer("\n".join(lines) + "\n")

    # -- admin API (JSON) -----------------------------------------------------------------------

    @app.get("/_sim/state")
    def sim_state() -> Response:
        return jsonify(state.summary())

    @app.get("/_sim/submissions")
    def sim_submissions() -> Response:
        with state.lock:
            return jsonify([asdict(s) for s in state.submissions])

    @app.post("/_sim/fault")
    def sim_fault() -> Response:
        body = request.get_json(force=True)
        endpoint = body.pop("endpoint", "*")
        with state.lock:
            if body.get("mode") in (None, "none"):
                state.faults.pop(endpoint, None)
            else:
                state.faults[endpoint] = Fault(**body)
            state.epoch += 1
        return jsonify(ok=True)

    @app.post("/_sim/script")
    def sim_script() -> Response:
        body = request.get_json(force=True)
        with state.lock:
            state.scripts[body.get("endpoint", "post_send_md5")] = deque(int(c) for c in body["codes"])
        return jsonify(ok=True)

    @app.post("/_sim/config")
    def sim_config() -> Response:
        body = request.get_json(force=True)
        with state.lock:
            for key, value in body.items():
                if key == "balance":
                    value = Decimal(str(value))
                if not hasattr(state, key) or key in ("submissions", "linkids", "lock", "wake"):
                    return jsonify(error=f"unknown setting {key}"), 400  # type: ignore[return-value]
                setattr(state, key, value)
            state.wake.set()
        return jsonify(state.summary())

    @app.post("/_sim/reply")
    def sim_reply() -> Response:
        body = request.get_json(force=True)
        item = {
            "Mobile": body["mobile"],
            "Message": body["content"],
            "LinkId": body.get("linkid", ""),
            "RevertTime": now_cst(),
        }
        with state.lock:
            state.replies.append((time.time(), item))
            state.wake.set()
        return jsonify(ok=True)

    @app.post("/_sim/reset")
    def sim_reset() -> Response:
        with state.lock:
            state.submissions.clear()
            state.linkids.clear()
            state.faults.clear()
            state.scripts.clear()
            state.reports.clear()
            state.replies.clear()
            for waiting in state.unpushed.values():
                waiting.clear()
            state.calls.clear()
            state.epoch += 1
        return jsonify(ok=True)

    return app


def render_ddt(template: str, params: str) -> tuple[list[str], list[str]]:
    """The provider's reading of a 点点通 submission: each well-formed group's mobile and text."""
    n_vars = len({int(i) for i in _VALUE.findall(template)})
    mobiles: list[str] = []
    texts: list[str] = []
    for group in params.split(";"):
        values = group.split(",")
        # Groups of the wrong shape are silently dropped, as the real service does.
        if len(values) != n_vars + 1 or normalise(values[0]) != values[0] or values[0] in mobiles:
            continue
        mobiles.append(values[0])
        texts.append(_render(template, values[1:]))
    return mobiles, texts


def _render(template: str, values: list[str]) -> str:
    """Value after value, as a plain string replace would: a value that itself holds
    ``{valueN}`` is expanded again by the replacements after it (the real service's behaviour
    that makes a short value long)."""
    for i, value in enumerate(values):
        template = template.replace(f"{{value{i}}}", value)
    return template


def _share(key: str) -> float:
    """A stable number in [0, 1) per key, so a configured share of failures is reproducible."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


def push_loop(state: SimState, stop: threading.Event) -> None:
    """Push ready reports and replies to ``state.push_url``, once each, as the real one does."""
    session = requests.Session()
    while not stop.is_set():
        state.wake.wait(0.2)
        state.wake.clear()
        if not state.push_url:
            continue
        while True:
            with state.lock:
                url = state.push_url
                item: dict[str, str] | None = None
                if state.reports and state.reports[0][0] <= time.time():
                    item = {"Class": "rpt", "SmsName": state.uid, **state.reports.popleft()[1]}
                elif state.replies:
                    item = {"Class": "mo", "SmsName": state.uid, **state.replies.popleft()[1]}
            if item is None or not url:
                break
            try:
                pushed = session.get(url + "?" + urlencode(item, encoding="gb2312"), timeout=5).ok
            except requests.RequestException:
                pushed = False
            if not pushed:
                with state.lock:
                    if state.push_fallback:
                        kind = item.pop("Class")
                        item.pop("SmsName")
                        state.unpushed[kind].append(item)
                        state.pushed_failed += 1
                    else:
                        log.warning("push to the registered URL failed; the item is lost, as with the real one")


class SimulatorServer:
    """The simulator on a real socket in a background thread (``port=0``: a free port)."""

    def __init__(self, state: SimState | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state or SimState()
        self.app = create_simulator_app(self.state)
        self._server: BaseWSGIServer = make_server(host, port, self.app, threaded=True)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="simulator", daemon=True),
            threading.Thread(target=push_loop, args=(self.state, self._stop), daemon=True),
        ]

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX + "/"

    def start(self) -> SimulatorServer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.state.epoch += 1
        self.state.wake.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="smsgw-simulator",
        description="A fake of the 通用短信平台 HTTP API, with fault injection under /_sim/.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--uid", default="test")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--balance", default="1000000", help="in recipients (one per mobile)")
    parser.add_argument("--max-chars", type=int, default=70, help="the channel's length limit (XX)")
    parser.add_argument("--report-delay", type=float, default=0.0, help="seconds until a report is ready")
    parser.add_argument("--undelivered-share", type=float, default=0.0, help="share of UNDELIV reports")
    parser.add_argument("--push-url", default="", help="push reports and replies here instead of pull")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per provider call
    state = SimState(
        uid=args.uid,
        password=args.password,
        balance=Decimal(args.balance),
        max_chars=args.max_chars,
        report_delay=args.report_delay,
        undelivered_share=args.undelivered_share,
        push_url=args.push_url,
    )
    server = SimulatorServer(state, args.host, args.port).start()
    print(f"smsgw-simulator listening; provider base URL: {server.api_url}", flush=True)  # noqa: T201
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
