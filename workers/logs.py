"""Logging: JSON lines carrying smsgw's context (message id, chunk, linkid, account, request id).

Configured once per process at start (``smsgw api`` through gunicorn's config, ``smsgw worker``),
never at import. urllib3 stays at WARNING: its DEBUG lines hold full URLs, and the provider's
GET endpoints carry the password in theirs.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

CONTEXT = ("message_id", "chunk", "linkid", "account", "request_id", "alert_event")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def config_dict(level: str = "INFO", fmt: str = "json", filters: dict[str, Any] | None = None) -> dict[str, Any]:
    """``filters``: extra handler filters by name, e.g. the API's request id (by dotted path,
    so this module never imports Flask)."""
    formatter = {"()": JsonFormatter} if fmt == "json" else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"smsgw": formatter},
        "filters": filters or {},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "smsgw", "filters": list(filters or {})}
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "urllib3": {"level": "WARNING"},
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": level, "handlers": ["stderr"], "propagate": False},
        },
    }


def configure(level: str = "INFO", fmt: str = "json") -> None:
    logging.config.dictConfig(config_dict(level, fmt))
