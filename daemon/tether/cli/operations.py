"""Operations: the health probe, store migrations, the demo: `tether check`, `tether db upgrade`, `tether demo`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from tether import actions
from tether.cli.common import EXIT_FAILURE, Context, app, db_app, fail, out, quiet_logs

if TYPE_CHECKING:
    pass


@app.command()
def check(ctx: typer.Context) -> None:
    """Health probe: exit 0 when a daemon runs on the store (its lock is held) and its heartbeat is fresh."""
    context: Context = ctx.obj
    config = context.config()
    if remote := context.remote():
        answer = remote.call("GET", "/api/health")
        healthy, message = answer["healthy"], answer["message"]
    else:
        healthy, message = check_here(config)
    if not healthy:
        fail(EXIT_FAILURE, message)
    out.print(message)


def check_here(config) -> tuple[bool, str]:
    from sqlalchemy.exc import OperationalError

    from tether.store import Store, StoreError, sqlite_path, writer_lock

    path = sqlite_path(config.store.url)
    if path is not None and not path.exists():
        return False, f"unhealthy: the store {path} does not exist: no daemon has run with this config"
    try:
        store = Store(config.store.url)
        return actions.health(store, writer_lock(store).in_use(), time.time())
    except OperationalError as exc:
        return False, f"unhealthy: store {config.store.url} is not readable: {exc.orig}"
    except StoreError as exc:
        return False, f"unhealthy: {exc}"


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply schema migrations (the daemon also applies them at start)."""
    from tether.store import Store, StoreError

    config = ctx.obj.config()
    try:
        applied = Store(config.store.url).migrate()
    except StoreError as exc:
        fail(EXIT_FAILURE, str(exc))
    out.print(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@app.command()
def demo(
    ctx: typer.Context,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the demo's folder (store, config, daemon log).")] = False,
) -> None:
    """A self-contained demonstration against a built-in stand-in of the API: no key needed."""
    from tether.demo import run_demo

    quiet_logs()
    raise typer.Exit(run_demo(out, keep=keep))
