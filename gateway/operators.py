"""Operator actions over HTTP (``/admin``): list accounts, hold and resume them.

Operators authenticate separately from API clients: HTTP Basic with the user ``operator`` and
``SMSGW_OPERATOR_PASSWORD``. With no password configured, every operator route answers 403: an
API key never opens them.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from flask import Blueprint, Response, request

from gateway.api import json_response, replies_page
from gateway.context import runtime
from gateway.problems import Problem
from workers import accounts, lifecycle, routes
from workers.runtime import Runtime
from workers.storage import schema
from workers.times import rfc3339

bp = Blueprint("operators", __name__, url_prefix="/admin")


def require_operator() -> None:
    expected = runtime().settings.operator_password.reveal()
    if not expected:
        raise Problem(403, "Forbidden", "operator access is disabled (set SMSGW_OPERATOR_PASSWORD)")
    auth = request.authorization
    given = (auth.password or "") if auth is not None and auth.type == "basic" else ""
    user_ok = auth is not None and hmac.compare_digest((auth.username or "").encode(), b"operator")
    if not (user_ok and hmac.compare_digest(given.encode(), expected.encode())):
        raise Problem(
            401, "Unauthorized", "operator credentials needed", headers={"WWW-Authenticate": 'Basic realm="smsgw"'}
        )


def account_row(rt: Runtime, name: str) -> dict[str, Any]:
    """One account as operators see it (``/admin``, the dashboard and ``smsgw accounts list``)."""
    state = accounts.state(rt.conn, name)
    return {
        "account": name,
        "state": state.state,
        "code": state.code or None,
        "reason": state.reason or None,
        "since": rfc3339(state.since),
        "held_chunks": rt.conn.zcard(schema.held_key(name)),
        "balance": _number(state.balance),
        "balance_at": rfc3339(state.balance_at),
        "balance_low": bool(state.balance_low),
        "chunk_size": accounts.chunk_size(rt.conn, rt.settings, name),
        "parts_today": accounts.spent_today(rt.conn, name, time.time()),
        "failed_calls_in_a_row": state.fails,
        "pinned_to": state.pinned or None,
        "route": {p: routes.current(rt.conn, name).get(p, name) for p in ("high", "normal", "bulk")}
        if name in rt.settings.failover_accounts
        else None,
    }


def _number(raw: str) -> float | int | None:
    """The provider's balance as a number (it answers text); ``None`` when unknown."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def account_list() -> list[dict[str, Any]]:
    rt = runtime()
    return [account_row(rt, name) for name in rt.settings.accounts]


def _known(name: str) -> str:
    if name not in runtime().settings.accounts:
        raise Problem(404, "Not Found", f"unknown account {name!r}")
    return name


@bp.get("/replies")
def list_replies() -> Response:
    """Every reply, those matching no message included: only operators see them."""
    return json_response(replies_page(None))


@bp.get("/accounts")
def list_accounts() -> Response:
    return json_response({"accounts": account_list()})


@bp.post("/accounts/<name>/resume")
def resume(name: str) -> Response:
    rt = runtime()
    resumed = lifecycle.resume_account(rt.settings, rt.conn, _known(name), by="operator (HTTP)")
    return json_response({"account": name, "state": "active", "resumed_chunks": resumed})


@bp.post("/accounts/<name>/chunk-size/reset")
def reset_chunk_size(name: str) -> Response:
    """After answer 3 the size is probed back up by itself; an operator can reset it at once."""
    rt = runtime()
    accounts.reset_chunk_size(rt.conn, _known(name))
    return json_response({"account": name, "chunk_size": accounts.chunk_size(rt.conn, rt.settings, name)})


@bp.post("/accounts/<name>/hold")
def hold(name: str) -> Response:
    rt = runtime()
    reason = (request.get_json(silent=True) or {}).get("reason") or "held by an operator"
    accounts.hold(rt.settings, rt.conn, _known(name), 0, str(reason)[:200])
    return json_response({"account": name, "state": "held", "reason": reason})


@bp.post("/accounts/<name>/pin")
def pin(name: str) -> Response:
    """Send every priority of the account to ``{"to": "<account>"}`` until unpinned."""
    rt = runtime()
    target = str((request.get_json(silent=True) or {}).get("to") or "")
    if target not in rt.settings.accounts:
        raise Problem(422, "Unknown account", f"pin to one of {', '.join(rt.settings.accounts)}")
    routes.pin(rt.conn, rt.settings, _known(name), target, by="operator (HTTP)")
    return json_response({"account": name, "pinned_to": target})


@bp.post("/accounts/<name>/unpin")
def unpin(name: str) -> Response:
    rt = runtime()
    routes.unpin(rt.conn, rt.settings, _known(name), by="operator (HTTP)")
    return json_response({"account": name, "pinned_to": None})
