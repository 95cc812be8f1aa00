"""What every command shares: the Typer app, the consoles, exit codes, the config and store of a run."""

from __future__ import annotations

import sys
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from tether.config import Config, ConfigError, load_config
from tether.ids import valid_id

if TYPE_CHECKING:
    from tether.api import ResponsesClient
    from tether.models import Event, Response
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
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False,
              width=None if sys.stderr.isatty() else 200)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@dataclass
class Context:
    config_path: str | None

    def config(self) -> Config:
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            fail(EXIT_CONFIG, f"invalid configuration: {exc}")

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


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        str | None, typer.Option("--config", metavar="PATH", help="Config file (else $TETHER_CONFIG, ./tether.toml, …).")
    ] = None,
) -> None:
    ctx.obj = Context(config)


def quiet_logs() -> None:
    """The CLI's event lines reach the daemon's log when it picks the events up (at its
    next start if it is not running); the CLI itself speaks through its messages."""
    from tether import logs

    logs.configure("console", "error")


def parse_labels(values: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(EXIT_USAGE, f"--label {item!r}: expected KEY=VALUE")
        labels[key.strip()] = value
    return labels


def check_policy(config: Config, policy: str, stored: AbstractSet[str] = frozenset()) -> None:
    """A policy named on the command line must be configured, or (to select responses) at
    least be the policy of some stored response: one removed from the config since."""
    if config.policy_named(policy) is not None or policy in stored:
        return
    known = ", ".join(p.name for p in config.policies) or "none configured"
    former = sorted(stored - {p.name for p in config.policies})
    if former:
        known += f"; no longer configured but in the store: {', '.join(former)}"
    fail(EXIT_USAGE, f"--policy {policy!r}: no such policy (known: {known})")


def check_names(config: Config, policy: str | None, account: str | None) -> str:
    if policy is not None:
        check_policy(config, policy)
    if account is not None and account not in config.accounts:
        fail(EXIT_USAGE, f"--account {account!r}: no such account (known: {', '.join(config.accounts)})")
    return account or config.default_account


def client_for(config: Config, account: str) -> ResponsesClient:
    from tether.api import ResponsesClient

    try:
        return ResponsesClient(config.accounts[account], config.accounts[account].read_api_key())
    except ConfigError as exc:
        fail(EXIT_CONFIG, f"invalid configuration: {exc}")


def load_response(store: Store, rid: str) -> tuple[Response, list[Event]]:
    from sqlalchemy import select
    from sqlmodel import col

    from tether.models import Event, Response

    if not valid_id(rid):
        fail(EXIT_USAGE, f"invalid response id {rid!r}: ids are letters, digits, '_' and '-'")
    with store.reading() as session:
        row = session.get(Response, rid)
        if row is None:
            fail(EXIT_NOT_FOUND, f"{rid} is not tracked (see `tether ls`, or `tether track {rid}`)")
        query = select(Event).where(col(Event.response_id) == rid).order_by(col(Event.at), col(Event.id))
        events = list(session.execute(query).scalars())
    return row, events
