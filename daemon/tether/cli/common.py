"""What every command shares: the Typer app, the consoles, exit codes, the config and store of a run."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from tether.actions import Refused
from tether.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from tether.api import ResponsesClient
    from tether.cli.remote import Remote
    from tether.store import Store


EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFIG = 1, 2, 3, 78


app = typer.Typer(
    name="tether",
    help="Keeps OpenAI background responses on a tether: tracks, polls, enforces timeouts, cancels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Store maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")

# markup=False, emoji=False: response metadata, labels and config values are data, never
# rich markup or :emoji: codes.
# Off a terminal (a pipe, a log) tables get room instead of rich's 80-column default.
out = Console(soft_wrap=True, markup=False, emoji=False, highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(
    stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False, width=None if sys.stderr.isatty() else 200
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@dataclass
class Context:
    config_path: str | None
    _config: Config | None = field(default=None, repr=False)

    def config(self) -> Config:
        config = self._config
        if config is None:
            try:
                config = self._config = load_config(self.config_path)
            except ConfigError as exc:
                fail(EXIT_CONFIG, f"invalid configuration: {exc}")
        return config

    def remote(self) -> Remote | None:
        """The running daemon to ask, when one answers on the configured socket."""
        from tether.cli.remote import reach

        return reach(self.config().server.socket)

    def store(self, config: Config) -> Store:
        from tether.store import Store, StoreError

        try:
            store = Store(config.store.url)
            store.ensure_schema()
            return store
        except StoreError as exc:
            fail(EXIT_FAILURE, str(exc))


def fail(code: int, message: str) -> NoReturn:
    err.print(f"tether: {message}")
    raise typer.Exit(code)


def exit_for(status: int) -> int:
    """The exit code of a refusal's HTTP status (tether.actions.Refused, or the daemon's answer)."""
    return {400: EXIT_USAGE, 404: EXIT_NOT_FOUND}.get(status, EXIT_FAILURE)


@contextmanager
def refusals() -> Iterator[None]:
    """An operation refused ends the command with its message and exit code."""
    try:
        yield
    except Refused as exc:
        fail(exit_for(exc.status), exc.message)


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option("--config", metavar="PATH", help="Config file (else $TETHER_CONFIG, ./tether.toml, …)."),
    ] = None,
) -> None:
    ctx.obj = Context(config)


def quiet_logs() -> None:
    """The CLI's event lines reach the daemon's log when it picks the events up (at its
    next start if it is not running); the CLI itself speaks through its messages."""
    from tether import logs

    logs.configure_when_used("console", "error")


def parse_labels(values: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(EXIT_USAGE, f"--label {item!r}: expected KEY=VALUE")
        labels[key.strip()] = value
    return labels


def client_for(config: Config, account: str) -> ResponsesClient:
    from tether.api import ResponsesClient

    try:
        return ResponsesClient(config.accounts[account], config.accounts[account].read_api_key(), brief=True)
    except ConfigError as exc:
        fail(EXIT_CONFIG, f"invalid configuration: {exc}")
