"""Wiring: every queue is consumed, the containers are valid, gunicorn's config is what we say."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import compose

from workers.queues import QUEUE_NAMES, WORKER_QUEUES
from workers.storage import schema

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = os.path.join(os.path.dirname(compose.__file__), "docker-compose")


def test_every_queue_smsgw_enqueues_to_is_served_by_the_worker(api, runtime, simulator):
    """Drive every flow that enqueues (plan, send, a scheduled retry, callbacks), then read the
    queues RQ itself registered: each must be one the worker serves."""
    from tests.conftest import AUTH, drain, sim_admin
    from tests.test_reports import pull_all

    sim_admin(simulator, "fault", endpoint="post_send_md5", mode="http", status=503, times=1)
    for priority in ("high", "normal", "bulk"):
        body = {
            "to": ["13800138000"],
            "text": "x",
            "priority": priority,
            "callback_url": "http://127.0.0.1:9/dead",
        }
        assert api.post("/v1/messages", json=body, headers=AUTH).status_code == 202
    drain(runtime)
    pull_all(runtime)
    registered = {q.decode().removeprefix("rq:queue:") for q in runtime.conn.smembers("rq:queues")}
    assert set(QUEUE_NAMES.values()) <= registered
    assert runtime.conn.zcard(schema.CALLBACKS_DUE) == 3  # callbacks wait for the dispatcher, on no RQ queue
    assert registered <= set(WORKER_QUEUES)
    assert list(WORKER_QUEUES[:3]) == ["smsgw-high", "smsgw-normal", "smsgw-bulk"]  # priority order
    source = (ROOT / "workers" / "worker.py").read_text()
    assert "queues: tuple[str, ...] = WORKER_QUEUES" in source  # smsgw worker serves them all by default


def compose_config(*files: str, cwd: Path = ROOT) -> dict:
    """``docker compose config`` of production (``docker-compose.yml``), or with the dev override."""
    names = files or ("docker-compose.yml", "docker-compose.dev.yml")
    command = [COMPOSE, *(a for f in names for a in ("-f", str(cwd / f))), "config", "--format", "json"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=cwd)
    return json.loads(out.stdout)


def test_compose_file_is_valid_and_wired():
    config = compose_config()
    services = config["services"]
    assert set(services) == {"redis", "api", "worker", "simulator"}
    assert services["worker"]["command"] == ["worker"]  # all queues, no subset
    assert set(compose_config("docker-compose.yml")["services"]) == {"redis", "api", "worker"}
    assert "--appendonly" in services["redis"]["command"] and "everysec" in services["redis"]["command"]
    assert "redis-data" in config["volumes"]
    assert services["api"]["image"] == services["worker"]["image"] == services["simulator"]["image"]
    entry = (ROOT / "docker" / "entrypoint.sh").read_text()
    for role in ("api", "worker", "simulator"):
        assert f"{role})" in entry


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and text.count("FROM ") == 2


def test_gunicorn_config_imports_with_expected_values():
    spec = importlib.util.spec_from_file_location("gconf", ROOT / "gateway" / "gunicorn_conf.py")
    assert spec and spec.loader
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    assert conf.timeout == 30 and conf.graceful_timeout == 30 and conf.worker_class == "gevent"
    assert conf.logger_class == "gateway.access_log.AccessLogger"
    assert conf.workers >= 1 and callable(conf.child_exit)


def _imports() -> dict[str, set[str]]:
    """Module → the project modules it imports, lazy (function-level) imports included."""
    mods: dict[str, Path] = {}
    for top in ("gateway", "workers", "devkit"):
        for path in (ROOT / top).rglob("*.py"):
            mods[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import sub`` imports the submodule; other names come from the module.
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
                deps |= subs if len(subs) == len(node.names) else {*subs, node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_no_import_cycle_anywhere():
    graph = _imports()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            assert dep not in path, " -> ".join([*path[path.index(dep) :], dep])
            if dep not in done:
                visit(dep, [*path, dep])
        done.add(node)

    for module in sorted(graph):
        visit(module, [module])
    assert len(graph) > 30


def test_production_code_never_imports_the_fakes_and_workers_never_import_flask():
    graph = _imports()
    for module, deps in graph.items():
        if module.startswith(("workers", "gateway")) and module != "gateway.cli":
            assert not {d for d in deps if d.startswith("devkit")}, module
    for path in (ROOT / "workers").rglob("*.py"):
        assert "import flask" not in path.read_text() and "from flask" not in path.read_text(), path


def test_api_and_worker_refuse_the_development_defaults_unless_told(settings_env):
    from workers.settings import SAMPLE_API_KEY

    env = {k: v for k, v in {**os.environ, **settings_env}.items() if k != "SMSGW_ALLOW_DEV_DEFAULTS"}
    env["SMSGW_API_KEYS"] = f"local:{SAMPLE_API_KEY}"
    env["SMSGW_PROVIDER_PASSWORD"] = ""
    for role in ("api", "worker"):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", role], env=env, capture_output=True, text=True)
        assert done.returncode != 0 and "refusing to start on development defaults" in done.stderr, done.stderr
        for problem in ("sample key", "PASSWORD is empty", "points at the simulator"):
            assert problem in done.stderr


def test_env_example_lists_every_setting_and_compose_passes_them_through():
    import re

    source = (ROOT / "workers" / "settings.py").read_text()
    names = set(re.findall(r'"(SMSGW_[A-Z_]+[A-Z])"', source)) - {"SMSGW_ACCOUNT", "SMSGW_KEY", "SMSGW_PROVIDER"}
    fields = set(re.findall(r'(?:prefix|channel) \+ "([A-Z_]+)"', source))
    example = (ROOT / ".env.example").read_text()
    missing = [n for n in names if n not in example]
    missing += [f for f in fields if f"SMSGW_ACCOUNT_MARKETING_{f}" not in example and f"_{f}=" not in example]
    assert not missing, missing
    compose_text = (ROOT / "docker-compose.yml").read_text()
    assert "path: .env" in compose_text and "required: false" in compose_text


def test_production_compose_takes_every_setting_from_env_and_supplies_no_credential(tmp_path):
    """Nothing under ``environment:`` beats .env (a Sentinel URL in .env is the one used), no
    ``${…:-default}`` turns a forgotten password into the simulator's, and the API started on
    such a .env refuses to run, naming what is missing."""
    import shutil

    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    sentinel = "redis+sentinel://:pw@s1:26379,s2:26379/smsgw/0"
    (tmp_path / ".env").write_text(
        f"SMSGW_REDIS_URL={sentinel}\nSMSGW_REDIS_DURABILITY=warn\nSMSGW_API_WORKERS=6\n"
        "SMSGW_PROVIDER_UID=acme\nSMSGW_API_KEYS=svc:0123456789abcdef0123\n"
    )
    config = compose_config("docker-compose.yml", cwd=tmp_path)
    for role in ("api", "worker"):
        env = config["services"][role]["environment"]
        assert env["SMSGW_REDIS_URL"] == sentinel and env["SMSGW_REDIS_DURABILITY"] == "warn"
        assert "SMSGW_PROVIDER_PASSWORD" not in env and "SMSGW_ALLOW_DEV_DEFAULTS" not in env
    assert config["services"]["api"]["command"] == ["api"]  # gunicorn reads SMSGW_API_WORKERS itself
    assert "${" not in (ROOT / "docker-compose.yml").read_text()  # no interpolated defaults at all
    env = {"PATH": os.environ["PATH"], **config["services"]["api"]["environment"]}
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "api"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "SMSGW_PROVIDER_PASSWORD is empty" in out.stderr
