"""The baseline: the job-per-message Flask + RQ + requests pipeline a team writes in an afternoon.

Written honestly, as a competent team would: JSON in, a little validation, one RQ enqueue, 202;
the job posts one text to one mobile with ``requests`` (a session per worker process, the
provider's GB2312 form, a fresh linkid) and raises on anything but answer 0 so RQ marks it
failed. What it does not do is the point of smsgw: no idempotency, no holds, no coalescing, no
ambiguity handling. ``bench.load`` serves it with smsgw's own gunicorn settings.

Run as ``gunicorn bench.plain:app`` and ``rq worker plain``; ``PLAIN_REDIS_URL`` and
``PLAIN_PROVIDER_URL`` say where Redis and the provider are.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any
from urllib.parse import urlencode

import redis
import requests
from flask import Flask, jsonify, request
from rq import Queue

REDIS_URL = os.environ.get("PLAIN_REDIS_URL", "redis://127.0.0.1:6379/0")
PROVIDER_URL = os.environ.get("PLAIN_PROVIDER_URL", "http://127.0.0.1:8081/")
UID, PASSWORD = os.environ.get("PLAIN_UID", "test"), os.environ.get("PLAIN_PASSWORD", "secret")

app = Flask(__name__)
redis_conn = redis.Redis.from_url(REDIS_URL)
queue = Queue("plain", connection=redis_conn)
_session = requests.Session()


@app.post("/v1/messages")
def create() -> Any:
    body = request.get_json(silent=True) or {}
    to, text = body.get("to"), body.get("text")
    if not isinstance(to, list) or not to or not isinstance(text, str) or not text:
        return jsonify({"error": "to and text are required"}), 400
    job = queue.enqueue(send_one, to, text)
    return jsonify({"id": job.id}), 202


@app.post("/push")
def push() -> Any:
    """The baseline for smsgw's push receiver: take the provider's form body, store it, 200."""
    redis_conn.rpush("plain:inbox", request.get_data())
    return "ok"


def send_one(to: list[str], text: str) -> str:
    form = {
        "uid": UID,
        "pwd": hashlib.md5(PASSWORD.encode("gb2312")).hexdigest(),
        "mobile": ";".join(to),
        "msg": text,
        "linkid": uuid.uuid4().hex[:20],
        "dtime": "",
    }
    answer = _session.post(
        PROVIDER_URL + "post_send_md5/",
        data=urlencode(form, encoding="gb2312"),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=GB2312"},
        timeout=10,
    )
    answer.raise_for_status()
    code = answer.content.decode("gb2312").strip()[:1]
    if code != "0":
        raise RuntimeError(f"provider answered {code}")
    return code
