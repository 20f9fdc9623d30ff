"""Verification codes as a service (``workers.verify``, ``gateway.verifications``): the code is
derived, sent through the simulator over HTTP, checked by recomputing, and never stored."""

from __future__ import annotations

import hashlib
import re
import threading
import time

import pytest

from gateway import create_app
from tests.conftest import API_KEY, AUTH, OTHER_KEY, THEIRS, drain, sim_submissions
from workers import routes, verify
from workers.settings import settings_from_env
from workers.storage import schema
from workers.storage.schema import AccountState, Verification

MOBILE = "13800138000"


# -- the code ------------------------------------------------------------------------------------


def test_a_code_follows_from_the_secret_and_the_nonce_only():
    key, other = b"k" * 32, b"x" * 32
    assert verify.code_for(key, "n1", 6) == verify.code_for(key, "n1", 6)
    assert len(verify.code_for(key, "n1", 4)) == 4 and len(verify.code_for(key, "n1", 10)) == 10
    assert verify.code_for(key, "n1", 6).isdigit()
    codes = {verify.code_for(key, f"n{i}", 6) for i in range(200)}
    assert len(codes) > 190  # spread, not stuck
    assert sum(verify.code_for(key, f"n{i}", 6) != verify.code_for(other, f"n{i}", 6) for i in range(50)) > 45


def test_render_turns_a_token_into_its_code_and_leaves_values_alone():
    key = b"k" * 32
    token = verify.token("abc", 6)
    assert verify.render(key, [f"{MOBILE},{token}", "13900139000,7788"]) == [
        f"{MOBILE},{verify.code_for(key, 'abc', 6)}",
        "13900139000,7788",
    ]


def test_a_caller_cannot_write_a_token(api):
    body = {"template": "码{code}", "recipients": [{"to": MOBILE, "vars": {"code": verify.token("abc", 6)}}]}
    r = api.post("/v1/messages", json=body, headers=AUTH)
    assert r.status_code == 422 and "control character" in r.get_data(as_text=True)


# -- the API through the simulator ---------------------------------------------------------------


def _codes(simulator) -> list[str]:
    return [re.search(r"\d+", text).group() for s in sim_submissions(simulator) for text in s["texts"]]


@pytest.fixture
def vapi(settings_env, runtime):
    """The API with two keys and the high caps off (their 1/60 default refuses a resend within a
    minute: ``test_a_send_a_cap_suppresses_is_a_429_and_takes_no_send``)."""
    env = {**settings_env, "SMSGW_API_KEYS": f"tester:{API_KEY},other:{OTHER_KEY}", "SMSGW_MOBILE_CAPS_HIGH": ""}
    return create_app(settings_from_env(env)).test_client()


def test_a_verification_end_to_end(vapi, runtime, simulator, caplog):
    api = two_keys = vapi
    caplog.set_level("DEBUG")
    # Ten digits: a six-digit code could turn up by chance among the digits of what is stored.
    body = {"to": "+86 138-0013-8000", "reference": "login-1", "length": 10}
    r = api.post("/v1/verifications", json=body, headers=AUTH)
    assert r.status_code == 201, r.get_json()
    v = r.get_json()
    assert v["status"] == "pending" and v["sends"] == 1 and v["checks_left"] == 5 and v["to"] == MOBILE
    assert r.headers["Location"].endswith(v["id"])
    drain(runtime)
    [code] = _codes(simulator)
    assert code not in r.get_data(as_text=True)
    text = sim_submissions(simulator)[0]["texts"][0]
    assert text == f"您的验证码是{code}，10分钟内有效，请勿告诉他人。"

    # Asked again: the same code under the same verification.
    again = api.post("/v1/verifications", json={"to": MOBILE}, headers=AUTH)
    assert again.status_code == 200 and again.get_json()["id"] == v["id"] and again.get_json()["sends"] == 2
    drain(runtime)
    assert _codes(simulator) == [code, code]

    # Another key cannot see or approve it.
    assert (
        two_keys.post("/v1/verifications/check", json={"to": MOBILE, "code": code}, headers=THEIRS).status_code == 404
    )
    assert two_keys.get(f"/v1/verifications/{v['id']}", headers=THEIRS).status_code == 404

    wrong = "0" * 10 if code != "0" * 10 else "1" * 10
    r = api.post("/v1/verifications/check", json={"to": MOBILE, "code": wrong}, headers=AUTH)
    assert r.get_json() == {"id": v["id"], "to": MOBILE, "status": "pending", "checks_left": 4}
    r = api.post("/v1/verifications/check", json={"to": MOBILE, "code": code}, headers=AUTH)
    assert r.status_code == 200 and r.get_json()["status"] == "approved"
    # Used once: the same code again finds nothing open.
    assert api.post("/v1/verifications/check", json={"to": MOBILE, "code": code}, headers=AUTH).status_code == 404
    got = api.get(f"/v1/verifications/{v['id']}", headers=AUTH).get_json()
    assert got["status"] == "approved" and got["sends"] == 2 and len(got["messages"]) == 2
    assert got["reference"] == "login-1" and got["expires_at"].endswith("+00:00")

    # The sixth send is refused; the verification goes on.
    mobile2 = "13900139000"
    for n in range(1, 6):
        assert api.post("/v1/verifications", json={"to": mobile2, "length": 10}, headers=AUTH).get_json()["sends"] == n
    r = api.post("/v1/verifications", json={"to": mobile2}, headers=AUTH)
    assert r.status_code == 429 and r.mimetype == "application/problem+json" and "5 times" in r.get_json()["detail"]

    # Five wrong codes lock it, even against the right one; a new one is refused until it ends.
    drain(runtime)
    code2 = _codes(simulator)[-1]
    wrong2 = "0" * 10 if code2 != "0" * 10 else "1" * 10
    for left in (4, 3, 2, 1):
        r = api.post("/v1/verifications/check", json={"to": mobile2, "code": wrong2}, headers=AUTH)
        assert r.get_json()["checks_left"] == left
    assert api.post("/v1/verifications/check", json={"to": mobile2, "code": wrong2}, headers=AUTH).get_json() == {
        "id": r.get_json()["id"],
        "to": mobile2,
        "status": "failed",
        "checks_left": 0,
    }
    assert api.post("/v1/verifications/check", json={"to": mobile2, "code": code2}, headers=AUTH).get_json()[
        "status"
    ] == ("failed")
    r = api.post("/v1/verifications", json={"to": mobile2}, headers=AUTH)
    assert r.status_code == 429 and "Retry-After" in r.headers

    # Outcomes are counted: /metrics, the key's usage.
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'smsgw_verifications_total{account="default",outcome="approved"} 1.0' in metrics
    assert 'smsgw_verifications_total{account="default",outcome="failed"} 1.0' in metrics
    usage = api.get("/v1/usage", headers=AUTH).get_json()
    assert "verifications_approved" in str(usage)

    # Nothing recoverable at rest: neither code, nor a digest of a text that carried one.
    texts = [t for s in sim_submissions(simulator) for t in s["texts"]]
    secrets_ = {code, code2} | {hashlib.sha256(t.encode()).hexdigest() for t in texts}
    secrets_ |= {hashlib.sha256(t.encode()).digest().hex()[:16] for t in texts}
    stored = _everything(runtime.conn)
    for secret in secrets_:
        assert secret.encode() not in stored, secret
    assert not any(c in rec.getMessage() for rec in caplog.records for c in (code, code2))


def _everything(conn) -> bytes:
    """Every key and value in Redis, as bytes (hashes, lists, sets, strings, streams)."""
    out = []
    for key in conn.scan_iter(count=1000):
        out.append(key)
        kind = conn.type(key)
        if kind == b"string":
            out.append(conn.get(key) or b"")
        elif kind == b"hash":
            out += [b for kv in conn.hgetall(key).items() for b in kv]
        elif kind == b"list":
            out += conn.lrange(key, 0, -1)
        elif kind == b"zset":
            out += conn.zrange(key, 0, -1)
        elif kind == b"set":
            out += list(conn.smembers(key))
        elif kind == b"stream":
            out += [repr(e).encode() for e in conn.xrange(key)]
    return b"\n".join(out)


def test_a_template_must_hold_the_code_once(api):
    for template in ("没有码", "{code}{code}", "{code} {name}"):
        r = api.post("/v1/verifications", json={"to": MOBILE, "template": template}, headers=AUTH)
        assert r.status_code == 422 and r.get_json()["errors"][0]["pointer"] == "/template", template
    r = api.post("/v1/verifications", json={"to": MOBILE, "length": 3}, headers=AUTH)
    assert r.status_code == 422
    r = api.post("/v1/verifications/check", json={"to": MOBILE, "code": "12a456"}, headers=AUTH)
    assert r.status_code == 422


def test_a_refused_template_stores_nothing_so_the_next_request_starts_clean(settings_env, runtime, simulator):
    """A 422 (here: the account's signature missing) comes before the verification is stored:
    the mobile is not left with a pending verification that every later request would resend."""
    api = create_app(settings_from_env({**settings_env, "SMSGW_SIGNATURE": "【测试】"})).test_client()
    r = api.post("/v1/verifications", json={"to": MOBILE, "template": "码{code}"}, headers=AUTH)
    assert r.status_code == 422 and "【测试】" in r.get_data(as_text=True)
    assert runtime.conn.get(schema.verification_index_key("tester", MOBILE)) is None
    r = api.post("/v1/verifications", json={"to": MOBILE, "template": "【测试】码{code}"}, headers=AUTH)
    assert r.status_code == 201 and r.get_json()["sends"] == 1


def test_a_custom_template_length_and_validity(api, runtime, simulator):
    body = {"to": MOBILE, "template": "【测试】登录码{code}，{minutes}分钟有效", "length": 8, "valid_for": 120}
    assert api.post("/v1/verifications", json=body, headers=AUTH).status_code == 201
    drain(runtime)
    [text] = sim_submissions(simulator)[0]["texts"]
    assert re.fullmatch(r"【测试】登录码\d{8}，2分钟有效", text)


def test_an_expired_code_is_refused_and_counted_without_a_check(vapi, runtime, simulator):
    api = vapi
    vid = api.post("/v1/verifications", json={"to": MOBILE}, headers=AUTH).get_json()["id"]
    drain(runtime)
    [code] = _codes(simulator)
    v = Verification.load(runtime.conn, vid)
    later = v.expires + 1
    assert verify.check(runtime.conn, runtime.settings, v, code, later).status == "expired"
    other = api.post("/v1/verifications", json={"to": "13900139000"}, headers=AUTH).get_json()["id"]
    w = Verification.load(runtime.conn, other)
    assert verify.expire_due(runtime.conn, runtime.settings, w.expires + 1) == 1
    assert Verification.load(runtime.conn, other).status == "expired"
    assert runtime.conn.hget(schema.COUNTS, "verify:default:expired") == b"2"
    # Through the API: a verification past its end refuses even its right code.
    third = api.post("/v1/verifications", json={"to": "13700137000"}, headers=AUTH).get_json()["id"]
    drain(runtime)
    code3 = _codes(simulator)[-1]
    runtime.conn.hset(schema.verification_key(third), Verification.field_of("expires"), time.time() - 1)
    r = api.post("/v1/verifications/check", json={"to": "13700137000", "code": code3}, headers=AUTH)
    assert r.status_code == 200 and r.get_json()["status"] == "expired"
    assert api.get(f"/v1/verifications/{third}", headers=AUTH).get_json()["status"] == "expired"
    # An ended verification is replaced by a new one on the next request.
    assert api.post("/v1/verifications", json={"to": MOBILE}, headers=AUTH).get_json()["id"] != vid


def test_two_checks_of_the_right_code_at_once_approve_once(runtime):
    settings = runtime.settings
    verdicts = []
    for _ in range(5):
        v = verify.create(
            runtime.conn,
            settings,
            api_key="tester",
            mobile=MOBILE,
            account="default",
            length=6,
            valid_for=600,
            template="{code}",
            reference="",
            now=time.time(),
            replace=(runtime.conn.get(schema.verification_index_key("tester", MOBILE)) or b"").decode(),
        )
        assert v is not None
        code = verify.code_for(settings.verify_key, v.nonce, 6)
        barrier = threading.Barrier(8)
        results: list[verify.Verdict] = []

        def check(v: Verification, code: str, barrier: threading.Barrier, results: list[verify.Verdict]) -> None:
            barrier.wait()
            results.append(verify.check(runtime.conn, settings, v, code, time.time()))

        threads = [threading.Thread(target=check, args=(v, code, barrier, results)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        verdicts.append(sum(r.closed_now and r.status == "approved" for r in results))
    assert verdicts == [1] * 5


def test_a_send_a_cap_suppresses_is_a_429_and_takes_no_send(settings_env, runtime):
    api = create_app(settings_from_env({**settings_env, "SMSGW_MOBILE_CAPS_HIGH": "1/60"})).test_client()
    assert api.post("/v1/verifications", json={"to": MOBILE}, headers=AUTH).status_code == 201
    r = api.post("/v1/verifications", json={"to": MOBILE}, headers=AUTH)
    assert r.status_code == 429 and "frequency_cap" in r.get_json()["detail"] and r.headers["Retry-After"] == "60"
    vid = runtime.conn.get(schema.verification_index_key("tester", MOBILE)).decode()
    assert Verification.load(runtime.conn, vid).sends == 1


def test_a_send_over_its_cap_is_checked_inside_its_accept_and_charges_nothing(settings_env, runtime):
    env = {**settings_env, "SMSGW_MOBILE_CAPS_HIGH": "1/60", "SMSGW_KEY_TESTER_DAILY": "3"}
    api = create_app(settings_from_env(env)).test_client()
    assert api.post("/v1/verifications", json={"to": "13700137000"}, headers=AUTH).status_code == 201  # warm

    def evalsha() -> int:
        return int(runtime.conn.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    before = evalsha()
    assert api.post("/v1/verifications", json={"to": MOBILE}, headers=AUTH).status_code == 201
    assert evalsha() - before == 1  # its cap and its accept in one script (they were two)
    stored = len(list(runtime.conn.scan_iter(match="sg:m:*")))
    r = api.post("/v1/verifications", json={"to": MOBILE}, headers=AUTH)
    assert r.status_code == 429 and "frequency_cap" in r.get_json()["detail"]
    assert len(list(runtime.conn.scan_iter(match="sg:m:*"))) == stored  # nothing stored
    assert api.get("/v1/usage", headers=AUTH).get_json()["limits"]["daily_parts_left"] == 1  # its part went back


def test_a_reported_use_counts_once_and_only_for_the_keys_own_message(api, two_keys, runtime, simulator):
    mid = api.post("/v1/messages", json={"to": [MOBILE], "text": "码 1234", "priority": "high"}, headers=AUTH)
    mid = mid.get_json()["id"]
    drain(runtime)
    assert two_keys.post(f"/v1/messages/{mid}/conversion", headers=THEIRS).status_code == 404
    assert api.post(f"/v1/messages/{mid}/conversion", headers=AUTH).get_json() == {"id": mid, "counted": True}
    assert api.post(f"/v1/messages/{mid}/conversion", headers=AUTH).get_json() == {"id": mid, "counted": False}
    minute = int(time.time() // 60)
    used = sum(int(runtime.conn.hget(schema.conv_key("default", m), "u") or 0) for m in (minute - 1, minute))
    sent = sum(int(runtime.conn.hget(schema.conv_key("default", m), "s") or 0) for m in (minute - 1, minute))
    assert used == 1 and sent == 1


# -- conversion ----------------------------------------------------------------------------------


def _minutes(conn, account: str, now: float, ago: range, sent: int, used: int) -> None:
    for back in ago:
        key = schema.conv_key(account, int(now // 60) - back)
        conn.hset(key, mapping={"s": sent, "u": used})


@pytest.fixture
def failover_settings(settings_env, redis_conn):
    env = {
        **settings_env,
        "SMSGW_ACCOUNTS": "backup",
        "SMSGW_ACCOUNT_BACKUP_URL": settings_env["SMSGW_PROVIDER_URL"],
        "SMSGW_ACCOUNT_BACKUP_UID": "test",
        "SMSGW_ACCOUNT_BACKUP_PASSWORD": "s3cret+%pass",
        "SMSGW_FAILOVER": "backup",
        "SMSGW_FAILBACK_SECONDS": "0",
    }
    return settings_from_env(env)


def test_a_drop_in_conversion_moves_codes_to_the_backup_and_back(redis_conn, failover_settings):
    settings, conn, now = failover_settings, redis_conn, time.time()
    _minutes(conn, "default", now, range(16, 300), sent=10, used=8)  # baseline: 80 % used
    _minutes(conn, "default", now, range(1, 16), sent=10, used=8)
    assert not verify.check_conversion(conn, settings, "default", now)
    assert routes.route(conn, settings, "default", "high", now) == "default"
    _minutes(conn, "default", now, range(1, 16), sent=10, used=3)  # 30 %: codes stopped arriving
    assert verify.check_conversion(conn, settings, "default", now)
    state = AccountState.load(conn, "default")
    assert state.conversion_low == 1 and state.conversion_recent == pytest.approx(0.3)
    assert routes.route(conn, settings, "default", "high", now) == "backup"
    assert routes.route(conn, settings, "default", "normal", now) == "default"  # only codes move
    assert conn.hget(schema.ALERTS, "conversion_dropped") == b"1"
    _minutes(conn, "default", now, range(1, 16), sent=10, used=8)
    assert not verify.check_conversion(conn, settings, "default", now)
    assert routes.route(conn, settings, "default", "high", now + 1) == "default"


def test_too_few_codes_say_nothing(redis_conn, failover_settings):
    conn, now = redis_conn, time.time()
    _minutes(conn, "default", now, range(16, 300), sent=10, used=8)
    _minutes(conn, "default", now, range(1, 2), sent=5, used=0)  # 5 codes, none used: noise
    assert not verify.check_conversion(conn, failover_settings, "default", now)
