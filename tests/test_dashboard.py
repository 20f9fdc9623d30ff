"""The operator dashboards: auth, CSRF, rq-dashboard's requeue, resume from the page."""

from __future__ import annotations

import base64

import pytest
from rq.job import Job

from tests.conftest import AUTH, carrier, drain, sim_admin, sim_submissions
from workers import accounts
from workers.settings import settings_from_env
from workers.storage.schema import Chunk

OP = {"Authorization": "Basic " + base64.b64encode(b"operator:op-pass").decode()}


@pytest.fixture
def op_app(settings_env, runtime):
    from gateway import create_app

    app = create_app(settings_from_env({**settings_env, "SMSGW_OPERATOR_PASSWORD": "op-pass"}))
    app.testing = True
    return app


def test_create_app_twice_is_fine(op_app, settings_env):
    from gateway import create_app

    second = create_app(settings_from_env({**settings_env, "SMSGW_OPERATOR_PASSWORD": "op-pass"}))
    assert second.test_client().get("/dashboard/rq/", headers=OP).status_code == 200
    assert op_app.test_client().get("/dashboard/rq/", headers=OP).status_code == 200


@pytest.mark.parametrize(
    "path", ["/dashboard/", "/dashboard/rq/", "/dashboard/rq/0/data/queues.json", "/admin/accounts"]
)
def test_dashboards_refuse_anonymous_and_api_keys(op_app, path):
    client = op_app.test_client()
    assert client.get(path).status_code == 401
    assert client.get(path, headers=AUTH).status_code == 401
    assert client.get(path, headers=OP).status_code == 200


def test_rq_dashboard_requeue_needs_post_and_same_origin(op_app):
    client = op_app.test_client()
    assert client.get("/dashboard/rq/requeue/smsgw-normal", headers=OP).status_code == 405
    evil = {**OP, "Origin": "http://evil.example"}
    assert client.post("/dashboard/rq/requeue/smsgw-normal", headers=evil).status_code == 403
    ours = {**OP, "Origin": "http://localhost"}
    assert client.post("/dashboard/rq/requeue/smsgw-normal", headers=ours).status_code == 200


def test_requeued_submitted_chunk_sends_nothing(op_app, runtime, simulator):
    api = op_app.test_client()
    mid = api.post("/v1/messages", json={"to": ["13800138000"], "text": "once"}, headers=AUTH).get_json()["id"]
    drain(runtime)
    batch, n = carrier(runtime.conn, mid).decode().rsplit(":", 1)
    job_id = Chunk.load(runtime.conn, batch, int(n)).job
    # fail the finished job's record as RQ would, then requeue it through rq-dashboard
    job = Job.fetch(job_id, connection=runtime.conn)
    from rq.registry import FailedJobRegistry

    FailedJobRegistry(job.origin, connection=runtime.conn).add(job, exc_string="simulated")
    r = api.post(f"/dashboard/rq/job/{job_id}/requeue", headers={**OP, "Origin": "http://localhost"})
    assert r.status_code == 200
    drain(runtime)
    assert len(sim_submissions(simulator)) == 1


def test_overview_shows_live_numbers_and_resume_works(op_app, runtime, simulator):
    api = op_app.test_client()
    api.post("/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "x"}, headers=AUTH)
    drain(runtime)
    sim_admin(simulator, "config", frozen=True)
    api.post("/v1/messages", json={"to": ["13700137000"], "text": "y"}, headers=AUTH)
    drain(runtime)
    page = api.get("/dashboard/", headers=OP).get_data(as_text=True)
    assert 'id="submissions">1<' in page and 'id="recipients">2<' in page
    assert "account frozen" in page and 'id="resume-default"' in page
    sim_admin(simulator, "config", frozen=False)
    r = api.post("/dashboard/accounts/default/resume", headers={**OP, "Origin": "http://localhost"})
    assert r.status_code == 303
    assert accounts.state(runtime.conn, "default").state == "active"
    drain(runtime)
    assert len(sim_submissions(simulator)) == 2


def test_requeue_failed_chunk_from_the_page(op_app, runtime, simulator):
    api = op_app.test_client()
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[5])
    mid = api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH).get_json()["id"]
    drain(runtime)
    batch, n = carrier(runtime.conn, mid).decode().rsplit(":", 1)  # the submission that carried it
    page = api.get("/dashboard/", headers=OP).get_data(as_text=True)
    assert batch in page and "Requeue" in page
    r = api.post(f"/dashboard/chunks/{batch}/{n}/requeue", headers={**OP, "Origin": "http://localhost"})
    assert r.status_code == 303
    drain(runtime)
    view = api.get(f"/v1/messages/{mid}", headers=AUTH).get_json()
    assert view["status"] in ("submitted", "delivered") and len(sim_submissions(simulator)) == 1


def test_the_overview_draws_the_last_hour_as_svg(op_app, runtime, simulator):
    api = op_app.test_client()
    for i in range(3):
        api.post("/v1/messages", json={"to": [f"1390013900{i}"], "text": "x"}, headers=AUTH)
    drain(runtime)
    html = api.get("/dashboard/", headers=OP).get_data(as_text=True)
    charts = html.split('id="charts"')[1].split("</div>")[0]
    assert charts.count("<svg") == 4 and 'data-series="accepted"' in charts
    assert "accepted 3" in charts  # the legend sums the hour
    assert "http" not in charts.replace("http://www.w3.org/2000/svg", "")  # no outside asset
