"""The `sluice` command line: parse options, open the environment, call one library function,
render its result. Every command takes `--json`; every failure exits non-zero with the message
and the next command to try."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sluice.cli.render import err_console, print_json
from sluice.config import EnvConfig, load_config
from sluice.env import Env, open_env
from sluice.errors import SluiceError

app = typer.Typer(
    name="sluice",
    help="A telemetry data lake that can be replayed: nothing lost, nothing doubled.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass
class Options:
    env_name: str
    data_dir: Path | None
    config_file: Path | None
    json: bool
    assume_role: bool = True

    def config(self) -> EnvConfig:
        cfg = load_config(self.env_name, config_file=self.config_file, data_dir=self.data_dir)
        return cfg if self.assume_role else replace(cfg, assume_role=False)

    def open(self) -> Env:
        return open_env(self.config())


def options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.callback()
def root(
    ctx: typer.Context,
    env: Annotated[str, typer.Option("--env", help="Environment in sluice.toml.")] = "local",
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="SLUICE_DATA_DIR", help="Embedded data directory."),
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="Path of sluice.toml (default: ./sluice.toml).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    assume_role: Annotated[
        bool,
        typer.Option(
            "--assume-role/--no-assume-role",
            help="Assume the environment's role_arn (AWS); --no-assume-role uses your own.",
        ),
    ] = True,
) -> None:
    ctx.obj = Options(env, data_dir, config_file, json_output, assume_role)


def wants_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or options(ctx).json


def fail(exc: SluiceError, as_json: bool) -> None:
    if as_json:
        print_json(exc.to_dict())
    else:
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err_console.print(f"[yellow]next:[/] {escape(exc.hint)}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        # Standalone mode: typer prints usage errors itself and exits 2.
        app(args, prog_name="sluice")
    except SluiceError as exc:
        fail(exc, "--json" in args)
        sys.exit(1)


def _register_commands() -> None:
    """Import every module of sluice.cli.commands: each registers its commands on `app`.

    Done last, because those modules import `app` from here."""
    import importlib
    import pkgutil

    import sluice.cli.commands as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


_register_commands()
