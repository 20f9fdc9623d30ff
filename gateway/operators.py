"""Operator actions over HTTP (``/admin``): list accounts, hold and resume them.

Operators authenticate separately from API clients: HTTP Basic with the user ``operator`` and
``SMSGW_OPERATOR_PASSWORD``. With no password configured, every operator route answers 403: an
API key never opens them.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, current_app, request

from gateway.api import json_response
from gateway.problems import Problem
from workers import accounts
from workers.runtime import Runtime

bp = Blueprint("operators", __name__, url_prefix="/admin")


def runtime() -> Runtime:
    return current_app.extensions["smsgw"]  # type: ignore[no-any-return]


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


def account_list() -> list[dict[str, Any]]:
    rt = runtime()
    out = []
    for name in rt.settings.accounts:
        state = accounts.state(rt.conn, name)
        out.append(
            {
                "account": name,
                "state": state["st"],
                "code": state.get("code") or None,
                "reason": state.get("reason") or None,
                "since": state.get("since") or None,
                "held_chunks": rt.conn.zcard(f"sg:held:{name}"),
                "balance": state.get("balance"),
                "balance_at": state.get("balance_at"),
                "chunk_size": accounts.chunk_size(rt.conn, rt.settings, name),
            }
        )
    return out


def _known(name: str) -> str:
    if name not in runtime().settings.accounts:
        raise Problem(404, "Not Found", f"unknown account {name!r}")
    return name


@bp.get("/accounts")
def list_accounts() -> Response:
    return json_response({"accounts": account_list()})


@bp.post("/accounts/<name>/resume")
def resume(name: str) -> Response:
    rt = runtime()
    resumed = accounts.resume(rt.settings, rt.conn, _known(name), by="operator (HTTP)")
    return json_response({"account": name, "state": "active", "resumed_chunks": resumed})


@bp.post("/accounts/<name>/hold")
def hold(name: str) -> Response:
    rt = runtime()
    reason = (request.get_json(silent=True) or {}).get("reason") or "held by an operator"
    accounts.hold(rt.settings, rt.conn, _known(name), 0, str(reason)[:200])
    return json_response({"account": name, "state": "held", "reason": reason})
