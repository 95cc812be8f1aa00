"""Running the daemon, and checking the config it runs with: `tether run`, `tether check-config`."""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether import render
from tether.cli.common import EXIT_CONFIG, EXIT_FAILURE, Context, JsonFlag, app, err, fail, out
from tether.config import Config, ConfigError

if TYPE_CHECKING:
    pass


@app.command()
def run(ctx: typer.Context) -> None:
    """Run the daemon in the foreground (systemd's ExecStart)."""
    import asyncio

    from sqlalchemy.exc import OperationalError

    from tether import logs
    from tether.cluster import Cluster
    from tether.daemon import Daemon
    from tether.store import AdvisoryLock, Store, StoreError, writer_lock

    context: Context = ctx.obj
    config = context.config()
    logs.configure(config.log.format, config.log.level)
    try:
        for account in config.accounts.values():
            account.read_api_key()
            if (loose := account.key_file_warning()) is not None:
                logs.log.warning("config.key_file_readable", error=loose)
        config.server.read_token()
        if config.webhooks is not None:
            config.webhooks.read_secret()
    except ConfigError as exc:
        fail(EXIT_CONFIG, f"invalid configuration: {exc}")
    cluster = None
    try:
        store = Store(config.store.url)
        lock = writer_lock(store)
        lock.acquire()  # before migrating: a daemon of an older version is refused first
        store.ensure_schema()  # migrations take the writers' turn: daemons starting together apply them once
        if isinstance(lock, AdvisoryLock):  # several daemons may share a PostgreSQL store
            cluster = Cluster(store, lock.connection, config.cluster.takeover)
            cluster.join()
            store.instance = cluster.instance
            store.pin_writer(lock.connection)
    except StoreError as exc:
        fail(EXIT_FAILURE, str(exc))
    except OperationalError as exc:
        fail(EXIT_FAILURE, str(store.unreachable(exc)))
    try:
        daemon = Daemon(config, store, config_path=context.config_path, lock=lock, cluster=cluster)
        code = asyncio.run(daemon.run())
    finally:
        lock.release()
    raise typer.Exit(code)


@app.command("check-config")
def check_config(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only validate the file: print nothing unless it is invalid.")
    ] = False,
) -> None:
    """Validate the config; print its accounts, policies and budgets; exit 0 or 78."""
    config: Config = ctx.obj.config()
    if quiet:  # systemd's ExecReload: the daemon re-reads keys itself
        return
    accounts, warnings = [], []
    for account in config.accounts.values():
        try:
            account.read_api_key()
            key = "ok"
        except ConfigError as exc:
            key = "missing"
            warnings.append(f"warning: {exc} (the daemon will refuse to start without it)")
        if (loose := account.key_file_warning()) is not None:
            warnings.append(f"warning: {loose}")
        accounts.append(
            {"name": account.name, "base_url": account.base_url, "key_source": account.key_source(), "key": key}
        )
    if config.webhooks is not None:
        try:
            config.webhooks.read_secret()
        except ConfigError as exc:
            warnings.append(f"warning: {exc} (the daemon will refuse to start without it)")
    policies: list[dict[str, Any]] = [
        {
            "name": p.name,
            "match": match_shape(p.match),
            "max_queued": p.max_queued,
            "max_runtime": p.max_runtime,
            "action": p.action,
            "reserve_usd": p.reserve_usd,
        }
        for p in config.policies
    ]
    budgets: list[dict[str, Any]] = [
        {
            "name": b.name,
            "match": match_shape(b.match),
            "limit_usd": b.limit_usd,
            "period": b.period,
            "window": b.window,
            "timezone": b.timezone,
            "warn_at": list(b.warn_at),
            "on_exceed": b.on_exceed,
        }
        for b in config.budgets
    ]
    warnings += after_the_fact_warnings(config) + server_warnings(config)
    from tether.store import StoreError, write_problem

    try:
        if (problem := write_problem(config.store.url)) is not None:
            warnings.append(f"warning: {problem} (the daemon cannot run on this store as it is)")
    except StoreError as exc:
        warnings.append(f"warning: {exc}")
    source = str(config.path) if config.path else None
    if as_json:
        shape = {
            "config": source,
            "store": config.store.url,
            "socket": config.server.socket,
            "accounts": accounts,
            "policies": policies,
            "budgets": budgets,
            "warnings": warnings,
        }
        print(render.dumps(shape))
        return
    out.print(f"config: {source or '(none found: defaults)'}")
    out.print(f"store:  {config.store.url}")
    out.print(f"socket: {config.server.socket or '(none)'}")
    out.print(
        render.table(
            "accounts",
            ["name", "base_url", "key source", "key"],
            [[a["name"], a["base_url"], a["key_source"], a["key"]] for a in accounts],
        )
    )
    out.print(
        render.table(
            "policies (first match applies)",
            ["name", "match", "max_queued", "max_runtime", "action", "reserve"],
            [
                [
                    p["name"],
                    match_text(p["match"]),
                    render.duration(p["max_queued"]),
                    render.duration(p["max_runtime"]),
                    p["action"],
                    render.usd(p["reserve_usd"]),
                ]
                for p in policies
            ],
        )
    )
    if budgets:
        out.print(
            render.table(
                "budgets (every match counts)",
                ["name", "match", "limit", "window", "warn at", "on exceed"],
                [
                    [
                        b["name"],
                        match_text(b["match"]),
                        render.usd(b["limit_usd"]),
                        b["period"] and f"{b['period']} ({b['timezone']})" or f"rolling {render.duration(b['window'])}",
                        ", ".join(f"{f:.0%}" for f in b["warn_at"]) or "-",
                        b["on_exceed"],
                    ]
                    for b in budgets
                ],
            )
        )
    for warning in warnings:
        err.print(warning, style="yellow")
    out.print("configuration OK", style="green")


def server_warnings(config: Config) -> list[str]:
    server = config.server
    try:
        token = server.read_token()
    except ConfigError as exc:
        return [f"warning: {exc} (the daemon will refuse to start without it)"]
    warnings = []
    if server.listen and token is None:
        host, port = server.listen
        warnings.append(
            f"warning: server.listen ({host}:{port}) is set without a token (token_file, token_env or "
            "token_credential): the control API is not served on TCP, only on the socket"
        )
    if server.listen and config.proxy.enabled and not is_loopback(server.listen[0]):
        warnings.append(
            f"warning: server.listen ({server.listen[0]}) is not a loopback address and the proxy is on: "
            "other machines reach the proxy over plain HTTP, their keys and the token in clear"
        )
    return warnings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def match_shape(match) -> dict[str, Any]:
    parts = (
        ("model", list(match.model)),
        ("metadata", dict(match.metadata)),
        ("account", list(match.account)),
        ("labels", dict(match.labels)),
    )
    return {k: v for k, v in parts if v}


def match_text(shape: dict[str, Any]) -> str:
    return json.dumps(shape) if shape else "(anything)"


def after_the_fact_warnings(config: Config) -> list[str]:
    """Budgets that some responses in scope reserve nothing for: they can act only once
    those responses have finished (docs/configuration.md, "Budgets": a reservation needs max_output_tokens or reserve_usd)."""
    warnings = []
    for budget in config.budgets:
        blind = [p.name for p in config.policies if p.reserve_usd is None and may_overlap(budget.match, p.match)]
        if not any(not match_shape(p.match) for p in config.policies):
            blind.append("(responses with no policy)")
        if blind:
            warnings.append(
                f"warning: budget {budget.name!r} can act only after the fact for responses under "
                f"{', '.join(blind)}: they reserve nothing unless they state max_output_tokens "
                "(give those policies a reserve_usd)"
            )
    return warnings


def may_overlap(a, b) -> bool:
    """False only when two selectors provably exclude each other."""
    if a.account and b.account and not set(a.account) & set(b.account):
        return False
    for key in set(a.metadata) & set(b.metadata):
        if a.metadata[key] != b.metadata[key]:
            return False
    for key in set(a.labels) & set(b.labels):
        if a.labels[key] != b.labels[key]:
            return False
    return True
