"""``GET /openapi.json``: the API described from the same pydantic models that validate it."""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify

from gateway.validation import MessageRequest, SensitiveWordsRequest
from gateway.verifications import CheckRequest, VerificationRequest
from workers.storage.schema import VerificationState

bp = Blueprint("openapi", __name__)

PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problems(*codes: int) -> dict[str, Any]:
    return {
        str(c): {
            "description": "a problem",
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
    schemas["Accepted"] = {
        "type": "object",
        "required": ["id", "status", "recipients", "chunks_planned"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": ["accepted", "scheduled"]},
            "account": {"type": "string"},
            "priority": {"type": "string"},
            "reference": {"type": ["string", "null"]},
            "recipients": {"type": "object"},
            "chunks_planned": {"type": "integer"},
            "send_at": {"type": ["string", "null"]},
        },
    }
    schemas["Message"] = {"type": "object", "required": ["id", "status", "chunks"]}
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
            "description": "Outbound SMS for mainland China",
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
                    "responses": {**_ok({"type": "object"}), **auth_problems, **_problems(400)},
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
                        **_ok({"type": "object"}),
                        **auth_problems,
                        **_problems(404, 409),
                    },
                },
            },
            "/v1/messages/{mid}/recipients": {
                "parameters": [MID],
                "get": {
                    "summary": "Recipients, paged",
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
                        **_ok({"type": "object"}),
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
                    "responses": {**_ok({"type": "object"}), **auth_problems, **_problems(400, 404)},
                }
            },
            "/v1/usage": {
                "get": {
                    "summary": "This key's limits, what is left today, and its counters per day",
                    "parameters": [
                        {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                        {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
                    ],
                    "responses": {**_ok({"type": "object"}), **auth_problems, **_problems(400)},
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
                    "responses": {**_ok({"type": "object"}), **auth_problems, **_problems(400, 404)},
                },
                "post": {
                    "summary": "Add a mobile to the account's opt-out list",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["mobile"],
                                    "properties": {
                                        "mobile": {"type": "string"},
                                        "reason": {"type": "string"},
                                        "account": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        **_ok({"type": "object"}, "201", "added"),
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
                    "responses": {**_ok({"type": "object"}), **auth_problems, **_problems(404)},
                }
            },
            "/v1/balance": {
                "get": {
                    "summary": "The provider account's balance (cached 30 s)",
                    "parameters": [{"name": "account", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        **_ok({"type": "object"}),
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
                        **_ok({"type": "object"}),
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
            "/healthz": {"get": {"security": [], "responses": _ok({"type": "object"})}},
            "/readyz": {
                "get": {
                    "security": [],
                    "responses": {**_ok({"type": "object"}), "503": {"description": "Redis down"}},
                }
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())
