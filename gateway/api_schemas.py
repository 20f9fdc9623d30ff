"""What the API answers, as JSON Schema with examples: the response half of ``/openapi.json``
(requests come from the pydantic models that validate them). The suite fuzzes the API against
these (``tests/test_openapi_fuzz.py``), so a schema that drifts from an answer fails."""

from __future__ import annotations

from typing import Any

from workers.lifecycle import API_STATES
from workers.storage.schema import ChunkState, ReportState

STRING_OR_NULL = {"type": ["string", "null"]}
INTEGER = {"type": "integer"}
TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time", "description": "RFC 3339, UTC"}
MESSAGE_STATES = list(API_STATES)
RECIPIENT_STATES = [*(str(s) for s in ChunkState), *(s.label for s in ReportState), "pending", "suppressed"]


def _obj(required: list[str], properties: dict[str, Any], example: Any = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "required": required, "properties": properties, **extra}
    if example is not None:
        out["example"] = example
    return out


def _page(item: str, example: Any) -> dict[str, Any]:
    return _obj(
        ["items", "next_cursor"],
        {
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
            "next_cursor": {"type": ["string", "integer", "null"], "description": "pass as cursor for the next page"},
        },
        {"items": [example], "next_cursor": None},
    )


RECIPIENTS_SUMMARY = _obj(
    ["accepted", "duplicates_removed", "invalid", "suppressed"],
    {
        "accepted": {"type": "integer"},
        "duplicates_removed": {"type": "integer"},
        "invalid": {
            "type": "array",
            "items": {"type": "object"},
            "description": "{index, value} of each mobile refused",
        },
        "suppressed": {
            "type": "array",
            "items": {"type": "object"},
            "description": "{mobile, reason}: not sent, not charged",
        },
        "by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
)

CHUNK_EXAMPLE = {
    "index": 0,
    "linkid": "k7Q2mX9pL4vB8nR1tY6wZ3cD",
    "state": "submitted",
    "account": "default",
    "recipients": 1,
    "attempts": 1,
    "provider_code": 0,
    "provider_text": "提交成功",
    "error": None,
    "reason": None,
    "updated_at": "2026-12-05T02:00:00.412+00:00",
    "possible_duplicates": 0,
    "unconfirmed": False,
    "history": [{"at": "2026-12-05T02:00:00.301+00:00", "event": "submitting", "attempt": 1}],
}
MESSAGE_EXAMPLE = {
    "id": "19c1f2a8e4b1a2b3c4d5e6f",
    "status": "delivered",
    "account": "default",
    "priority": "normal",
    "reference": "order-42",
    "api_key": "shop",
    "billable_parts": 1,
    "text": "您的订单已发货",
    "template": None,
    "text_length": 7,
    "test": False,
    "flagged_words": [],
    "created_at": "2026-12-05T02:00:00.123+00:00",
    "send_at": None,
    "recipients": {
        "accepted": 1,
        "duplicates_removed": 0,
        "invalid": [],
        "suppressed": [],
        "by_state": {"delivered": 1},
    },
    "chunks": [CHUNK_EXAMPLE],
    "replies": [],
    "callbacks": {"events_sent": 0, "state": None, "events_dropped": 0, "attempts": []},
}
REPLY_EXAMPLE = {
    "id": "r19c1f2a8e4b1",
    "mobile": "13800138000",
    "text": "好的",
    "linkid": "k7Q2mX9pL4vB8nR1tY6wZ3cD",
    "message_id": "19c1f2a8e4b1a2b3c4d5e6f",
    "account": "default",
    "replied_at": "2026-12-05T02:03:10.000+00:00",
    "received_at": "2026-12-05T02:03:11.204+00:00",
}

RESPONSES: dict[str, Any] = {
    "Accepted": _obj(
        ["id", "status", "recipients", "chunks_planned"],
        {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": ["accepted", "scheduled", "suppressed"]},
            "account": {"type": "string"},
            "priority": {"type": "string", "enum": ["high", "normal", "bulk"]},
            "reference": STRING_OR_NULL,
            "recipients": RECIPIENTS_SUMMARY,
            "billable_parts": {"type": "integer", "description": "parts the operator bills, all recipients together"},
            "chunks_planned": {"type": "integer", "description": "provider submissions, estimated"},
            "send_at": TIME_OR_NULL,
            "valid_until": TIME_OR_NULL,
            "test": {"type": "boolean"},
        },
        {
            "id": "19c1f2a8e4b1a2b3c4d5e6f",
            "status": "accepted",
            "account": "default",
            "priority": "normal",
            "reference": "order-42",
            "recipients": {"accepted": 2, "duplicates_removed": 0, "invalid": [], "suppressed": []},
            "billable_parts": 2,
            "chunks_planned": 1,
            "send_at": None,
            "valid_until": None,
            "test": False,
        },
    ),
    "Chunk": _obj(
        ["index", "linkid", "state", "recipients"],
        {
            "index": {"type": "integer"},
            "linkid": {"type": "string", "description": "the provider submission's id: reports and replies carry it"},
            "state": {"type": "string", "enum": [str(s) for s in ChunkState]},
            "account": {"type": "string", "description": "the account that carries it (a backup's after a failover)"},
            "recipients": {"type": "integer"},
            "attempts": {"type": ["integer", "null"]},
            "provider_code": {"type": ["integer", "null"], "description": "the provider's answer code (0: accepted)"},
            "provider_text": STRING_OR_NULL,
            "error": STRING_OR_NULL,
            "reason": STRING_OR_NULL,
            "updated_at": TIME_OR_NULL,
            "possible_duplicates": {"type": "integer", "description": "high only: resent after an ambiguous call"},
            "unconfirmed": {
                "type": "boolean",
                "description": "normal/bulk: an ambiguous call no report confirmed, not resent (may not have gone out)",
            },
            "history": {"type": "array", "items": {"type": "object"}, "description": "one entry per step, with at"},
            "folded": {"type": "boolean", "description": "kept at rest in compact form: its history is gone"},
        },
        CHUNK_EXAMPLE,
    ),
    "Reply": _obj(
        ["id", "mobile", "text", "replied_at", "received_at"],
        {
            "id": {"type": "string"},
            "mobile": {"type": "string"},
            "text": {"type": "string"},
            "linkid": STRING_OR_NULL,
            "message_id": STRING_OR_NULL,
            "account": STRING_OR_NULL,
            "replied_at": TIME_OR_NULL,
            "received_at": TIME_OR_NULL,
        },
        REPLY_EXAMPLE,
    ),
    "Message": _obj(
        ["id", "status", "account", "priority", "created_at", "recipients", "chunks"],
        {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": MESSAGE_STATES},
            "account": {"type": "string"},
            "priority": {"type": "string", "enum": ["high", "normal", "bulk"]},
            "reference": STRING_OR_NULL,
            "api_key": {"type": "string"},
            "billable_parts": {"type": "integer"},
            "text": {"type": ["string", "null"], "description": "a plain text; [redacted] once dropped (high)"},
            "template": {"type": ["string", "null"], "description": "a personalised message's template, as sent"},
            "text_length": {"type": ["integer", "null"]},
            "test": {"type": "boolean"},
            "flagged_words": {"type": "array", "items": {"type": "string"}},
            "created_at": TIME,
            "send_at": TIME_OR_NULL,
            "recipients": RECIPIENTS_SUMMARY,
            "chunks": {"type": "array", "items": {"$ref": "#/components/schemas/Chunk"}},
            "replies": {"type": "array", "items": {"$ref": "#/components/schemas/Reply"}},
            "callbacks": _obj(
                ["events_sent", "state", "events_dropped", "attempts"],
                {
                    "events_sent": {"type": "integer"},
                    "state": STRING_OR_NULL,
                    "events_dropped": {"type": "integer"},
                    "attempts": {"type": "array", "items": {"type": "object"}},
                },
            ),
        },
        MESSAGE_EXAMPLE,
    ),
    "MessageSummary": _obj(
        ["id", "status", "priority", "recipients", "created_at"],
        {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": MESSAGE_STATES},
            "priority": {"type": "string"},
            "reference": STRING_OR_NULL,
            "recipients": {"type": "integer"},
            "created_at": TIME,
        },
        {
            "id": "19c1f2a8e4b1a2b3c4d5e6f",
            "status": "delivered",
            "priority": "normal",
            "reference": "order-42",
            "recipients": 1,
            "created_at": "2026-12-05T02:00:00.123+00:00",
        },
    ),
    "Recipient": _obj(
        ["mobile", "state"],
        {
            "mobile": {"type": "string"},
            "chunk": {"type": ["integer", "null"]},
            "linkid": STRING_OR_NULL,
            "state": {"type": "string", "enum": RECIPIENT_STATES},
            "operator_code": {"type": ["string", "null"], "description": "the operator's code (DELIVRD, UNDELIV, …)"},
            "reported_at": TIME_OR_NULL,
        },
        {
            "mobile": "13800138000",
            "chunk": 0,
            "linkid": "k7Q2mX9pL4vB8nR1tY6wZ3cD",
            "state": "delivered",
            "operator_code": "DELIVRD",
            "reported_at": "2026-12-05T02:00:05.000+00:00",
        },
    ),
    "Cancelled": _obj(
        ["id", "cancelled", "status"],
        {
            "id": {"type": "string"},
            "cancelled": _obj(
                ["chunks", "recipients"], {"chunks": {"type": "integer"}, "recipients": {"type": "integer"}}
            ),
            "status": {"type": "string", "enum": MESSAGE_STATES},
        },
        {"id": "19c1f2a8e4b1a2b3c4d5e6f", "cancelled": {"chunks": 1, "recipients": 2}, "status": "cancelled"},
    ),
    "Usage": _obj(
        ["api_key", "limits", "days"],
        {
            "api_key": {"type": "string"},
            "limits": {"type": "object", "description": "the key's rate and daily quota, and what is left today"},
            "days": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["day"],
                    "properties": {"day": {"type": "string", "format": "date"}},
                },
                "description": "one row a day (China time): requests, recipients, parts, states, verifications",
            },
        },
    ),
    "Suppression": _obj(
        ["mobile"],
        {
            "mobile": {"type": "string"},
            "reason": {"type": "string"},
            "source": {"type": "string", "description": "reply, csv, or api:<key>"},
            "at": TIME_OR_NULL,
        },
        {"mobile": "13800138000", "reason": "replied 'TD'", "source": "reply", "at": "2026-12-05T02:03:11.204+00:00"},
    ),
    "Balance": _obj(
        ["account", "balance"],
        {"account": {"type": "string"}, "balance": {"type": "string", "description": "as the provider answers it"}},
        {"account": "default", "balance": "99820"},
    ),
    "SensitiveWords": _obj(
        ["account", "words"],
        {"account": {"type": "string"}, "words": {"type": "array", "items": {"type": "string"}}},
        {"account": "default", "words": []},
    ),
}
RESPONSES["MessagePage"] = _page("MessageSummary", RESPONSES["MessageSummary"]["example"])
RESPONSES["RecipientPage"] = _page("Recipient", RESPONSES["Recipient"]["example"])
RESPONSES["ReplyPage"] = _page("Reply", REPLY_EXAMPLE)
RESPONSES["SuppressionPage"] = _obj(
    ["account", "items", "next_cursor"],
    {
        "account": {"type": "string"},
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Suppression"}},
        "next_cursor": {"type": ["integer", "null"]},
    },
)
