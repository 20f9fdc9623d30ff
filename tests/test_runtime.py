"""The runtime is looked up by entry points only; everything below takes it as arguments."""

from __future__ import annotations

import pytest
import redis

from gateway import create_app
from tests.conftest import TEST_ENV, make_settings
from workers.runtime import install


@pytest.fixture
def no_smsgw_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("SMSGW_")]:
        monkeypatch.delenv(name)
    install(None)  # no process-global runtime either: only what is passed down


def test_resume_with_explicit_settings_and_no_environment(no_smsgw_env, redis_server, redis_conn, simulator):
    """Regression: resuming held chunks used to fall back to a runtime built from os.environ,
    so with explicit settings and no SMSGW_REDIS_URL it raised after marking the account
    active, and its chunks stayed held for good (the sweeper skips held chunks)."""
    settings = make_settings(
        redis_server.url, SMSGW_PROVIDER_URL=simulator.api_url, SMSGW_OPERATOR_PASSWORD="operator-pass-123"
    )
    app = create_app(settings)
    api = app.test_client()
    auth = {"Authorization": f"Bearer {TEST_ENV['SMSGW_API_KEYS'].partition(':')[2]}"}
    operator = {"Authorization": "Basic " + __import__("base64").b64encode(b"operator:operator-pass-123").decode()}

    assert api.post("/admin/accounts/default/hold", headers=operator).status_code == 200
    mid = api.post("/v1/messages", json={"to": ["13800138000"], "text": "held"}, headers=auth).get_json()["id"]
    from rq import Queue, SimpleWorker

    from workers.queues import WORKER_QUEUES

    conn = redis.Redis.from_url(redis_server.url)
    queues = [Queue(q, connection=conn) for q in WORKER_QUEUES]
    # A worker process has its own runtime (its entry point installs it); the API process has none.
    from workers import coalesce
    from workers.runtime import Runtime

    worker_runtime = Runtime.from_settings(settings)
    install(worker_runtime)
    coalesce.flush_due(worker_runtime, now=float("inf"))  # what a worker's coalescer does
    SimpleWorker(queues, connection=conn).work(burst=True, logging_level="WARNING")
    install(None)
    chunk = api.get(f"/v1/messages/{mid}", headers=auth).get_json()["chunks"][0]
    assert chunk["state"] == "held"

    answer = api.post("/admin/accounts/default/resume", headers=operator)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["resumed_chunks"] == 1
    assert api.get(f"/v1/messages/{mid}", headers=auth).get_json()["chunks"][0]["state"] == "pending"
    assert sum(q.count for q in queues) == 1


def test_freezing_the_startup_heap_takes_what_is_alive_out_of_the_collectors_walk():
    """In a process of its own, as a worker or gunicorn's hook calls it (here it would freeze the
    test runner's heap, and collect what earlier tests left)."""
    import subprocess
    import sys

    code = (
        "import gc, weakref, workers.worker\n"
        "from workers.runtime import freeze_startup_heap\n"
        "class Node: pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"  # a cycle only the collector frees
        "gone = weakref.ref(a)\n"
        "del a, b\n"
        "n = freeze_startup_heap()\n"
        "print(n, gc.get_freeze_count(), int(gone() is None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    frozen, count, collected = (int(v) for v in out.stdout.split())
    assert frozen == count > 10_000  # a worker's modules, at least
    assert collected == 1  # garbage is collected first, not frozen for the life of the process
