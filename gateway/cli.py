"""The ``smsgw`` command: one entry point for every role (run, api, worker, simulator, …)."""

from __future__ import annotations

import os
import sys

import click

from workers.settings import Settings, SettingsError, settings_from_env


def load_settings(redis_url: str | None = None) -> Settings:
    try:
        return settings_from_env(os.environ, redis_url=redis_url)
    except SettingsError as e:
        raise click.ClickException(f"configuration: {e}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """smsgw: an outbound SMS gateway for the 通用短信平台 HTTP API."""


@cli.command()
@click.option("--api-port", default=8080, show_default=True, help="port of the API on 127.0.0.1")
@click.option("--simulator-port", default=8081, show_default=True, help="port of the simulator")
def run(api_port: int, simulator_port: int) -> None:
    """Everything local: a private Redis, the provider simulator, the API and a worker.

    Ctrl-C stops all of it. Nothing needs configuring; SMSGW_* variables still apply.
    """
    from gateway.devrun import run_local

    run_local(api_port=api_port, simulator_port=simulator_port)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def simulator(ctx: click.Context) -> None:
    """The provider simulator (same options as smsgw-simulator)."""
    from workers.simulator import main as simulator_main

    simulator_main(ctx.args)


def main() -> None:
    cli(prog_name="smsgw")


if __name__ == "__main__":
    sys.exit(main())
