"""The API against its own OpenAPI document, fuzzed by schemathesis: every answer must be one
the document declares (status, content type, schema), invalid requests must be refused, and
nothing may answer 500.

One check is left out, ``positive_data_acceptance``: a request can be valid JSON Schema and still
be refused with 422 by rules no schema can state (a mobile that is not a mainland mobile, a
character the account's charset lacks, a personalised text too long once rendered)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import API_KEY

pytestmark = pytest.mark.slow


def test_api_conforms_to_its_openapi(app, simulator):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def conforms(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {API_KEY}"}
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        conforms()
        checked.append(operation.label)
    assert "POST /v1/messages" in checked and len(checked) >= 8
