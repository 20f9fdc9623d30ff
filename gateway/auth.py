"""API clients authenticate with ``Authorization: Bearer <key>``.

Keys come from ``SMSGW_API_KEYS`` and are held only as SHA-256 digests; the presented key is
hashed and compared with every known digest in constant time, so the answer's timing says
nothing about which key was close.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import request

from gateway.problems import Problem
from workers.settings import ApiKey, Settings


def authenticate(settings: Settings) -> ApiKey:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "Unauthorized",
            "send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    digest = hashlib.sha256(token.strip().encode()).digest()
    found = None
    for key in settings.api_keys:
        if hmac.compare_digest(digest, key.key_sha256):
            found = key
    if found is None:
        raise Problem(401, "Unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return found
