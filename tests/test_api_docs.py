"""The API reference: ``/docs`` served from the package (nothing fetched from elsewhere), every
route in it, real answers that match what it says, and every setting the code reads documented
in ``docs/configuration.md``."""

from __future__ import annotations

import html
import re
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.openapi import document
from tests.conftest import AUTH, drain
from workers.lifecycle import API_STATES

ROOT = Path(__file__).resolve().parent.parent


def test_docs_answers_without_the_network_and_names_every_route_and_state(api):
    r = api.get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert "<script" not in page  # nothing to fetch, nothing to run
    external = re.findall(r"""(?:src|href)=["'](?:https?:)?//""", page)
    assert external == [], external
    for path in document()["paths"]:
        assert path in page, path
    for state, meaning in API_STATES.items():
        assert f"<code>{state}</code>" in page and meaning in html.unescape(page)


def test_every_route_the_app_serves_is_in_the_reference(app):
    documented = set(document()["paths"])
    served = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        if path.startswith("/v1/") or path in ("/healthz", "/readyz"):
            served.add(path)
    assert served - documented == set(), served - documented
    assert documented - {"/healthz", "/readyz"} <= served | {"/healthz", "/readyz"}


def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = document()
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:smsgw", resource)
    schema = {"$ref": f"urn:smsgw#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_real_answers_match_the_documented_schemas(api, runtime, simulator):
    """Answers after real traffic (plain, personalised, a reply-less report, a verification)
    validate against the schemas /openapi.json and /docs publish."""
    plain = api.post("/v1/messages", json={"to": ["13800138000"], "text": "你好", "reference": "r1"}, headers=AUTH)
    body = {
        "template": "{name}您好，验证码{code}",
        "recipients": [{"to": "13900139000", "vars": {"name": "王", "code": "1"}}],
    }
    personal = api.post("/v1/messages", json=body, headers=AUTH)
    verification = api.post("/v1/verifications", json={"to": "13700137000"}, headers=AUTH)
    for r, name in ((plain, "Accepted"), (personal, "Accepted"), (verification, "Verification")):
        _validator(name).validate(r.get_json())
    drain(runtime)
    mid, pid = plain.get_json()["id"], personal.get_json()["id"]
    answers = {
        "Message": [api.get(f"/v1/messages/{m}", headers=AUTH).get_json() for m in (mid, pid)],
        "MessagePage": [api.get("/v1/messages", headers=AUTH).get_json()],
        "RecipientPage": [api.get(f"/v1/messages/{mid}/recipients", headers=AUTH).get_json()],
        "ReplyPage": [api.get("/v1/replies", headers=AUTH).get_json()],
        "Usage": [api.get("/v1/usage", headers=AUTH).get_json()],
        "SuppressionPage": [api.get("/v1/suppressions", headers=AUTH).get_json()],
        "Balance": [api.get("/v1/balance", headers=AUTH).get_json()],
    }
    for name, bodies in answers.items():
        for answer in bodies:
            _validator(name).validate(answer)
    shown = answers["Message"][1]
    assert shown["template"] == "{name}您好，验证码{code}" and shown["text"] is None  # the caller's, not {value0}
    assert shown["created_at"].endswith("+00:00") and "T" in shown["created_at"]


def test_every_setting_the_code_reads_is_in_the_configuration_reference():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    sources = [*ROOT.glob("gateway/**/*.py"), *ROOT.glob("workers/**/*.py"), *ROOT.glob("devkit/*.py")]
    sources += [ROOT / "docker" / "entrypoint.sh"]
    names: set[str] = set()
    for path in sources:
        names |= set(re.findall(r"SMSGW_[A-Z0-9_]*[A-Z0-9_]", path.read_text()))
    # Families documented by their pattern: per account, per key, per priority.
    names -= {"SMSGW_ACCOUNT_", "SMSGW_KEY_", "SMSGW_"}
    missing = [name for name in sorted(names) if not _documented(name, reference)]
    assert not missing, missing
    assert len(names) > 60


def _documented(name: str, reference: str) -> bool:
    """Named in full, or as a family's row writes it: ``SMSGW_FAILOVER_SLOW_SHARE`` / ``_SLOW_WINDOW``
    (a prefix the code completes, like ``SMSGW_MOBILE_CAPS_``, must appear as such)."""
    if name in reference:
        return True
    segments = name.split("_")
    for line in reference.splitlines():
        for i in range(2, len(segments)):
            head, tail = "_".join(segments[:i]), "_" + "_".join(segments[i:])
            if f"`{head}" in line and f"`{tail}`" in line:
                return True
    return False
