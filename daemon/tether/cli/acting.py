"""Acting on tracked responses and budgets: `tether cancel`, `tether budget`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from tether import render
from tether.cli.common import (
    EXIT_FAILURE,
    Context,
    JsonFlag,
    app,
    client_for,
    err,
    fail,
    load_response,
    out,
    quiet_logs,
)

if TYPE_CHECKING:
    pass


@app.command()
def cancel(
    ctx: typer.Context,
    response_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str | None, typer.Option(help="A note kept with the cancel (the reason is `manual`).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel a tracked response now."""
    import asyncio

    from tether import cancelling, tracker
    from tether.models import TERMINAL, CancelState, Response
    from tether.pricing import Pricing

    quiet_logs()
    context: Context = ctx.obj
    config = context.config()
    store = context.store(config)
    row, _ = load_response(store, response_id)
    if row.status in TERMINAL or row.status == "lost":
        out.print(f"{row.id} is already {row.status}; nothing to cancel")
        return
    with tracker.recording(store, "cli", time.time()) as rec:
        row = rec.session.get_one(Response, response_id)
        tracker.request_cancel(rec, row, "manual", note=reason)
    client = client_for(config, row.account)

    async def send() -> cancelling.Outcome:
        try:
            return await cancelling.send(client, row.id, row.status, time.time(), retry=None)
        finally:
            await client.aclose()

    outcome = asyncio.run(send())
    with tracker.recording(store, "cli", time.time()) as rec:
        row = rec.session.get_one(Response, response_id)
        if outcome.failed is None:
            cancelling.settle(rec, row, outcome, config, Pricing.from_config(config))
        else:
            cancelling.record_failure(rec, row, outcome.failed, config)
    if outcome.failed is not None:
        if row.cancel_state == CancelState.PENDING.value:
            fail(EXIT_FAILURE, f"cancel of {response_id} failed: {outcome.failed}; it is recorded and a running daemon retries it")
        fail(EXIT_FAILURE, f"cancel of {response_id} failed: {outcome.failed}; it is now {row.status}: nothing left to cancel")
    if as_json:
        print(render.dumps(render.record(row)))
    else:
        out.print(f"cancel sent: {row.id} is {row.status}")


@app.command()
def budget(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Budget windows: limit, spent, committed, remaining, state."""
    from tether import accounting
    from tether.pricing import Pricing

    context: Context = ctx.obj
    config = context.config()
    store = context.store(config)
    with store.reading() as session:
        measured = accounting.measure(session, config, Pricing.from_config(config), time.time())
    states = [m.state for m in measured]
    if as_json:
        print(render.dumps([render.budget(state) for state in states]))
    elif states:
        out.print(render.budgets_table(states))
    else:
        err.print("no budgets configured (add [[budget]] tables to the config)", style="dim")
