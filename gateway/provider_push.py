"""The provider's push receiver: ``/callbacks/provider/<secret>``, GET or POST.

Thin on purpose: validate, store durably, answer. Matching reports to messages happens in a
worker (``workers.reports.ingest``). The provider pushes once and never retries, so the item is
in Redis before the 200 goes out; a replayed item is stored again, and applying it again
changes nothing (``workers.reports._StorePush``).

Fields come as a query string or a form body, in GB2312 or UTF-8; Werkzeug would decode them
as UTF-8 whatever they are, so the raw bytes are parsed here.
"""

from __future__ import annotations

import hmac
import logging

import redis
from flask import Blueprint, Response, current_app, request

from gateway.context import runtime
from gateway.problems import Problem
from workers.provider import parse_form
from workers.reports import receive
from workers.storage.schema import COUNTS

log = logging.getLogger("smsgw.provider_push")
bp = Blueprint("provider_push", __name__)


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("gb18030", errors="replace")  # a superset of GB2312


def parse_push(raw: dict[str, bytes], uid_to_account: dict[str, str]) -> dict[str, str]:
    fields = {k: _text(v).strip() if k != "Message" else _text(v) for k, v in raw.items()}
    kind = fields.get("Class", "")
    mobile = fields.get("Mobile", "")
    if kind not in ("rpt", "mo") or not mobile:
        raise ValueError("needs Class=rpt or Class=mo and a Mobile")
    item = {
        "kind": kind,
        "mobile": mobile,
        "linkid": fields.get("LinkId", ""),
        "account": uid_to_account.get(fields.get("SmsName", ""), ""),
    }
    if kind == "rpt":
        if not fields.get("Report"):
            raise ValueError("a report needs Report")
        item.update(status=fields["Report"], time=fields.get("ReportTime", ""))
    else:
        if "Message" not in fields:
            raise ValueError("a reply needs Message")
        item.update(content=fields["Message"], time=fields.get("RevertTime", ""))
    return item


@bp.route("/callbacks/provider/<secret>", methods=["GET", "POST"])
def provider_push(secret: str) -> Response:
    rt = runtime()
    expected = rt.settings.callback_secret.reveal()
    if not expected or not hmac.compare_digest(secret.encode(), expected.encode()):
        raise Problem(404, "Not Found", "The requested URL was not found on the server.")
    body = request.get_data(cache=False) if request.method == "POST" else b""
    raw = parse_form(request.query_string)
    raw.update(parse_form(body))
    uids = {a.uid: a.name for a in rt.settings.accounts.values()}
    try:
        item = parse_push(raw, uids)
    except ValueError as e:
        # Field names only: a push carries mobiles and texts, which no log line may hold.
        log.warning("malformed push (%s): fields %s", e, sorted(raw)[:20])
        rt.conn.hincrby(COUNTS, "push_malformed", 1)
        raise Problem(400, "Malformed push", str(e)) from None
    try:
        receive(rt, [item])
    except redis.RedisError as e:
        # Counted in this process (Redis is what failed): the provider does not push again, so
        # each refusal is a report the pullers must recover, or a recipient that ends unknown.
        current_app.extensions["smsgw_push_refused"].inc()
        log.warning("push refused: Redis %s", type(e).__name__)
        raise
    return Response("ok", mimetype="text/plain")
