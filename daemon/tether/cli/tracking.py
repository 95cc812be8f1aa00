"""Starting to track responses: `tether track`, `tether submit`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether import actions, render
from tether.cli.common import (
    EXIT_USAGE,
    Context,
    JsonFlag,
    app,
    client_for,
    fail,
    out,
    parse_labels,
    quiet_logs,
    refusals,
)
from tether.config import Config

if TYPE_CHECKING:
    from tether.models import Response
    from tether.store import Store


def store_tracked(
    config: Config,
    store: Store,
    items: list[tuple[str, dict[str, Any] | None]],
    *,
    account: str,
    policy: str | None,
    labels: dict[str, str],
) -> list[tuple[Response, bool]]:
    """Track responses in the store the CLI opened (without a daemon to ask)."""
    quiet_logs()
    return actions.track_rows(config, store, items, account=account, policy=policy, labels=labels, origin="cli")


@app.command()
def track(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(help="Response ids to track.", show_default=False)],
    policy: Annotated[str | None, typer.Option(help="Apply this policy instead of matching.")] = None,
    account: Annotated[str | None, typer.Option(help="The account the responses belong to.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="K=V, repeatable; policies can match labels.")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Store without looking the ids up first.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start tracking existing responses (re-tracking is a no-op)."""
    context: Context = ctx.obj
    with refusals():
        for rid in ids:
            actions.checked_id(rid)
    config = context.config()
    remote = context.remote()
    if remote is None:
        with refusals():
            chosen = actions.check_names(config, policy, account)
    labels = parse_labels(label)
    ids = list(dict.fromkeys(ids))
    if remote is not None:
        answer = remote.call(
            "POST",
            "/api/responses",
            body={"ids": ids, "policy": policy, "account": account, "labels": labels, "verify": not no_verify},
        )
        tracked = [(record, record["id"] in answer["new"]) for record in answer["responses"]]
    else:
        tracked = track_here(context, config, ids, policy=policy, account=chosen, labels=labels, verify=not no_verify)
    for record, created in tracked:
        if as_json:
            print(render.dumps(record))
        else:
            note = "tracked" if created else "already tracked"
            out.print(f"{note} {record['id']}  status={record['status'] or 'unseen'}  policy={record['policy'] or '-'}")


def track_here(
    context: Context,
    config: Config,
    ids: list[str],
    *,
    policy: str | None,
    account: str,
    labels: dict[str, str],
    verify: bool,
) -> list[tuple[dict[str, Any], bool]]:
    import asyncio

    observed: list[dict[str, Any] | None] = [None] * len(ids)
    if verify:
        client = client_for(config, account)

        async def look_up() -> list[dict[str, Any]]:
            try:
                return await actions.look_up(client, ids, account)
            finally:
                await client.aclose()

        with refusals():
            observed = [*asyncio.run(look_up())]
    store = context.store(config)
    tracked = store_tracked(
        config, store, list(zip(ids, observed, strict=True)), account=account, policy=policy, labels=labels
    )
    return [(render.record(row), created) for row, created in tracked]


@app.command()
def submit(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="JSON request body for POST /v1/responses, or - for stdin.")] = "-",
    policy: Annotated[str | None, typer.Option(help="Apply this policy instead of matching.")] = None,
    account: Annotated[str | None, typer.Option(help="The account to send it with.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="K=V, repeatable.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a background response from a request body, track it, print its id."""
    import asyncio

    context: Context = ctx.obj
    config = context.config()
    remote = context.remote()
    if remote is None:
        with refusals():
            chosen = actions.check_names(config, policy, account)
    labels = parse_labels(label)
    body = read_body(file)
    if remote is not None:
        record = remote.call(
            "POST", "/api/responses/submit", body={"body": body, "policy": policy, "account": account, "labels": labels}
        )
    else:
        client = client_for(config, chosen)

        async def create() -> dict[str, Any]:
            try:
                return await actions.create(client, body)
            finally:
                await client.aclose()

        with refusals():
            created = asyncio.run(create())
        store = context.store(config)
        [(row, _)] = store_tracked(
            config, store, [(created["id"], created)], account=chosen, policy=policy, labels=labels
        )
        record = render.record(row)
    print(render.dumps(record) if as_json else record["id"])


def read_body(file: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as exc:
        fail(EXIT_USAGE, f"cannot read {file}: {exc.strerror}")
    try:
        body = json.loads(text)
    except ValueError as exc:
        fail(EXIT_USAGE, f"{'stdin' if file == '-' else file}: not valid JSON ({exc})")
    with refusals():
        return actions.checked_body(body)
