"""``GET /openapi.json``: the API described from the same pydantic models that validate it."""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify, render_template

from gateway.api_schemas import RESPONSES
from gateway.validation import MessageRequest, SensitiveWordsRequest
from gateway.verifications import CheckRequest, VerificationRequest
from workers.lifecycle import API_STATES
from workers.storage.schema import VerificationState

bp = Blueprint("openapi", __name__)

PROBLEM = {"$ref": "#/components/schemas/Problem"}


#: What each error status means across the API (the problem's detail says the particular).
PROBLEM_MEANINGS = {
    400: "malformed: JSON that does not parse, duplicate keys, a bad query",
    401: "no API key, or not a known one",
    404: "not found, or not this key's",
    409: "conflict: an Idempotency-Key reused with another body, nothing left to cancel, a race",
    413: "the body is over SMSGW_MAX_BODY_BYTES (the detail says the limit)",
    415: "send Content-Type: application/json",
    422: "invalid: one entry per problem, each with its JSON pointer",
    429: "too many: the key's rate or quota, a mobile's cap, a verification's sends (Retry-After)",
    502: "the provider did not answer or refused",
    503: "storage is away or full: nothing was stored (or, when it says so, the outcome is unknown)",
}


def _problems(*codes: int) -> dict[str, Any]:
    return {
        str(c): {
            "description": PROBLEM_MEANINGS.get(c, "a problem"),
            "content": {"application/problem+json": {"schema": PROBLEM}},
        }
        for c in codes
    }


def _ok(schema: dict[str, Any], code: str = "200", description: str = "ok") -> dict[str, Any]:
    return {code: {"description": description, "content": {"application/json": {"schema": schema}}}}


MID = {"name": "mid", "in": "path", "required": True, "schema": {"type": "string"}}
VERIFICATION_STATES = [str(s) for s in VerificationState]


def _body(model: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}


@cache
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (MessageRequest, SensitiveWordsRequest, VerificationRequest, CheckRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    # Two shapes, never mixed: the model's validator says so, the document says it with oneOf.
    base = schemas["MessageRequest"]
    common = {k: v for k, v in base["properties"].items() if k not in ("to", "text", "template", "recipients")}
    schemas["MessageRequest"] = {
        "description": base.get("description", ""),
        "oneOf": [
            {
                "title": "PlainMessage",
                "type": "object",
                "additionalProperties": False,
                "required": ["to", "text"],
                "properties": {
                    "to": {"type": "array", "items": {"type": "string", "maxLength": 32}, "minItems": 1},
                    "text": {"type": "string", "minLength": 1},
                    **common,
                },
            },
            {
                "title": "PersonalizedMessage",
                "type": "object",
                "additionalProperties": False,
                "required": ["template", "recipients"],
                "properties": {
                    "template": {"type": "string", "minLength": 1},
                    "recipients": {"type": "array", "items": {"$ref": "#/components/schemas/Recipient"}, "minItems": 1},
                    **common,
                },
            },
        ],
    }
    schemas["Problem"] = {
        "type": "object",
        "required": ["title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
    }
    schemas.update(RESPONSES)
    schemas["SuppressionRequest"] = {
        "type": "object",
        "required": ["mobile"],
        "properties": {
            "mobile": {"type": "string", "description": "a mainland mobile"},
            "reason": {"type": "string", "description": "why (kept with it, at most 200 characters)"},
            "account": {"type": "string", "description": "a named provider account (default: the default one)"},
        },
        "example": {"mobile": "13800138000", "reason": "asked by phone"},
    }
    schemas["Verification"] = {
        "type": "object",
        "description": "A verification: never its code",
        "required": ["id", "to", "status", "sends", "checks_left", "created_at", "expires_at"],
        "properties": {
            "id": {"type": "string"},
            "to": {"type": "string"},
            "status": {"type": "string", "enum": VERIFICATION_STATES},
            "account": {"type": "string"},
            "reference": {"type": ["string", "null"]},
            "sends": {"type": "integer", "description": "sends of the same code so far"},
            "checks_left": {"type": "integer", "description": "wrong codes it still takes before it is locked"},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "messages": {"type": "array", "items": {"type": "string"}, "description": "the message of each send"},
        },
        "example": {
            "id": "v19c1f2a8e4b3a1f2c3d4e5f6",
            "to": "13800138000",
            "status": "pending",
            "account": "default",
            "reference": "login-42",
            "sends": 1,
            "checks_left": 5,
            "created_at": "2026-12-05T02:00:00+00:00",
            "expires_at": "2026-12-05T02:10:00+00:00",
            "messages": ["19c1f2a8e4b1a2b3c4d5e6f7"],
        },
    }
    schemas["CheckResult"] = {
        "type": "object",
        "required": ["id", "to", "status", "checks_left"],
        "properties": {
            "id": {"type": "string"},
            "to": {"type": "string"},
            "status": {"type": "string", "enum": VERIFICATION_STATES},
            "checks_left": {"type": "integer"},
        },
        "example": {"id": "v19c1f2a8e4b3a1f2c3d4e5f6", "to": "13800138000", "status": "approved", "checks_left": 4},
    }
    auth_problems = _problems(401)
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageRequest"}}},
    }
    words_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SensitiveWordsRequest"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smsgw",
            "version": "1",
            "description": (
                "Outbound SMS for mainland China. Every error is application/problem+json (RFC 9457); "
                "every time is RFC 3339 in UTC. Message states: "
                + "; ".join(f"{state}: {meaning}" for state, meaning in API_STATES.items())
            ),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/messages": {
                "get": {
                    "summary": "This key's messages, newest first",
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": "string"}}
                        for n in ("reference", "mobile", "status", "since", "until", "cursor")
                    ]
                    + [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}],
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/MessagePage"}),
                        **auth_problems,
                        **_problems(400),
                    },
                },
                "post": {
                    "summary": "Send a plain or personalised message",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        }
                    ],
                    "requestBody": body,
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/Accepted"}, "202", "accepted"),
                        **auth_problems,
                        **_problems(400, 409, 413, 415, 422, 429, 503),
                    },
                },
            },
            "/v1/messages/{mid}": {
                "parameters": [MID],
                "get": {
                    "summary": "A message, its chunks and their history",
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/Message"}),
                        **auth_problems,
                        **_problems(404),
                    },
                },
                "delete": {
                    "summary": "Cancel what is not yet submitted",
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/Cancelled"}),
                        **auth_problems,
                        **_problems(404, 409),
                    },
                },
            },
            "/v1/messages/{mid}/recipients": {
                "parameters": [MID],
                "get": {
                    "summary": "Recipients, paged, each with its own state and report",
                    "parameters": [
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/RecipientPage"}),
                        **auth_problems,
                        **_problems(400, 404),
                    },
                },
            },
            "/v1/replies": {
                "get": {
                    "summary": "Replies (MO) to this key's own messages, newest first (404: message_id of another key)",
                    "parameters": [
                        {"name": "mobile", "in": "query", "schema": {"type": "string"}},
                        {"name": "account", "in": "query", "schema": {"type": "string"}},
                        {"name": "message_id", "in": "query", "schema": {"type": "string"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    ],
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/ReplyPage"}),
                        **auth_problems,
                        **_problems(400, 404),
                    },
                }
            },
            "/v1/usage": {
                "get": {
                    "summary": "This key's limits, what is left today, and its counters per day",
                    "parameters": [
                        {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                        {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
                    ],
                    "responses": {**_ok({"$ref": "#/components/schemas/Usage"}), **auth_problems, **_problems(400)},
                }
            },
            "/v1/suppressions": {
                "get": {
                    "summary": "The account's opt-out list (退订), paged",
                    "parameters": [
                        {"name": "account", "in": "query", "schema": {"type": "string"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    ],
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/SuppressionPage"}),
                        **auth_problems,
                        **_problems(400, 404),
                    },
                },
                "post": {
                    "summary": "Add a mobile to the account's opt-out list",
                    "requestBody": _body("SuppressionRequest"),
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/Suppression"}, "201", "added"),
                        **auth_problems,
                        **_problems(400, 404, 415, 422),
                    },
                },
            },
            "/v1/suppressions/{mobile}": {
                "delete": {
                    "summary": "Take a mobile off the opt-out list",
                    "parameters": [
                        {"name": "mobile", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "account", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        **_ok(
                            {
                                "type": "object",
                                "required": ["account", "mobile", "removed"],
                                "properties": {
                                    "account": {"type": "string"},
                                    "mobile": {"type": "string"},
                                    "removed": {"type": "boolean"},
                                },
                            }
                        ),
                        **auth_problems,
                        **_problems(404),
                    },
                }
            },
            "/v1/balance": {
                "get": {
                    "summary": "The provider account's balance (cached 30 s)",
                    "parameters": [{"name": "account", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/Balance"}),
                        **auth_problems,
                        **_problems(404, 502),
                    },
                }
            },
            "/v1/sensitive-words": {
                "post": {
                    "summary": "Words the provider would refuse (cached 5 min)",
                    "requestBody": words_body,
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/SensitiveWords"}),
                        **auth_problems,
                        **_problems(400, 404, 415, 422, 502),
                    },
                }
            },
            "/v1/verifications": {
                "post": {
                    "summary": "Send a verification code (a pending one for the mobile: the same code again)",
                    "requestBody": _body("VerificationRequest"),
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/Verification"}, "201", "a new verification, code sent"),
                        **_ok({"$ref": "#/components/schemas/Verification"}, "200", "the same code sent again"),
                        **auth_problems,
                        **_problems(400, 409, 415, 422, 429, 503),
                    },
                }
            },
            "/v1/verifications/check": {
                "post": {
                    "summary": "Check the code a user typed; approved once, locked after too many wrong ones",
                    "requestBody": _body("CheckRequest"),
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/CheckResult"}),
                        **auth_problems,
                        **_problems(400, 404, 415, 422),
                    },
                }
            },
            "/v1/verifications/{vid}": {
                "get": {
                    "summary": "A verification of this key",
                    "parameters": [{"name": "vid", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        **_ok({"$ref": "#/components/schemas/Verification"}),
                        **auth_problems,
                        **_problems(404),
                    },
                }
            },
            "/v1/messages/{mid}/conversion": {
                "parameters": [MID],
                "post": {
                    "summary": "Report that this message's code was used (counted once, for conversion)",
                    "responses": {
                        **_ok(
                            {
                                "type": "object",
                                "required": ["id", "counted"],
                                "properties": {"id": {"type": "string"}, "counted": {"type": "boolean"}},
                            }
                        ),
                        **auth_problems,
                        **_problems(404),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "summary": "The process answers",
                    "security": [],
                    "responses": _ok({"type": "object", "example": {"status": "ok"}}),
                }
            },
            "/readyz": {
                "get": {
                    "security": [],
                    "summary": "Redis takes writes (a load balancer's readiness check)",
                    "responses": {
                        **_ok({"type": "object", "example": {"status": "ok", "redis": "ok"}}),
                        "503": {"description": "Redis is away or refuses writes (full, read-only)"},
                    },
                }
            },
        },
    }


@bp.get("/docs")
def api_docs() -> str:
    """The API reference, rendered here from :func:`document` (no CDN, no script: it works
    offline and behind a firewall)."""
    doc = document()
    intro = doc["info"]["description"].split(" Message states:")[0]
    return render_template("api_docs.html", doc=doc, intro=intro, states=API_STATES)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())
