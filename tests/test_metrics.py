"""/metrics parsed by prometheus-client's own parser; /readyz follows Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from devkit.redis_server import RedisServer
from devkit.run import wait_http
from tests.conftest import API_KEY, AUTH, drain
from workers import maintenance
from workers.settings import settings_from_env


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_match_what_was_sent(api, runtime, simulator):
    for _ in range(3):
        assert (
            api.post("/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "x"}, headers=AUTH).status_code
            == 202
        )
    api.post("/v1/messages", json={"to": ["bad"], "text": "x"}, headers=AUTH)
    drain(runtime)
    maintenance.run_once(runtime)  # refreshes the balance of active accounts
    samples = scrape(api.get("/metrics").get_data(as_text=True))
    assert value(samples, "smsgw_http_requests_total", route="/v1/messages", method="POST", status="202") == 3
    assert value(samples, "smsgw_http_requests_total", route="/v1/messages", method="POST", status="422") == 1
    assert value(samples, "smsgw_provider_calls_total", account="default", endpoint="post_send_md5", code="0") == 3
    assert value(samples, "smsgw_provider_call_seconds_count", endpoint="post_send_md5") == 3
    assert value(samples, "smsgw_recipients_total", state="submitted") == 6
    assert value(samples, "smsgw_jobs_total", job="send", outcome="submitted") == 3
    assert value(samples, "smsgw_queue_depth", queue="smsgw-normal") == 0
    assert value(samples, "smsgw_account_held", account="default", reason="") == 0
    assert value(samples, "smsgw_account_balance", account="default") == 1_000_000 - 6


def test_readyz_follows_redis(tmp_path, settings_env):
    from gateway import create_app

    server = RedisServer(str(tmp_path / "r")).start()
    try:
        app = create_app(settings_from_env({**settings_env, "SMSGW_REDIS_URL": server.url}))
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        server.stop()
        r = client.get("/readyz")
        assert r.status_code == 503 and r.get_json()["status"] == "unavailable"
        assert client.get("/healthz").status_code == 200
        server.start()
        assert client.get("/readyz").status_code == 200
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_metrics_add_up_across_gunicorn_workers(settings_env, tmp_path):
    port = free_port()
    env = {**os.environ, **settings_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "gateway.cli", "api", "--bind", f"127.0.0.1:{port}", "--workers", "3"]
    api = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", timeout=30)  # a read timeout while workers boot is waited out too
        session = requests.Session()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        for _ in range(60):
            assert (
                session.post(
                    f"{base}/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=headers
                ).status_code
                == 202
            )
        samples = scrape(requests.get(f"{base}/metrics", timeout=5).text)
        assert value(samples, "smsgw_http_requests_total", route="/v1/messages", method="POST", status="202") == 60
    finally:
        api.terminate()
        api.wait(timeout=30)


def test_metrics_are_served_on_their_own_port_only(settings_env, runtime):
    """The production default (SMSGW_METRICS_BIND=0.0.0.0:9090): the API's port answers
    /metrics with 404, and the metrics port answers nothing but /metrics and /healthz."""
    from gateway import create_app

    env = {k: v for k, v in settings_env.items() if k != "SMSGW_METRICS_BIND"}
    client = create_app(settings_from_env(env)).test_client()
    metrics_port = {"SERVER_PORT": "9090"}
    public = client.get("/metrics", environ_overrides={"SERVER_PORT": "8080"})
    assert public.status_code == 404 and "9090" in public.get_json()["detail"]
    assert client.get("/metrics", environ_overrides=metrics_port).status_code == 200
    assert client.get("/healthz", environ_overrides=metrics_port).status_code == 200
    assert client.get("/v1/messages", headers=AUTH, environ_overrides=metrics_port).status_code == 404
    assert client.get("/v1/messages", headers=AUTH, environ_overrides={"SERVER_PORT": "8080"}).status_code == 200


@pytest.mark.slow
def test_smsgw_api_binds_the_metrics_port_beside_the_api(settings_env, tmp_path):
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        **settings_env,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "SMSGW_METRICS_BIND": f"127.0.0.1:{metrics}",
    }
    command = [sys.executable, "-m", "gateway.cli", "api", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    api = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        wait_http(f"http://127.0.0.1:{metrics}/healthz", timeout=30)
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 404
        scraped = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5)
        assert scraped.status_code == 200 and "smsgw_workers" in scraped.text
    finally:
        api.terminate()
        api.wait(timeout=30)


def test_request_series_stay_bounded_whatever_methods_clients_invent(api, runtime):
    import random
    import string

    rng = random.Random(7)
    for _ in range(300):
        method = "".join(rng.choices(string.ascii_uppercase, k=8))
        api.open("/v1/messages", method=method, headers=AUTH)
    samples = scrape(api.get("/metrics").get_data(as_text=True))
    methods = {dict(labels)["method"] for name, labels in samples if name == "smsgw_http_requests_total"}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods
