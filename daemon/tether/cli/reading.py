"""Reading what is tracked: `tether ls`, `tether show`, `tether log`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Annotated

import typer

from tether import render
from tether.cli.common import (
    EXIT_USAGE,
    Context,
    JsonFlag,
    app,
    check_policy,
    err,
    fail,
    load_response,
    out,
    parse_labels,
)
from tether.config import ConfigError, parse_duration
from tether.ids import valid_id

if TYPE_CHECKING:
    from tether.models import Event
    from tether.store import Store


@app.command("ls")
def list_responses(
    ctx: typer.Context,
    status: Annotated[list[str] | None, typer.Option(help="Only this status (repeatable).")] = None,
    active: Annotated[bool, typer.Option("--active", help="Only responses not yet finished.")] = False,
    policy: Annotated[str | None, typer.Option(help="Only responses under this policy.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="K=V: only responses with this label.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Tracked responses, newest first."""
    context: Context = ctx.obj
    known = {"queued", "in_progress", "completed", "failed", "cancelled", "incomplete", "lost"}
    for s in status or []:
        if s not in known:
            fail(EXIT_USAGE, f"--status {s!r}: expected one of {', '.join(sorted(known))}")
    from sqlalchemy import or_, select
    from sqlmodel import col

    from tether.models import FINAL, Response

    labels = parse_labels(label)
    config = context.config()
    store = context.store(config)
    query = select(Response).order_by(col(Response.tracked_at).desc(), col(Response.id))
    if status:
        query = query.where(col(Response.status).in_(status))
    if active:
        query = query.where(or_(col(Response.status).is_(None), col(Response.status).not_in(FINAL)))
    if policy:
        query = query.where(col(Response.policy) == policy)
    with store.reading() as session:
        if policy and config.policy_named(policy) is None:
            stored = session.execute(select(col(Response.policy)).distinct().where(col(Response.policy).is_not(None))).scalars()
            check_policy(config, policy, set(stored))
        if not labels:
            query = query.limit(limit)
        matching = (r for r in session.execute(query).scalars() if all(r.labels.get(k) == v for k, v in labels.items()))
        rows = list(islice(matching, limit))
    if as_json:
        print(render.dumps([render.record(r) for r in rows]))
    elif rows:
        out.print(render.responses_table(rows, time.time()))
    else:
        err.print("no tracked responses match", style="dim")


@app.command()
def show(ctx: typer.Context, response_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False) -> None:
    """One response with its whole event history."""
    context: Context = ctx.obj
    config = context.config()
    row, events = load_response(context.store(config), response_id)
    if as_json:
        print(render.dumps({**render.record(row), "events": [render.event(e) for e in events]}))
        return
    out.print(render.response_table(row))
    out.print()
    for ev in events:
        out.print(render.event_line(ev))


def parse_since(value: str, now: float) -> float:
    try:
        return now - parse_duration(value, "--since")
    except ConfigError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(EXIT_USAGE, f"--since {value!r}: expected a duration (\"10m\", \"2h\") or an ISO 8601 timestamp")
    if moment.tzinfo is None:
        fail(EXIT_USAGE, f"--since {value!r}: give the timestamp a timezone, e.g. {value}Z")
    return moment.timestamp()


@app.command("log")
def event_log(
    ctx: typer.Context,
    response_id: Annotated[str | None, typer.Option("--id", help="Only this response's events.")] = None,
    since: Annotated[str | None, typer.Option(help="A duration (\"1h\") or an ISO 8601 timestamp.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """The event history, oldest first (new events as they come with --follow)."""
    context: Context = ctx.obj
    if response_id is not None and not valid_id(response_id):
        fail(EXIT_USAGE, f"invalid response id {response_id!r}: ids are letters, digits, '_' and '-'")
    after_time = parse_since(since, time.time()) if since else None
    config = context.config()
    store = context.store(config)
    last_id = 0
    try:
        while True:
            for ev in read_events(store, last_id, response_id, after_time):
                last_id = max(last_id, ev.id or 0)
                if as_json:
                    print(render.dumps(render.event(ev)), flush=True)
                else:
                    out.print(render.event_line(ev))
            if not follow:
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


def read_events(store: Store, after_id: int, response_id: str | None, after_time: float | None) -> Iterator[Event]:
    from sqlalchemy import select
    from sqlmodel import col

    from tether.models import Event

    # Time order: an event is written after the moment it records, so the ids of
    # events from the daemon and the CLI do not always follow their times.
    query = select(Event).where(col(Event.id) > after_id).order_by(col(Event.at), col(Event.id))
    if response_id:
        query = query.where(col(Event.response_id) == response_id)
    if after_time is not None:
        query = query.where(col(Event.at) >= after_time)
    with store.reading() as session:
        yield from list(session.execute(query).scalars())
