"""Operations: the health probe, store migrations, the demo: `tether check`, `tether db upgrade`, `tether demo`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from tether import render
from tether.cli.common import EXIT_FAILURE, Context, app, db_app, fail, out, quiet_logs

if TYPE_CHECKING:
    pass


HEARTBEAT_STALE = 30.0  # seconds without a heartbeat before `tether check` fails


@app.command()
def check(ctx: typer.Context) -> None:
    """Health probe: exit 0 when a daemon runs on the store (its lock is held) and its heartbeat is fresh."""
    from sqlalchemy.exc import OperationalError

    from tether.models import Heartbeat
    from tether.store import Store, StoreError, sqlite_path, writer_lock

    context: Context = ctx.obj
    config = context.config()
    path = sqlite_path(config.store.url)
    if path is not None and not path.exists():
        fail(EXIT_FAILURE, f"unhealthy: the store {path} does not exist: no daemon has run with this config")
    try:
        store = Store(config.store.url)
        with store.reading() as session:
            beat = session.get(Heartbeat, "daemon")
        running = writer_lock(store).in_use()
    except OperationalError as exc:
        fail(EXIT_FAILURE, f"unhealthy: store {config.store.url} is not readable: {exc.orig}")
    except StoreError as exc:
        fail(EXIT_FAILURE, f"unhealthy: {exc}")
    if beat is None:
        fail(EXIT_FAILURE, "unhealthy: no daemon has ever run on this store")
    daemon = f"pid {beat.pid} on {beat.host}"
    if beat.stopped_at is not None:
        fail(EXIT_FAILURE, f"unhealthy: the daemon ({daemon}) stopped at {render.iso(beat.stopped_at)}; none is running")
    if running is False:
        fail(
            EXIT_FAILURE,
            f"unhealthy: the daemon is not running: its lock on the store is free ({daemon} did not stop cleanly; "
            f"its last heartbeat was {time.time() - beat.beat_at:.0f}s ago)",
        )
    age = time.time() - beat.beat_at
    if age > HEARTBEAT_STALE:
        fail(EXIT_FAILURE, f"unhealthy: the daemon's last heartbeat was {age:.0f}s ago ({daemon})")
    out.print(f"healthy: daemon {daemon}, heartbeat {age:.1f}s ago")


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
