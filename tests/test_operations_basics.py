"""Durability checks, alerts, accounts, secrets in Redis and logs."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
import redis

from devkit.redis_server import RedisServer
from devkit.simulator import SimState, SimulatorServer
from tests.conftest import API_KEY, AUTH, drain, sim_admin
from workers import accounts, lifecycle
from workers.alerts import alert
from workers.runtime import NotDurable, check_compact_hashes, check_durability
from workers.settings import settings_from_env


def test_durability_warns_and_refuses(tmp_path):
    server = RedisServer(str(tmp_path / "r"), appendonly=False).start()
    try:
        conn = redis.Redis.from_url(server.url)
        conn.config_set("maxmemory-policy", "allkeys-lru")
        problems = check_durability(conn, "warn")
        assert len(problems) == 2 and "appendonly" in problems[0] and "allkeys-lru" in problems[1]
        with pytest.raises(NotDurable):
            check_durability(conn, "refuse")
    finally:
        server.stop()


def test_our_test_redis_is_durable(redis_conn):
    assert check_durability(redis_conn, "refuse") == []
    assert check_compact_hashes(redis_conn) == ""  # and keeps folded messages compact


def test_a_redis_with_its_default_hash_encoding_gets_a_memory_warning(tmp_path):
    server = RedisServer(str(tmp_path / "r")).start()
    try:
        conn = redis.Redis.from_url(server.url)
        conn.config_set("hash-max-listpack-value", 64)
        assert "hash-max-listpack-value 64" in check_compact_hashes(conn)
    finally:
        server.stop()


class Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        Receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_alert_reaches_a_dingtalk_webhook(settings_env, redis_conn, caplog):
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = settings_from_env(
            {
                **settings_env,
                "SMSGW_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{server.server_port}/robot",
                "SMSGW_ALERT_WEBHOOK_FORMAT": "dingtalk",
            }
        )
        with caplog.at_level(logging.ERROR):
            alert(settings, redis_conn, "account_held", account="default", code=2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert Receiver.bodies[-1]["msgtype"] == "text"
    assert "account_held" in Receiver.bodies[-1]["text"]["content"]
    assert "account_held" in caplog.text
    assert redis_conn.hget("sg:alerts", "account_held") == b"1"


def test_named_accounts_reach_their_own_provider_account(settings_env, redis_conn):
    from gateway import create_app
    from workers.runtime import Runtime, install

    other = SimulatorServer(SimState(uid="mkt", password="other-password")).start()
    try:
        env = {
            **settings_env,
            "SMSGW_ACCOUNTS": "marketing",
            "SMSGW_ACCOUNT_MARKETING_URL": other.api_url,
            "SMSGW_ACCOUNT_MARKETING_UID": "mkt",
            "SMSGW_ACCOUNT_MARKETING_PASSWORD": "other-password",
        }
        settings = settings_from_env(env)
        rt = Runtime.from_settings(settings)
        install(rt)
        api = create_app(settings).test_client()
        r = api.post("/v1/messages", json={"to": ["13800138000"], "text": "sale", "account": "marketing"}, headers=AUTH)
        assert r.status_code == 202
        drain(rt)
        assert other.state.summary()["submissions"] == 1
    finally:
        install(None)
        other.stop()


def test_no_secret_in_jobs_results_or_logs(api, runtime, simulator, caplog):
    caplog.set_level(logging.DEBUG)
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="http", status=500, times=1)
    api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH)
    runtime.client("default").balance()
    drain(runtime)
    password = runtime.settings.account.password.reveal()
    secrets = [password, hashlib.md5(password.encode()).hexdigest(), API_KEY]
    dump = caplog.text
    for key in runtime.conn.keys("*"):
        kind = runtime.conn.type(key)
        if kind == b"hash":
            dump += repr(runtime.conn.hgetall(key))
        elif kind == b"string":
            dump += repr(runtime.conn.get(key))
        elif kind == b"list":
            dump += repr(runtime.conn.lrange(key, 0, -1))
    assert dump and all(s not in dump for s in secrets)


def test_hold_and_resume_are_idempotent(runtime):
    s, c = runtime.settings, runtime.conn
    assert accounts.hold(s, c, "default", 8, "account frozen") is True
    assert accounts.hold(s, c, "default", 8, "account frozen") is False
    assert lifecycle.resume_account(s, c, "default", by="test") == 0
    assert accounts.state(c, "default").state == "active"


def test_operator_routes_need_operator_credentials(settings_env, redis_conn):
    import base64

    from gateway import create_app

    closed = create_app(settings_from_env(settings_env)).test_client()
    assert closed.get("/admin/accounts", headers=AUTH).status_code == 403
    app = create_app(settings_from_env({**settings_env, "SMSGW_OPERATOR_PASSWORD": "op-pass"}))
    client = app.test_client()
    assert client.get("/admin/accounts", headers=AUTH).status_code == 401  # an API key is not enough
    op = {"Authorization": "Basic " + base64.b64encode(b"operator:op-pass").decode()}
    assert client.post("/admin/accounts/default/hold", headers=op, json={"reason": "test"}).status_code == 200
    [acct] = client.get("/admin/accounts", headers=op).get_json()["accounts"]
    assert acct["state"] == "held" and acct["reason"] == "test"
    assert client.post("/admin/accounts/default/resume", headers=op).get_json()["state"] == "active"
