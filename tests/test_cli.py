"""The operator CLI against our Redis and the simulator."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.cli import cli
from tests.conftest import AUTH, carrier, drain, sim_admin, sim_submissions


def run(settings_env, *args: str):
    result = CliRunner().invoke(cli, list(args), env=settings_env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_failed_list_requeue_status_and_accounts(api, runtime, simulator, settings_env):
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[5])
    mid = api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH).get_json()["id"]
    drain(runtime)
    ref = carrier(runtime.conn, mid).decode()  # the batch that carried the one-recipient message
    [row] = json.loads(run(settings_env, "failed", "list"))
    assert (f"{row['message']}:{row['chunk']}", row["state"]) == (ref, "failed")
    assert json.loads(run(settings_env, "status", mid))["status"] == "failed"
    assert "requeued" in run(settings_env, "failed", "requeue", ref)
    assert "left alone" in run(settings_env, "failed", "requeue", ref)  # not failed any more
    drain(runtime)
    assert json.loads(run(settings_env, "status", mid))["status"] == "submitted"
    assert len(sim_submissions(simulator)) == 1
    assert "held" in run(settings_env, "accounts", "hold", "default", "--reason", "maintenance")
    assert json.loads(run(settings_env, "accounts", "list"))[0]["state"] == "held"
    assert "active" in run(settings_env, "accounts", "resume", "default")
    assert run(settings_env, "balance").strip() == "default: 999999"  # one recipient sent


def test_a_malformed_chunk_is_an_error_not_a_success(runtime, settings_env):
    for garbage in ("garbage", "1a2b:x", "zzzzzzzzzzzzzzzzzzzzzzz:0", ":0"):
        result = CliRunner().invoke(cli, ["failed", "requeue", garbage], env=settings_env)
        assert result.exit_code == 1 and "not a chunk" in result.output, (garbage, result.output)


def test_every_cli_error_is_one_line_naming_its_cause(settings_env, simulator, runtime):
    """The provider unreachable, Redis unreachable: one line, exit 1, never a traceback."""
    down = {**settings_env, "SMSGW_PROVIDER_URL": "http://127.0.0.1:9/api/", "SMSGW_PROVIDER_CONNECT_TIMEOUT": "1"}
    result = CliRunner().invoke(cli, ["balance"], env=down)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and "the provider: ConnectError" in result.output
    gone = {**settings_env, "SMSGW_REDIS_URL": "redis://127.0.0.1:9/0"}
    result = CliRunner().invoke(cli, ["accounts", "list"], env=gone)
    assert result.exit_code == 1 and "SMSGW_REDIS_URL: Redis is unreachable" in result.output
    assert result.output.strip().count("\n") == 0
