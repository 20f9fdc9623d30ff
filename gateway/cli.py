"""The ``smsgw`` command: one entry point for every role (run, api, worker, simulator, …)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from workers.settings import Settings, SettingsError, settings_from_env


def redis_problem(e: Exception) -> click.ClickException:
    """One line naming the setting, never a traceback (nor the URL, which may hold a password)."""
    import redis

    if isinstance(e, redis.AuthenticationError) or "WRONGPASS" in str(e) or "NOAUTH" in str(e):
        return click.ClickException("SMSGW_REDIS_URL: Redis refused the password in it (AUTH failed)")
    return click.ClickException(f"SMSGW_REDIS_URL: Redis is unreachable ({type(e).__name__})")


def refuse_dev_defaults(settings: Settings) -> None:
    """`smsgw api` and `smsgw worker` do not start on the development defaults unless told to."""
    from workers.settings import dev_defaults

    problems = dev_defaults(settings)
    if problems and os.environ.get("SMSGW_ALLOW_DEV_DEFAULTS") != "1":
        raise click.ClickException(
            "refusing to start on development defaults: "
            + "; ".join(problems)
            + " (set SMSGW_ALLOW_DEV_DEFAULTS=1 for the dev profile or a local run)"
        )


#: What ``make run`` writes while it runs: its stack's settings (``devkit.run``).
RUN_ENV = os.path.join(".run", "env")


def load_settings(redis_url: str | None = None) -> Settings:
    """The settings from ``SMSGW_*``; with no ``SMSGW_REDIS_URL`` set, those of a ``make run``
    running in this folder (``.run/env``), so the operator CLI works beside it as it is."""
    env: dict[str, str] = dict(os.environ)
    if not redis_url and not env.get("SMSGW_REDIS_URL") and os.path.exists(RUN_ENV):
        with open(RUN_ENV, encoding="utf-8") as f:
            found = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line and not line.startswith("#"))
        env = {**found, **{k: v for k, v in env.items() if v}}
        click.echo(f"smsgw: using the settings of the make run in this folder ({RUN_ENV})", err=True)
    try:
        return settings_from_env(env, redis_url=redis_url)
    except SettingsError as e:
        raise click.ClickException(f"configuration: {e}") from None


class OneLineErrors(click.Group):
    """Every failure of a command is one line naming its cause, never a traceback: Redis
    unreachable, the provider unreachable or refusing, the API unreachable."""

    def invoke(self, ctx: click.Context) -> Any:
        import redis
        import requests

        from workers import provider as p

        try:
            return super().invoke(ctx)
        except redis.RedisError as e:
            raise redis_problem(e) from None
        except p.ProviderError as e:
            raise click.ClickException(f"the provider: {type(e).__name__}: {e.text or e}") from None
        except requests.RequestException as e:
            raise click.ClickException(f"HTTP: {type(e).__name__}: {e}") from None


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """smsgw: an outbound SMS gateway for the 通用短信平台 HTTP API."""


@cli.command()
@click.option("--api-port", default=8080, show_default=True, help="port of the API on 127.0.0.1")
@click.option("--simulator-port", default=8081, show_default=True, help="port of the simulator")
def run(api_port: int, simulator_port: int) -> None:
    """Everything local: a private Redis, the provider simulator, the API and a worker.

    Ctrl-C stops all of it. Nothing needs configuring; SMSGW_* variables still apply.
    """
    from devkit.run import RunError, run_local

    try:
        run_local(api_port=api_port, simulator_port=simulator_port)
    except RunError as e:
        raise click.ClickException(f"make run: {e}") from None


@cli.command()
@click.option("--bind", default=None, help="host:port (default: SMSGW_BIND or 0.0.0.0:8080)")
@click.option("--workers", default=None, type=int, help="gunicorn worker processes (default 2)")
def api(bind: str | None, workers: int | None) -> None:
    """The HTTP API under gunicorn, configured by the SMSGW_* environment."""
    import redis

    from workers.runtime import NotDurable, check_durability, connect

    settings = load_settings()
    refuse_dev_defaults(settings)
    from workers.settings import switched_off

    for what, setting in switched_off(settings):
        click.echo(f"smsgw: {what} is off until {setting} is set", err=True)
    try:
        check_durability(connect(settings), settings.redis_durability)
    except NotDurable as e:
        raise click.ClickException(f"refusing to start (SMSGW_REDIS_DURABILITY=refuse): {e}") from None
    except redis.RedisError as e:
        raise redis_problem(e) from None
    import shutil
    import tempfile

    # Several gunicorn workers: prometheus-client's multiprocess mode merges their figures. The
    # directory must start empty, or a previous run's counters come back.
    # One folder per bind address (not a new one per start): SMSGW_RUN_DIR, else the temp dir.
    run_dir = os.environ.get("SMSGW_RUN_DIR") or tempfile.gettempdir()
    port = (bind or os.environ.get("SMSGW_BIND", "0.0.0.0:8080")).rpartition(":")[2]
    multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(run_dir, f"smsgw-prometheus-{port}")
    shutil.rmtree(multiproc, ignore_errors=True)
    os.makedirs(multiproc, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc
    conf = os.path.join(os.path.dirname(__file__), "gunicorn_conf.py")
    args = [sys.executable, "-m", "gunicorn", "-c", conf]
    if bind:  # on the command line, gunicorn takes these binds instead of its config's
        args += ["--bind", bind]
        if settings.metrics_bind and settings.metrics_bind != bind:
            args += ["--bind", settings.metrics_bind]
    if workers:
        args += ["--workers", str(workers)]
    os.execv(sys.executable, [*args, "gateway:create_app()"])


@cli.command()
@click.option("--burst", is_flag=True, help="stop when the queues are empty")
@click.option("--name", default=None, help="worker name (default: RQ's)")
@click.option(
    "--queues",
    default=None,
    help="comma-separated subset, in priority order (default: smsgw-high,smsgw-normal,smsgw-bulk)",
)
def worker(burst: bool, name: str | None, queues: str | None) -> None:
    """An RQ worker on smsgw's queues (high, normal, bulk), with the scheduler, the sweeper and
    a pool of SMSGW_CALLBACK_CONCURRENCY threads that deliver callbacks apart from the sends.
    """
    import faulthandler
    import signal

    import redis

    from workers.logs import configure
    from workers.runtime import NotDurable
    from workers.worker import run_worker

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    configure(fmt=os.environ.get("SMSGW_LOG_FORMAT", "json"))
    try:
        from workers.queues import WORKER_QUEUES

        chosen = tuple(q.strip() for q in queues.split(",")) if queues else WORKER_QUEUES
        unknown = set(chosen) - set(WORKER_QUEUES)
        if unknown:
            raise click.ClickException(f"unknown queue(s): {', '.join(sorted(unknown))}")
        settings = load_settings()
        refuse_dev_defaults(settings)
        run_worker(settings, burst=burst, name=name, queues=chosen)
    except redis.RedisError as e:
        raise redis_problem(e) from None
    except NotDurable as e:
        raise click.ClickException(f"refusing to start (SMSGW_REDIS_DURABILITY=refuse): {e}") from None


def _runtime() -> Any:
    from workers.runtime import Runtime

    return Runtime.from_settings(load_settings())


def _echo(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


@cli.group()
def accounts() -> None:
    """Provider accounts: list, hold, resume, pin a route."""


@accounts.command("list")
def accounts_list() -> None:
    """Each account's state (active, or held and why), balance and held chunks."""
    from gateway.operators import account_row

    rt = _runtime()
    _echo([account_row(rt, n) for n in rt.settings.accounts])


@accounts.command("hold")
@click.argument("name")
@click.option("--reason", default="held by an operator")
def accounts_hold(name: str, reason: str) -> None:
    """Stop all submissions on an account until it is resumed."""
    from workers import accounts as acc

    rt = _runtime()
    if name not in rt.settings.accounts:
        raise click.ClickException(f"unknown account {name!r}")
    acc.hold(rt.settings, rt.conn, name, 0, reason)
    click.echo(f"{name}: held ({reason})")


@accounts.command("reset-chunk-size")
@click.argument("name")
def accounts_reset_chunk_size(name: str) -> None:
    """The configured chunk size again at once (after answer 3 it is probed back up by itself)."""
    from workers import accounts as acc

    rt = _runtime()
    if name not in rt.settings.accounts:
        raise click.ClickException(f"unknown account {name!r}")
    acc.reset_chunk_size(rt.conn, name)
    click.echo(f"{name}: chunk size {acc.chunk_size(rt.conn, rt.settings, name)}")


@accounts.command("pin")
@click.argument("name")
@click.option("--to", "target", default=None, help="the account to send all of NAME's traffic to")
@click.option("--unpin", is_flag=True, help="let health decide again (failover and failback)")
def accounts_pin(name: str, target: str | None, unpin: bool) -> None:
    """Pin an account's route to an account (failover by hand), or unpin it."""
    from workers import routes

    rt = _runtime()
    if name not in rt.settings.accounts or (target is not None and target not in rt.settings.accounts):
        raise click.ClickException(f"unknown account {name if name not in rt.settings.accounts else target!r}")
    if unpin == (target is not None):
        raise click.ClickException("give either --to ACCOUNT or --unpin")
    if unpin:
        routes.unpin(rt.conn, rt.settings, name, by="operator (CLI)")
        click.echo(f"{name}: unpinned")
    else:
        assert target is not None
        routes.pin(rt.conn, rt.settings, name, target, by="operator (CLI)")
        click.echo(f"{name}: every priority goes to {target}")


@accounts.command("resume")
@click.argument("name")
def accounts_resume(name: str) -> None:
    """Make a held account active and send its held chunks, once each."""
    from workers.lifecycle import resume_account

    rt = _runtime()
    if name not in rt.settings.accounts:
        raise click.ClickException(f"unknown account {name!r}")
    count = resume_account(rt.settings, rt.conn, name, by="operator (CLI)")
    click.echo(f"{name}: active; {count} held chunk(s) sent again")


@cli.command()
@click.argument("message_id")
def status(message_id: str) -> None:
    """A message's state, counts and chunks, as the API shows it."""
    from gateway.messages import view

    found = view(_runtime().conn, message_id)
    if found is None:
        raise click.ClickException(f"no message {message_id}")
    _echo(found)


@cli.command()
@click.option("--account", default=None)
def balance(account: str | None) -> None:
    """The provider account's balance (asks the provider)."""
    rt = _runtime()
    name = account or rt.settings.default_account
    click.echo(f"{name}: {rt.client(name).balance()}")


@cli.command("send")
@click.option("--to", "to", multiple=True, required=True, help="a mobile; repeat for more")
@click.option("--text", required=True)
@click.option("--priority", type=click.Choice(["high", "normal", "bulk"]), default="normal", show_default=True)
@click.option("--account", default=None)
@click.option("--api", default="http://127.0.0.1:8080", show_default=True, help="the smsgw API to send through")
@click.option("--key", envvar="SMSGW_API_KEY", required=True, help="an API key (or SMSGW_API_KEY)")
def send_through_api(to: tuple[str, ...], text: str, priority: str, account: str | None, api: str, key: str) -> None:
    """Send a message through a running API (validation, idempotency and all)."""
    import requests

    body: dict[str, Any] = {"to": list(to), "text": text, "priority": priority}
    if account:
        body["account"] = account
    r = requests.post(f"{api}/v1/messages", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    _echo(r.json())
    if r.status_code >= 400:
        sys.exit(1)


@cli.command()
@click.option("--key", "key_name", default=None, help="an API key's name")
@click.option("--account", default=None, help="a provider account (default: the default account)")
@click.option("--from", "start", default=None, help="YYYY-MM-DD (default: 30 days before --to)")
@click.option("--to", "end", default=None, help="YYYY-MM-DD, China time (default: today)")
def usage(key_name: str | None, account: str | None, start: str | None, end: str | None) -> None:
    """Daily statistics as CSV, what finance reconciles against the provider's bill: requests,
    recipients, billable parts, suppressed, delivered, undelivered, unknown, failed."""
    import csv
    from datetime import date, timedelta

    from gateway.quotas import USAGE_FIELDS, today_date, usage_rows
    from workers.storage import schema

    rt = _runtime()
    last = date.fromisoformat(end) if end else today_date()
    first = date.fromisoformat(start) if start else last - timedelta(days=30)
    if key_name:
        rows = usage_rows(rt.conn, lambda day: schema.usage_key(key_name, day), first, last)
    else:
        name = account or rt.settings.default_account
        rows = usage_rows(rt.conn, lambda day: schema.account_usage_key(name, day), first, last)
    out = csv.writer(sys.stdout)
    out.writerow(["day", *USAGE_FIELDS])
    for row in rows:
        out.writerow([row["day"], *(row[f] for f in USAGE_FIELDS)])


@cli.group()
def suppressions() -> None:
    """The opt-out list (退订): export it to CSV, import a CSV (mobile[,reason])."""


@suppressions.command("export")
@click.option("--account", default=None)
def suppressions_export(account: str | None) -> None:
    """Every suppressed mobile of the account as CSV on stdout: mobile,reason,source,at."""
    import csv

    from workers.guardrails import suppressions as page

    rt = _runtime()
    name = account or rt.settings.default_account
    out = csv.writer(sys.stdout)
    out.writerow(["mobile", "reason", "source", "at"])
    cursor = 0
    while True:
        items, cursor = page(rt.conn, rt.settings, name, cursor, 1000)
        for item in items:
            out.writerow([item["mobile"], item.get("reason", ""), item.get("source", ""), item.get("at", "")])
        if not cursor:
            break


@suppressions.command("import")
@click.argument("path", type=click.File("r", encoding="utf-8"))
@click.option("--account", default=None)
def suppressions_import(path: Any, account: str | None) -> None:
    """Add the mobiles of a CSV (first column; an optional second is the reason; a header row
    is skipped). Invalid mobiles are reported and skipped."""
    import csv

    from workers.guardrails import opt_out
    from workers.mobiles import normalise

    rt = _runtime()
    name = account or rt.settings.default_account
    added = skipped = 0
    for row in csv.reader(path):
        if not row or row[0].strip().lower() == "mobile":
            continue
        mobile = normalise(row[0])
        if mobile is None:
            skipped += 1
            continue
        opt_out(rt.conn, rt.settings, name, mobile, (row[1] if len(row) > 1 else "") or "imported", "csv")
        added += 1
    click.echo(f"{name}: {added} suppressed, {skipped} invalid row(s) skipped")


@cli.group()
def failed() -> None:
    """Failed chunks: list them, send them again."""


@failed.command("list")
@click.option("--limit", default=50, show_default=True)
def failed_list(limit: int) -> None:
    """The latest failures, newest first, with their reason and current state."""
    from workers.lifecycle import latest_failures

    _echo(latest_failures(_runtime().conn, limit))


@failed.command("requeue")
@click.argument("chunks", nargs=-1, required=True)
def failed_requeue(chunks: tuple[str, ...]) -> None:
    """Send failed chunks (MESSAGE_ID:N, from message and chunk as listed) again; others are left alone."""
    from workers.lifecycle import requeue_failed
    from workers.storage.schema import MID_LENGTH

    malformed = [ref for ref in chunks if not _chunk_ref(ref, MID_LENGTH)]
    if malformed:
        raise click.ClickException(
            f"not a chunk (MESSAGE_ID:N, as `smsgw failed list` shows them): {', '.join(malformed)}"
        )
    rt = _runtime()
    for ref in chunks:  # safe to repeat: a chunk that is no longer failed is left alone
        mid, _, n = ref.rpartition(":")
        done = requeue_failed(rt.conn, rt.settings, mid, int(n), by="operator (CLI)")
        click.echo(f"{ref}: {'requeued' if done else 'not failed, or gone (left alone)'}")


def _chunk_ref(ref: str, mid_length: int) -> bool:
    mid, sep, n = ref.rpartition(":")
    hexdigits = set("0123456789abcdef")
    body = mid[1:] if mid.startswith("b") else mid
    return bool(sep) and n.isdigit() and len(body) == mid_length and set(body) <= hexdigits


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def simulator(ctx: click.Context) -> None:
    """The provider simulator (same options as smsgw-simulator)."""
    from devkit.simulator import main as simulator_main

    simulator_main(ctx.args)


def main() -> None:
    cli(prog_name="smsgw")


if __name__ == "__main__":
    main()
