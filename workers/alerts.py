"""Alerts: one function, one call site per event, three sinks (log, counter, webhook).

Events: ``account_held``, ``account_resumed``, ``chunk_failed``, ``validation_defect``,
``redis_not_durable``. The webhook speaks plain JSON, or a DingTalk or WeCom robot's text
format. A webhook that is down never breaks the caller: it is logged and dropped (the log line
and the counter remain).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
import requests

from workers.settings import Settings
from workers.storage.schema import ALERTS

log = logging.getLogger("smsgw.alerts")


def alert(settings: Settings, conn: redis.Redis | None, event: str, **fields: Any) -> None:
    log.error(
        "alert %s %s",
        event,
        json.dumps(fields, ensure_ascii=False),
        extra={"alert_event": event, "alert_fields": fields},
    )
    if conn is not None:
        try:
            conn.hincrby(ALERTS, event, 1)
        except redis.RedisError:
            log.warning("could not count alert %s", event)
    if settings.alert_webhook_url:
        _webhook(settings, event, fields)


def _webhook(settings: Settings, event: str, fields: dict[str, Any]) -> None:
    summary = f"[smsgw] {event}: " + ", ".join(f"{k}={v}" for k, v in fields.items())
    if settings.alert_webhook_format in ("dingtalk", "wecom"):
        body: dict[str, Any] = {"msgtype": "text", "text": {"content": summary}}
    else:
        body = {"event": event, "summary": summary, **fields}
    try:
        requests.post(settings.alert_webhook_url, json=body, timeout=5)
    except requests.RequestException as e:
        log.warning("alert webhook failed (%s); the alert stays in the log", type(e).__name__)
