"""The Redis schema lives in one module, its docstring lists every key family, and it stays true."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from tests.conftest import AUTH, drain, sim_admin
from workers.storage import schema
from workers.storage.schema import AccountState, Chunk, Message

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ("gateway", "workers", "devkit", "bench")
ROW = re.compile(r"^\s{4}(sg:\S+)\s+(\w+)\s+(\w+)\s+\S")


def documented() -> dict[str, str]:
    """Key pattern → the schema name that builds it, from the module docstring's table."""
    rows = {}
    for line in (schema.__doc__ or "").splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def pattern(family: str) -> re.Pattern[str]:
    """``sg:c:<mid>:<n>`` → a regex: each placeholder is one segment, except that the last one
    of a family may hold colons (``sg:lease:pull:<account>``, a cache id)."""
    parts = re.split(r"<[^>]+>", family)
    holes = ["[^:]+"] * (len(parts) - 2) + [".+"] if len(parts) > 1 else []
    regex = "".join(re.escape(part) + hole for part, hole in zip(parts, [*holes, ""], strict=True))
    return re.compile("^" + regex + "$")


def sg_literals(path: Path) -> list[tuple[int, str]]:
    """String constants (and f-strings) that begin a Redis key: ``"sg:…``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and str(first.value).startswith("sg:"):
                found.append((node.lineno, str(first.value)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("sg:"):
            found.append((node.lineno, node.value))
    return found


def test_no_key_is_spelled_outside_the_schema_module():
    offenders = []
    for top in PRODUCTION:
        for path in (ROOT / top).rglob("*.py"):
            if path == ROOT / "workers" / "storage" / "schema.py":
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line}: {text!r}" for line, text in sg_literals(path)]
    assert not offenders, offenders
    assert sg_literals(ROOT / "workers" / "storage" / "schema.py")  # the check sees literals where they are


def test_the_docstring_lists_every_key_the_module_builds():
    rows = documented()
    assert len(rows) >= 30
    builders = {
        name
        for name, value in vars(schema).items()
        if (inspect.isfunction(value) and name.endswith("_key") and value.__module__ == schema.__name__)
        or (name.isupper() and isinstance(value, str) and value.startswith("sg:") and value != schema.PREFIX)
    }
    assert builders == set(rows.values())
    for family, name in rows.items():
        builder = getattr(schema, name)
        if name == "minute_key":
            key = schema.minute_key(600.0)
        else:
            key = builder if isinstance(builder, str) else builder(*["x1"] * len(inspect.signature(builder).parameters))
        if isinstance(builder, str) and "<" in family:  # a prefix others build under (limits)
            assert family.startswith(builder + ":"), (family, builder)
            continue
        assert pattern(family).match(key), (family, key)


def test_records_map_attributes_to_short_fields_in_one_place():
    chunk = Chunk(mid="m1", n=3, state="pending", linkid="abc", items="13800138000;13900139000", recipients=2)
    raw = chunk.to_hash()
    assert raw == {"n": 3, "st": "pending", "lk": "abc", "to": "13800138000;13900139000", "nr": 2}
    back = Chunk.from_hash({k.encode(): str(v).encode() for k, v in raw.items()}, mid="m1")
    assert back == chunk and back.mobiles == ["13800138000", "13900139000"]
    assert Chunk.short(wait_until=1.5, attempts=2) == {"uw": "1.500", "att": 2}
    with pytest.raises(KeyError):
        Chunk.short(no_such_field=1)
    msg = Message.from_hash({b"st": b"sending", b"c_submitted": b"2", b"r_D": b"5"}, id="m1")
    assert msg.chunks_final == {"submitted": 2} and msg.recipients_final == {"D": 5}
    assert AccountState.from_hash({}).state == "active"
    short = [f for record in (Message, Chunk, AccountState) for f in record.FIELDS.values()]
    assert all(len(f) <= 16 for f in short)


def test_every_key_a_full_run_leaves_is_a_documented_family(api, runtime, simulator):
    """Everything smsgw writes, driven for real: sends, a retry, a hold, a failure, callbacks,
    reports, replies, idempotency, caches; then every sg: key in Redis must match the table."""
    from tests.test_reports import pull_all

    conn = runtime.conn
    body = {"to": ["13800138000"], "text": "hi", "callback_url": "http://127.0.0.1:9/dead"}
    assert api.post("/v1/messages", json=body, headers={**AUTH, "Idempotency-Key": "k1"}).status_code == 202
    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="http", status=503, times=1)
    assert api.post("/v1/messages", json={"to": ["13900139000"], "text": "x"}, headers=AUTH).status_code == 202
    sim_admin(simulator, "script", codes=[5])
    assert api.post("/v1/messages", json={"to": ["13700137000"], "text": "y"}, headers=AUTH).status_code == 202
    api.get("/v1/balance", headers=AUTH)
    api.post("/v1/sensitive-words", json={"text": "发票"}, headers=AUTH)
    drain(runtime)
    sim_admin(simulator, "reply", mobile="13800138000", content="TD", linkid="")
    pull_all(runtime)
    from workers import maintenance

    maintenance.run_once(runtime)
    sim_admin(simulator, "script", codes=[2])
    held = api.post("/v1/messages", json={"to": ["13600136000"], "text": "z"}, headers=AUTH).get_json()["id"]
    drain(
        runtime, until=lambda: api.get(f"/v1/messages/{held}", headers=AUTH).get_json()["chunks"][0]["state"] == "held"
    )
    families = [pattern(f) for f in documented()]
    keys = [k.decode() for k in conn.scan_iter(match="sg:*")]
    assert len(keys) > 20
    undocumented = sorted(k for k in keys if not any(p.match(k) for p in families))
    assert not undocumented
