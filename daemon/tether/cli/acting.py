"""Acting on tracked responses and budgets: `tether cancel`, `tether budget`."""

from __future__ import annotations

from typing import Annotated

import typer

from tether import actions, render
from tether.cli.common import Context, JsonFlag, app, client_for, err, exit_for, fail, out, quiet_logs, refusals


@app.command()
def cancel(
    ctx: typer.Context,
    response_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str | None, typer.Option(help="A note kept with the cancel (the reason is `manual`).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel a tracked response now."""
    context: Context = ctx.obj
    with refusals():
        actions.checked_id(response_id)
    if remote := context.remote():
        answer = remote.call("POST", f"/api/responses/{response_id}/cancel", body={"reason": reason}, accept=(409,))
        if "message" in answer:  # 409: it had finished already
            out.print(answer["message"])
            return
        record = answer
    else:
        record = cancel_here(context, response_id, reason)
    if as_json:
        print(render.dumps(record))
    else:
        out.print(f"cancel sent: {record['id']} is {record['status']}")


def cancel_here(context: Context, response_id: str, reason: str | None) -> dict:
    import asyncio

    from tether.pricing import Pricing

    quiet_logs()
    config = context.config()
    store = context.store(config)
    clients = []

    def client(account: str):
        clients.append(client_for(config, account))
        return clients[-1]

    async def run(fn):
        return fn()

    async def cancel_it():
        try:
            return await actions.cancel(
                store, config, Pricing.from_config(config), client, response_id, reason, run=run, origin="cli"
            )
        finally:
            for c in clients:
                await c.aclose()

    try:
        row, failure = asyncio.run(cancel_it())
    except actions.Refused as exc:
        if exc.status == 409:
            out.print(exc.message)
            raise typer.Exit(0) from None
        fail(exit_for(exc.status), exc.message)
    if failure is not None:
        fail(exit_for(failure.status), failure.message)
    return render.record(row)


@app.command()
def budget(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Budget windows: limit, spent, committed, remaining, state."""
    from tether.pricing import Pricing

    context: Context = ctx.obj
    config = context.config()
    if remote := context.remote():
        budgets = remote.call("GET", "/api/budgets")
    else:
        budgets = actions.budget_records(context.store(config), config, Pricing.from_config(config))
    if as_json:
        print(render.dumps(budgets))
    elif budgets:
        out.print(render.budgets_table(budgets))
    else:
        err.print("no budgets configured (add [[budget]] tables to the config)", style="dim")
