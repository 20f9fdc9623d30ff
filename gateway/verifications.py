"""``/v1/verifications``: smsgw generates, sends, resends and checks verification codes.

A service asks for a verification of a mobile and later checks what its user typed; it never
sees or stores the code. The code is sent as a ``high`` 点点通 message through the usual door
(signature, caps, content check, quota, validity, failover); how a code is kept out of every
store is ``workers.verify``'s docstring. The rules a service would otherwise write itself:

- one open verification per API key and mobile: asking again while it is pending resends the
  *same* code (users type the first one that arrives), at most ``SMSGW_VERIFY_MAX_SENDS`` sends;
- ``SMSGW_VERIFY_MAX_CHECKS`` wrong codes lock it until it expires, the right code included;
- the right code approves once: a second check finds no open verification (404);
- a use a service checks itself counts too: ``POST /v1/messages/{id}/conversion``.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from flask import Response, g, request
from pydantic import BaseModel, ConfigDict, Field

import gateway.messages as messages
from gateway.api import bp, guard, json_response, request_json
from gateway.context import runtime
from gateway.problems import Problem, validation_problem
from gateway.quotas import quotas
from gateway.validation import Accepted, MessageRequest, Recipient, check_message, parse_model
from workers import guardrails, verify
from workers.mobiles import normalise
from workers.settings import VALID_FOR_MAX
from workers.storage import schema
from workers.storage.schema import Message, Verification, VerificationState
from workers.times import rfc3339

_PLACEHOLDER = re.compile(r"\{(\w*)\}")


class VerificationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: str = Field(max_length=32, description="a mainland mobile; +86, spaces and dashes are fine")
    length: int = Field(6, ge=4, le=10, description="digits in the code")
    valid_for: int | None = Field(
        None, ge=30, le=VALID_FOR_MAX, description="seconds the code stays valid (default SMSGW_VERIFY_VALID_FOR)"
    )
    template: str | None = Field(
        None, min_length=1, max_length=500, description="the text: {code} once, {minutes} optional"
    )
    account: str | None = Field(None, max_length=64, description="a named provider account")
    reference: str | None = Field(None, max_length=128, description="your own id, echoed back")


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: str = Field(max_length=32)
    code: str = Field(min_length=1, max_length=10, pattern=r"^[0-9]+$", description="what the user typed")


@bp.post("/verifications")
def start_verification() -> Response:
    rt = runtime()
    conn, settings = rt.conn, rt.settings
    req = parse_model(VerificationRequest, request_json())
    mobile = _mobile(req.to)
    now = time.time()
    replace = ""
    current = verify.open_verification(conn, g.api_key.name, mobile)
    if current is not None:
        status = verify.status_of(current, now)
        if status == VerificationState.PENDING:
            return _resend(current, now)
        if status == VerificationState.FAILED:
            raise _locked(current, now)
        replace = current.id  # it ended: a new one takes its place
    valid_for = req.valid_for or settings.verify_valid_for
    template = _template(req.template or settings.verify_template, valid_for, "/template" if req.template else "")
    account = req.account or settings.default_account
    message = _message_request(template, mobile, req.length, account, req.reference, valid_for)
    accepted = check_message(message, settings)  # a 422 before anything is stored
    new = verify.create(
        conn,
        settings,
        api_key=g.api_key.name,
        mobile=mobile,
        account=account,
        length=req.length,
        valid_for=valid_for,
        template=template,
        reference=req.reference or "",
        now=now,
        replace=replace,
    )
    if new is None:  # another request for this mobile made one first: that one is resent
        current = verify.open_verification(conn, g.api_key.name, mobile)
        if current is None or verify.status_of(current, now) != VerificationState.PENDING:
            raise Problem(409, "Verification in progress", f"another request for {mobile} is starting one: retry")
        return _resend(current, now)
    _send(new, message, accepted)
    return json_response(view(new, now), 201, {"Location": f"{request.script_root}/v1/verifications/{new.id}"})


@bp.get("/verifications/<vid>")
def get_verification(vid: str) -> Response:
    v = Verification.load(runtime().conn, vid) if vid.startswith("v") and len(vid) <= 32 else None
    if v is None or v.api_key != g.api_key.name:
        raise Problem(404, "Not Found", f"no verification {vid}")
    return json_response(view(v, time.time()))


@bp.post("/verifications/check")
def check_verification() -> Response:
    rt = runtime()
    req = parse_model(CheckRequest, request_json())
    mobile = _mobile(req.to)
    v = verify.open_verification(rt.conn, g.api_key.name, mobile)
    if v is None:
        raise _none_open(mobile)
    verdict = verify.check(rt.conn, rt.settings, v, req.code, time.time())
    if verdict.status == VerificationState.APPROVED and not verdict.closed_now:
        raise _none_open(mobile)  # approved by another check just now: a code is used once
    if verdict.status == "missing":
        raise _none_open(mobile)
    return json_response({"id": v.id, "to": mobile, "status": verdict.status, "checks_left": verdict.checks_left})


@bp.post("/messages/<mid>/conversion")
def report_conversion(mid: str) -> Response:
    """The code this message carried was used (a service that checks codes itself says so):
    counted once, for the account's conversion."""
    rt = runtime()
    msg = Message.read(rt.conn, mid) if len(mid) <= 64 else None
    if msg is None or msg.api_key != g.api_key.name:
        raise Problem(404, "Not Found", f"no message {mid}")
    counted = verify.report_use(rt.conn, rt.settings, mid, msg.account, time.time())
    return json_response({"id": mid, "counted": counted})


def view(v: Verification, now: float) -> dict[str, Any]:
    """A verification as the API shows it: never its code."""
    status = verify.status_of(v, now)
    max_checks = runtime().settings.verify_max_checks
    return {
        "id": v.id,
        "to": v.mobile,
        "status": status,
        "account": v.account,
        "reference": v.reference or None,
        "sends": v.sends,
        "checks_left": 0 if status == VerificationState.FAILED else max(0, max_checks - v.checks),
        "created_at": _iso(v.created),
        "expires_at": _iso(v.expires),
        "messages": v.messages.split(";") if v.messages else [],
    }


def _resend(v: Verification, now: float) -> Response:
    """The same code again, under the same verification, for what is left of its validity."""
    left = math.floor(v.expires - now)
    message = _message_request(v.template, v.mobile, v.length, v.account, v.reference or None, max(1, left))
    _send(v, message, check_message(message, runtime().settings))
    return json_response(view(v, now), 200, {"Location": f"{request.script_root}/v1/verifications/{v.id}"})


def _send(v: Verification, req: MessageRequest, accepted: Accepted) -> None:
    """One send of the verification's code: a message through the usual door whose value is the
    code's token (``workers.verify.token``), never the code."""
    rt = runtime()
    conn, settings = rt.conn, rt.settings
    sends = verify.take_send(conn, settings, v.id)
    if not sends:
        raise Problem(
            429,
            "Too Many Sends",
            f"verification {v.id} was sent {settings.verify_max_sends} times; "
            f"check the code, or start again after it expires at {_iso(v.expires)}",
            headers={"Retry-After": str(max(1, math.ceil(v.expires - time.time())))},
        )
    mid = schema.new_message_id()
    try:
        caps = guard(accepted, req, settings, mid, defer=True)  # the cap checked inside the accept
        if not accepted.items:
            raise _not_sent(v, accepted.suppressed[0]["reason"] if accepted.suppressed else "suppressed")
        accepted.items = [f"{v.mobile},{verify.token(v.nonce, v.length)}"]
        try:
            messages.accept(
                rt,
                mid,
                accepted,
                priority="high",
                reference=v.reference or None,
                callback_url=None,
                key_name=g.api_key.name,
                chunk_size=settings.accounts[accepted.account].chunk_size,
                test=g.api_key.test,
                redact=True,
                valid_for=req.valid_for,
                caps=caps,
            )
        except messages.Capped:
            quotas().give_back(g.api_key, accepted.parts)  # nothing was stored: nothing is charged
            raise _not_sent(v, guardrails.FREQUENCY_CAP) from None
    except messages.NotAccepted:
        verify.give_back_send(conn, v.id)
        raise Problem(503, "Service Unavailable", "storage is unreachable; nothing was sent: retry") from None
    except messages.OutcomeUnknown:
        raise Problem(503, "Outcome unknown", f"storage did not answer; verification {v.id}: retry") from None
    except Exception:
        verify.give_back_send(conn, v.id)
        raise
    v.sends = sends
    verify.note_message(conn, v, mid)


def _not_sent(v: Verification, reason: str) -> Problem:
    caps = runtime().settings.mobile_caps.get("high") or ((1, 60),)
    return Problem(
        429,
        "Not Sent",
        f"the code was not sent to {v.mobile}: {reason} (SMSGW_MOBILE_CAPS_HIGH): resend later",
        headers={"Retry-After": str(min(seconds for _, seconds in caps))},
    )


def _message_request(
    template: str, mobile: str, length: int, account: str, reference: str | None, valid_for: int
) -> MessageRequest:
    """The code's message as a caller would have asked for it; the value is a stand-in of the
    code's length until the token replaces it (so parts, length and checks are the real ones)."""
    return MessageRequest.model_validate(
        {
            "template": template,
            "recipients": [Recipient(to=mobile, vars={"code": "0" * length})],
            "priority": "high",
            "account": account,
            "reference": reference,
            "valid_for": valid_for,
        }
    )


def _template(template: str, valid_for: int, pointer: str) -> str:
    """The template with ``{minutes}`` filled in; ``{code}`` once and nothing else in braces."""
    names = _PLACEHOLDER.findall(template)
    problems = []
    if names.count("code") != 1:
        problems.append("must hold {code} exactly once")
    if unknown := sorted(set(names) - {"code", "minutes"}):
        problems.append(f"may hold only {{code}} and {{minutes}}, not {', '.join('{' + n + '}' for n in unknown)}")
    if problems:
        where = pointer or "SMSGW_VERIFY_TEMPLATE"
        raise validation_problem([{"pointer": pointer or "/template", "detail": f"{where} {p}"} for p in problems])
    return template.replace("{minutes}", str(verify.minutes(valid_for)))


def _mobile(raw: str) -> str:
    mobile = normalise(raw)
    if mobile is None:
        raise validation_problem([{"pointer": "/to", "detail": f"not a mainland China mobile: {raw!r}"}])
    return mobile


def _none_open(mobile: str) -> Problem:
    detail = f"no open verification for {mobile} (approved, or never started): start one with POST /v1/verifications"
    return Problem(404, "Not Found", detail)


def _locked(v: Verification, now: float) -> Problem:
    return Problem(
        429,
        "Verification Locked",
        f"verification {v.id} failed after too many wrong codes; verify {v.mobile} again after {_iso(v.expires)}",
        headers={"Retry-After": str(max(1, math.ceil(v.expires - now)))},
    )


def _iso(ts: float) -> str:
    return rfc3339(ts) or ""
