"""Reading what is tracked: `tether ls`, `tether show`, `tether log`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from tether import actions, render
from tether.cli.common import EXIT_USAGE, Context, JsonFlag, app, err, fail, out, parse_labels, refusals
from tether.config import ConfigError, parse_duration

if TYPE_CHECKING:
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
    statuses = status or []
    with refusals():
        actions.check_statuses(statuses)
    labels = parse_labels(label)
    config = context.config()
    if remote := context.remote():
        params = {
            "status": statuses,
            "active": str(active).lower(),
            "policy": policy,
            "label": [f"{k}={v}" for k, v in labels.items()],
            "limit": limit,
        }
        records = remote.call("GET", "/api/responses", params={k: v for k, v in params.items() if v is not None})
    else:
        with refusals():
            records = actions.list_records(
                context.store(config),
                config,
                statuses=statuses,
                active=active,
                policy=policy,
                labels=labels,
                limit=limit,
            )
    if as_json:
        print(render.dumps(records))
    elif records:
        out.print(render.responses_table(records, time.time()))
    else:
        err.print("no tracked responses match", style="dim")


@app.command()
def show(
    ctx: typer.Context, response_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False
) -> None:
    """One response with its whole event history."""
    context: Context = ctx.obj
    with refusals():
        actions.checked_id(response_id)
    config = context.config()
    if remote := context.remote():
        shown = remote.call("GET", f"/api/responses/{response_id}")
    else:
        with refusals():
            shown = actions.show_record(context.store(config), response_id)
    if as_json:
        print(render.dumps(shown))
        return
    out.print(render.response_table(shown))
    out.print()
    for ev in shown["events"]:
        out.print(render.event_line(ev))


def parse_since(value: str, now: float) -> float:
    try:
        return now - parse_duration(value, "--since")
    except ConfigError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(EXIT_USAGE, f'--since {value!r}: expected a duration ("10m", "2h") or an ISO 8601 timestamp')
    if moment.tzinfo is None:
        fail(EXIT_USAGE, f"--since {value!r}: give the timestamp a timezone, e.g. {value}Z")
    return moment.timestamp()


@app.command("log")
def event_log(
    ctx: typer.Context,
    response_id: Annotated[str | None, typer.Option("--id", help="Only this response's events.")] = None,
    since: Annotated[str | None, typer.Option(help='A duration ("1h") or an ISO 8601 timestamp.')] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """The event history, oldest first (new events as they come with --follow)."""
    context: Context = ctx.obj
    if response_id is not None:
        with refusals():
            actions.checked_id(response_id)
    after_time = parse_since(since, time.time()) if since else None
    config = context.config()
    if remote := context.remote():
        params = {k: v for k, v in (("response_id", response_id), ("since", after_time)) if v is not None}
        events = remote.events(params) if follow else iter(remote.call("GET", "/api/events", params=params))
    else:
        events = store_events(context.store(config), response_id, after_time, follow)
    try:
        for ev in events:
            ev.pop("id", None)
            if as_json:
                print(render.dumps(ev), flush=True)
            else:
                out.print(render.event_line(ev))
    except KeyboardInterrupt:
        return


def store_events(store: Store, response_id: str | None, after_time: float | None, follow: bool) -> Iterator[dict]:
    last_id = 0
    while True:
        for ev in actions.read_events(store, rid=response_id, since=after_time, after_id=last_id):
            last_id = max(last_id, ev["id"])
            yield ev
        if not follow:
            return
        time.sleep(0.5)
