"""The JSON API under ``/v1``: send, look up, cancel, balance, sensitive words."""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, Response, g, request, url_for

import gateway.messages as messages
from gateway.auth import authenticate
from gateway.context import runtime
from gateway.problems import Problem, validation_problem
from gateway.quotas import quotas, today_date, usage_rows
from gateway.validation import (
    Accepted,
    MessageRequest,
    SensitiveWordsRequest,
    charset_errors,
    check_message,
    parse_json,
    parse_model,
)
from workers import accounts, coalesce, guardrails, lifecycle, quiet, verify
from workers import provider as p
from workers.mobiles import normalise
from workers.runtime import Runtime
from workers.settings import Settings
from workers.storage import schema
from workers.storage.schema import Message
from workers.text import mobile_of

bp = Blueprint("api", __name__, url_prefix="/v1")

IDEMPOTENCY_WAIT = 5.0
BALANCE_CACHE_SECONDS = 30
WORDS_CACHE_SECONDS = 300


@bp.before_request
def require_key() -> None:
    g.api_key = authenticate(runtime().settings)
    if request.method == "POST" and request.endpoint == "api.create_message":
        quotas().take_request(g.api_key)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def read_body() -> bytes:
    """The whole body. Werkzeug stops a streamed (chunked) body at ``MAX_CONTENT_LENGTH``
    without a word, so one that reaches the limit is refused, never truncated and accepted."""
    data = request.get_data(cache=True)
    limit = runtime().settings.max_body_bytes
    if request.content_length is None and len(data) >= limit:
        raise Problem(413, "Content Too Large", f"the body reached the limit of {limit} bytes")
    return data


def request_json() -> Any:
    if request.mimetype != "application/json":
        raise Problem(415, "Unsupported Media Type", "send Content-Type: application/json")
    return parse_json(read_body(), runtime().settings.max_recipients)


@bp.post("/messages")
def create_message() -> Response:
    rt = runtime()
    conn, settings = rt.conn, rt.settings
    raw = read_body()
    idem = request.headers.get("Idempotency-Key")
    idem_key = fingerprint = None
    if idem is not None:
        if not 0 < len(idem) <= 255:
            raise Problem(400, "Bad Idempotency-Key", "1 to 255 characters")
        idem_key = schema.idempotency_key(g.api_key.name, hashlib.sha256(idem.encode()).hexdigest())
        fingerprint = hashlib.sha256(raw).hexdigest()
        existing = conn.get(idem_key)
        if existing is not None:
            return _replay(idem_key, existing, fingerprint)

    data = request_json()
    for name in ("to", "recipients"):
        # Before pydantic, whose per-item errors would grow with the list.
        given = data.get(name) if isinstance(data, dict) else None
        if isinstance(given, list) and len(given) > settings.max_recipients:
            detail = f"{len(given)} recipients; at most {settings.max_recipients} per request"
            raise validation_problem([{"pointer": f"/{name}", "detail": detail}])
    req = parse_model(MessageRequest, data)
    accepted = check_message(req, settings)
    due = accepted.send_at.timestamp() if accepted.send_at else time.time()  # validity runs from here
    window = settings.accounts[accepted.account].quiet_hours.get(req.priority)
    if (release := quiet.ends(window, due)) is not None:
        accepted.send_at = datetime.fromtimestamp(release, UTC)  # deferred to the window's end
    mid = schema.new_message_id()
    if idem_key is not None and fingerprint is not None:
        # Claimed before the guardrails: a concurrent twin with this key replays instead of
        # taking a second frequency-cap slot or quota.
        claim = json.dumps({"fp": fingerprint, "id": mid, "at": time.time()})
        if not conn.set(idem_key, claim, nx=True, ex=settings.idempotency_ttl):
            return _replay(idem_key, conn.get(idem_key) or b"{}", fingerprint)
    try:
        caps = guard(accepted, req, settings, mid, defer=True)
        body = _accept(
            rt,
            mid,
            accepted,
            caps,
            priority=req.priority,
            reference=req.reference,
            callback_url=req.callback_url,
            key_name=g.api_key.name,
            test=g.api_key.test,
            redact=req.redact,
            # An estimate at the configured size, free of a Redis round trip: the plan job cuts
            # the chunks, at the account's size then (lower if the provider once answered 3).
            chunk_size=settings.accounts[accepted.account].chunk_size,
            idempotency=(idem_key, fingerprint) if idem_key and fingerprint else None,
            valid_for=req.valid_for,
            valid_from=due,
        )
    except messages.OutcomeUnknown:
        # The claim stays: a retry with this key waits for it instead of accepting a twin.
        raise Problem(
            503,
            "Outcome unknown",
            f"storage did not answer; message {mid} may have been accepted: retry with the same Idempotency-Key",
            headers={"Retry-After": "5"},
        ) from None
    except Exception as e:
        if idem_key is not None:
            conn.delete(idem_key)
        if isinstance(e, messages.NotAccepted):
            raise Problem(503, "Service Unavailable", "storage is unreachable; nothing was accepted: retry") from None
        raise
    location = f"{request.script_root}/v1/messages/{mid}"  # url_for's answer, without its cost
    return json_response(body, 202, {"Location": location})


def guard(
    accepted: Accepted, req: MessageRequest, settings: Settings, mid: str, *, defer: bool = False
) -> guardrails.Caps | None:
    """The guardrails at the door: caps and opt-outs suppress recipients, the content check may
    refuse or flag, the key's daily quota may refuse (429).

    ``defer``: a one-recipient send that will wait in a coalescing pool (a verification code) has
    its cap checked inside its accept, one round trip where there were two: returned here for
    :func:`_accept`, after the content check and the quota (which a cap then gives back)."""
    test = g.api_key.test
    mobiles = [mobile_of(item) for item in accepted.items]
    at = accepted.send_at.timestamp() if accepted.send_at else None
    scope = {"account": accepted.account, "priority": req.priority, "ref": mid, "test": test}
    later = defer and not accepted.send_at and not test and coalesce.pooled(settings, req.priority, accepted.items)
    suppressed = guardrails.check(runtime().conn, settings, mobiles=mobiles, at=at, caps=not later, **scope)
    if suppressed:
        accepted.suppress({s.index for s in suppressed})
        accepted.suppressed = [{"mobile": s.mobile, "reason": s.reason} for s in suppressed]
    try:
        _content_and_quota(accepted, req, settings)
    except Problem:  # refused after all: the caps' slots go back
        if not later:
            guardrails.give_back(runtime().conn, mobiles=mobiles, **scope)
        raise
    if later and accepted.items:
        return guardrails.caps_for(settings, mobiles=mobiles, at=at, **scope)
    return None


def _accept(rt: Runtime, mid: str, accepted: Accepted, caps: guardrails.Caps | None, **options: Any) -> dict[str, Any]:
    """``messages.accept`` with the cap :func:`guard` deferred: over it, the message is stored
    with its recipient suppressed (``frequency_cap``, not charged: its parts go back to the
    quota), as a cap checked at the door would have."""
    try:
        return messages.accept(rt, mid, accepted, caps=caps, **options)
    except messages.Capped:
        parts = accepted.parts
        accepted.suppressed = [{"mobile": mobile_of(accepted.items[0]), "reason": guardrails.FREQUENCY_CAP}]
        accepted.suppress({0})
        quotas().give_back(g.api_key, parts)
        return messages.accept(rt, mid, accepted, **options)


def _content_and_quota(accepted: Accepted, req: MessageRequest, settings: Settings) -> None:
    if settings.content_check != "off":
        words = content_words(accepted.account, [req.text or req.template or "", *_variable_values(req)])
        if words and settings.content_check == "refuse":
            detail = f"the text holds words the channel refuses: {', '.join(words)}"
            pointer = (
                "/text" if req.text else "/template" if any(w in (req.template or "") for w in words) else "/recipients"
            )
            raise validation_problem([{"pointer": pointer, "detail": detail}])
        accepted.flagged = words
    quotas().take_parts(g.api_key, accepted.parts)


def _replay(idem_key: str, existing: bytes, fingerprint: str) -> Response:
    """Same key: same body gets the first answer, a different body 409. A first request still
    in flight is waited for briefly."""
    conn = runtime().conn
    deadline = time.monotonic() + IDEMPOTENCY_WAIT
    while True:
        record = json.loads(existing) if existing else {}
        if record.get("fp") != fingerprint:
            raise Problem(409, "Idempotency-Key reused", "this key was used with a different body")
        if "body" in record:
            location = url_for("api.get_message", mid=record["id"])
            return json_response(record["body"], 202, {"Location": location, "Idempotent-Replayed": "true"})
        settings = runtime().settings
        if time.time() - record.get("at", 0) > settings.redis_socket_timeout + settings.accept_settle_seconds + 5:
            # Past every fence and settle bound: the first request's transaction never committed.
            conn.delete(idem_key)
            raise Problem(409, "Request in progress", "retry: the first request with this key failed")
        if time.monotonic() > deadline:
            raise Problem(409, "Request in progress", "a request with this key is still being accepted")
        time.sleep(0.02)
        existing = conn.get(idem_key) or b""
        if not existing:  # the first request failed and released the key
            raise Problem(409, "Request in progress", "retry: the first request with this key failed")


def _own_message(mid: str) -> Message:
    msg = Message.read(runtime().conn, mid)
    if msg is None or msg.api_key != g.api_key.name:
        raise Problem(404, "Not Found", f"no message {mid}")
    return msg


@bp.get("/messages")
def list_messages() -> Response:
    """This key's messages, newest first: ``reference``, ``mobile``, ``status``, ``since`` and
    ``until`` (ISO 8601), ``cursor`` and ``limit`` (≤ 200)."""
    from datetime import datetime

    args = request.args
    try:
        limit = min(int(args.get("limit", "50")), 200)
        since = datetime.fromisoformat(args["since"]).timestamp() if args.get("since") else 0.0
        until = datetime.fromisoformat(args["until"]).timestamp() if args.get("until") else time.time() + 1
        cursor = args.get("cursor")
        if limit < 1 or (cursor is not None and not re.fullmatch(r"[0-9]{1,16}-[0-9]{1,16}", cursor)):
            raise ValueError
    except (ValueError, OverflowError):
        raise Problem(400, "Bad query", "since/until as ISO 8601 with an offset; 1 ≤ limit ≤ 200") from None
    mobile = normalise(args["mobile"]) if args.get("mobile") else None
    items, nxt = messages.list_messages(
        runtime().conn,
        g.api_key.name,
        reference=args.get("reference"),
        mobile=mobile or args.get("mobile"),
        status=args.get("status"),
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )
    return json_response({"items": items, "next_cursor": nxt})


@bp.get("/messages/<mid>")
def get_message(mid: str) -> Response:
    _own_message(mid)
    return json_response(messages.view(runtime().conn, mid))


@bp.get("/messages/<mid>/recipients")
def get_recipients(mid: str) -> Response:
    _own_message(mid)
    try:
        cursor = int(request.args.get("cursor", "0"))
        limit = min(int(request.args.get("limit", "100")), 1000)
        if cursor < 0 or limit < 1:
            raise ValueError
    except ValueError:
        raise Problem(400, "Bad paging", "cursor ≥ 0 and 1 ≤ limit ≤ 1000") from None
    items, nxt = messages.recipients(runtime().conn, mid, cursor, limit)
    return json_response({"items": items, "next_cursor": nxt})


@bp.delete("/messages/<mid>")
def cancel_message(mid: str) -> Response:
    _own_message(mid)
    result = lifecycle.cancel_message(runtime().conn, mid)
    if result is None:
        raise Problem(409, "Nothing to cancel", "every part of this message is already submitted or final")
    return json_response({"id": mid, "cancelled": result, "status": messages.view(runtime().conn, mid)["status"]})  # type: ignore[index]


@bp.get("/replies")
def replies() -> Response:
    """Replies to this key's messages, newest first, by mobile, account or message; ``cursor``
    pages on. Replies that match no message are for operators only (``/admin/replies``)."""
    message_id = request.args.get("message_id")
    if message_id:
        _own_message(message_id)
    return json_response(replies_page(g.api_key.name))


def replies_page(api_key: str | None) -> dict[str, Any]:
    try:
        limit = min(int(request.args.get("limit", "50")), 500)
        cursor = request.args.get("cursor")
        before = float(cursor) if cursor else None
        if limit < 1:
            raise ValueError
    except ValueError:
        raise Problem(400, "Bad paging", "1 ≤ limit ≤ 500; cursor as returned") from None
    items, nxt = messages.list_replies(
        runtime().conn,
        api_key=api_key,
        mobile=request.args.get("mobile"),
        account=request.args.get("account"),
        message_id=request.args.get("message_id"),
        before=before,
        limit=limit,
    )
    return {"items": items, "next_cursor": nxt}


@bp.get("/usage")
def usage() -> Response:
    """This key's limits, what is left today, and its counters per day (``from``/``to``,
    ``YYYY-MM-DD``, China time, at most 90 days)."""
    from datetime import date

    conn = runtime().conn
    try:
        end = date.fromisoformat(request.args["to"]) if request.args.get("to") else today_date()
        start = date.fromisoformat(request.args.get("from") or end.isoformat())
        if start > end or (end - start).days >= 90:
            raise ValueError
    except ValueError:
        raise Problem(400, "Bad range", "from ≤ to, YYYY-MM-DD, at most 90 days") from None
    table = usage_rows(conn, lambda day: schema.usage_key(g.api_key.name, day), start, end)
    return json_response({"api_key": g.api_key.name, "limits": quotas().remaining(g.api_key), "days": table})


@bp.get("/suppressions")
def list_suppressions() -> Response:
    """The account's opt-out list (退订), with why and when; ``cursor`` pages on (0: the end)."""
    rt = runtime()
    name = _account_arg(request.args.get("account"))
    try:
        cursor = int(request.args.get("cursor", "0"))
        limit = min(int(request.args.get("limit", "100")), 1000)
        if not 0 <= cursor < 2**63 or limit < 1:
            raise ValueError
        items, nxt = guardrails.suppressions(rt.conn, rt.settings, name, cursor, limit)
    except (ValueError, redis.ResponseError):  # Redis refuses a cursor it never handed out
        raise Problem(400, "Bad paging", "cursor as returned and 1 ≤ limit ≤ 1000") from None
    return json_response({"account": name, "items": items, "next_cursor": nxt or None})


@bp.post("/suppressions")
def add_suppression() -> Response:
    rt = runtime()
    body = request_json()
    if not isinstance(body, dict) or not isinstance(body.get("mobile"), str):
        raise validation_problem([{"pointer": "/mobile", "detail": "a mobile is required"}])
    mobile = normalise(body["mobile"])
    if mobile is None:
        raise validation_problem([{"pointer": "/mobile", "detail": "not a mainland China mobile"}])
    name = _account_arg(body.get("account") if isinstance(body.get("account"), str) else None)
    reason = str(body.get("reason") or "added by the API")[:200]
    guardrails.opt_out(rt.conn, rt.settings, name, mobile, reason, f"api:{g.api_key.name}")
    return json_response({"account": name, "mobile": mobile, "reason": reason}, 201)


@bp.delete("/suppressions/<mobile>")
def remove_suppression(mobile: str) -> Response:
    rt = runtime()
    mobile = normalise(mobile) or mobile
    name = _account_arg(request.args.get("account"))
    if not guardrails.opt_in(rt.conn, rt.settings, name, mobile):
        raise Problem(404, "Not Found", f"{mobile} is not on the suppression list")
    return json_response({"account": name, "mobile": mobile, "removed": True})


def _account_arg(name: str | None) -> str:
    settings = runtime().settings
    name = name or settings.default_account
    if name not in settings.accounts:
        raise Problem(404, "Not Found", f"unknown account {name!r}")
    return name


@bp.get("/balance")
def balance() -> Response:
    rt = runtime()
    name = _account_arg(request.args.get("account"))
    cache = schema.cache_key("bal", name)
    cached = rt.conn.get(cache)
    if cached is None:
        try:
            value = str(rt.client(name).balance())
        except p.ProviderError as e:
            raise Problem(502, "Provider error", f"{type(e).__name__}: {e.text}") from None
        rt.conn.set(cache, value, ex=BALANCE_CACHE_SECONDS)
        accounts.record_balance(rt.conn, name, value, time.time())
        cached = value.encode()
    return json_response({"account": name, "balance": cached.decode()})


@bp.post("/sensitive-words")
def sensitive_words() -> Response:
    rt = runtime()
    req = parse_model(SensitiveWordsRequest, request_json())
    name = _account_arg(req.account)
    problems = charset_errors(req.text, rt.settings.accounts[name].charset, "/text")
    if problems:
        raise validation_problem(problems)
    try:
        words = provider_words(name, req.text)
    except p.ProviderError as e:
        raise Problem(502, "Provider error", f"{type(e).__name__}: {e.text}") from None
    return json_response({"account": name, "words": words})


def provider_words(account: str, text: str) -> list[str]:
    """The provider's sensitive words in ``text``, cached per account and text."""
    rt = runtime()
    cache = schema.cache_key("mgz", f"{account}:{verify.digest(rt.settings.verify_key, text)}")
    cached = rt.conn.get(cache)
    if cached is not None:
        return list(json.loads(cached))
    words = rt.client(account).sensitive_words(text)
    rt.conn.set(cache, json.dumps(words, ensure_ascii=False), ex=WORDS_CACHE_SECONDS)
    return words


#: The provider's word check reads at most this many characters a call, and a request's
#: texts and values take at most CONTENT_CALLS calls; the rest is left to the send, where a
#: refusal fails only the message that caused it (``workers.jobs``).
CONTENT_PIECE = 500
CONTENT_CALLS = 10
_DIGITS = re.compile(r"[0-9]*")


def _variable_values(req: MessageRequest) -> list[str]:
    """A personalised request's distinct values, in order."""
    values = (v for r in req.recipients or () for v in r.vars.values())
    return list(dict.fromkeys(values))


def content_words(account: str, texts: list[str]) -> list[str]:
    """SMSGW_CONTENT_CHECK: the provider's sensitive words plus SMSGW_CONTENT_WORDS_FILE's, in
    the text or template and every variable value, ``high`` included.

    Values of digits only (codes, amounts) hold no word and cost no provider call, so a
    verification code's accept waits for at most the template's check, which is cached. The
    provider unreachable: checked against the local list only, and counted."""
    rt = runtime()
    found = [w for w in rt.settings.content_words if any(w in t for t in texts)]
    pieces = _pieces([t for t in texts if not _DIGITS.fullmatch(t)])
    if len(pieces) > CONTENT_CALLS:
        rt.conn.hincrby(schema.COUNTS, "content_check_partial", 1)
    try:
        for piece in pieces[:CONTENT_CALLS]:
            found += [w for w in provider_words(account, piece) if w not in found]
    except p.ProviderError:
        rt.conn.hincrby(schema.COUNTS, "content_check_unavailable", 1)
    return found


def _pieces(texts: list[str]) -> list[str]:
    """Texts joined by newlines into pieces of at most :data:`CONTENT_PIECE` characters (a
    longer text is a piece of its own)."""
    pieces: list[str] = []
    for text in texts:
        if pieces and len(pieces[-1]) + 1 + len(text) <= CONTENT_PIECE:
            pieces[-1] += "\n" + text
        else:
            pieces.append(text)
    return pieces
