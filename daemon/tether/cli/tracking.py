"""Starting to track responses: `tether track`, `tether submit`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether import render
from tether.cli.common import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    Context,
    JsonFlag,
    app,
    check_names,
    client_for,
    fail,
    out,
    parse_labels,
    quiet_logs,
)
from tether.config import Config
from tether.ids import valid_id

if TYPE_CHECKING:
    from tether.api import ResponsesClient
    from tether.models import Response
    from tether.store import Store



async def fetch_all(client: ResponsesClient, ids: list[str]) -> list[dict[str, Any] | BaseException]:
    import asyncio

    try:
        return await asyncio.gather(*(client.get(i) for i in ids), return_exceptions=True)
    finally:
        await client.aclose()


def store_tracked(
    config: Config,
    store: Store,
    items: list[tuple[str, dict[str, Any] | None]],
    *,
    account: str,
    policy: str | None,
    labels: dict[str, str],
) -> list[tuple[Response, bool]]:
    from tether import tracker
    from tether.pricing import Pricing

    quiet_logs()
    pricing = Pricing.from_config(config)
    with tracker.recording(store, "cli", time.time()) as rec:
        return [
            tracker.track(
                rec,
                config,
                pricing,
                response_id=rid,
                account=account,
                observed=observed,
                policy_requested=policy,
                labels=labels,
            )
            for rid, observed in items
        ]


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
    import asyncio

    from tether.api import NotFound

    context: Context = ctx.obj
    bad = [i for i in ids if not valid_id(i)]
    if bad:
        fail(EXIT_USAGE, f"invalid response id {bad[0]!r}: ids are letters, digits, '_' and '-'")
    config = context.config()
    account = check_names(config, policy, account)
    labels = parse_labels(label)
    ids = list(dict.fromkeys(ids))
    observed: list[dict[str, Any] | None] = [None] * len(ids)
    if not no_verify:
        results = asyncio.run(fetch_all(client_for(config, account), ids))
        missing = [i for i, r in zip(ids, results, strict=True) if isinstance(r, NotFound)]
        if missing:
            fail(EXIT_NOT_FOUND, f"no response {', '.join(missing)} on account {account!r}; nothing was tracked")
        failed = [(i, r) for i, r in zip(ids, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            rid, exc = failed[0]
            fail(EXIT_FAILURE, f"could not look up {rid}: {exc}; nothing was tracked (retry, or use --no-verify)")
        observed = list(results)  # type: ignore[arg-type]
    store = context.store(config)
    tracked = store_tracked(config, store, list(zip(ids, observed, strict=True)), account=account, policy=policy, labels=labels)
    for row, created in tracked:
        if as_json:
            print(render.dumps(render.record(row)))
        else:
            note = "tracked" if created else "already tracked"
            out.print(f"{note} {row.id}  status={row.status or 'unseen'}  policy={row.policy or '-'}")


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

    from tether.api import APIError, TransientError

    context: Context = ctx.obj
    config = context.config()
    account = check_names(config, policy, account)
    labels = parse_labels(label)
    body = read_body(file)
    body["background"] = True
    client = client_for(config, account)

    async def create() -> dict[str, Any]:
        try:
            return await client.create(body)
        finally:
            await client.aclose()

    try:
        created = asyncio.run(create())
    except TransientError as exc:
        if not exc.delivered:
            fail(EXIT_FAILURE, f"the API did not take the request ({exc}): nothing was created; submit it again later")
        fail(EXIT_FAILURE, f"the request failed after it was sent ({exc}): it may have created a response "
             "whose id tether did not get; make sure it did not before you submit again "
             "(tether never sends a create twice)")
    except APIError as exc:
        code = EXIT_USAGE if exc.status in (400, 422) else EXIT_FAILURE
        fail(code, f"the API refused the request: {exc}")
    rid = created.get("id")
    if not isinstance(rid, str) or not valid_id(rid):
        fail(EXIT_FAILURE, f"the API answered without a usable response id: {str(rid)[:80]!r}")
    store = context.store(config)
    [(row, _)] = store_tracked(config, store, [(rid, created)], account=account, policy=policy, labels=labels)
    print(render.dumps(render.record(row)) if as_json else row.id)


def read_body(file: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as exc:
        fail(EXIT_USAGE, f"cannot read {file}: {exc.strerror}")
    try:
        body = json.loads(text)
    except ValueError as exc:
        fail(EXIT_USAGE, f"{'stdin' if file == '-' else file}: not valid JSON ({exc})")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        fail(EXIT_USAGE, "the request body must be a JSON object with a \"model\"")
    return body
