"""The `tether` command line (SPEC §4).

Exit codes: 0 success · 1 operational failure (API or network) · 2 invalid usage or
input · 3 not found · 78 invalid configuration. Data goes to stdout, messages to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from tether import render
from tether.config import Config, ConfigError, load_config, parse_duration
from tether.ids import valid_id

if TYPE_CHECKING:
    from tether.api import ResponsesClient
    from tether.models import Event, Response
    from tether.store import Store

EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFIG = 1, 2, 3, 78
HEARTBEAT_STALE = 30.0  # seconds without a heartbeat before `tether check` fails

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


def fail(code: int, message: str) -> typer.Exit:
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


# ---- the daemon ------------------------------------------------------------------


@app.command()
def run(ctx: typer.Context) -> None:
    """Run the daemon in the foreground (systemd's ExecStart)."""
    import asyncio

    from tether import logs
    from tether.daemon import Daemon
    from tether.store import Store, StoreError, writer_lock

    context: Context = ctx.obj
    config = context.config()
    logs.configure(config.log.format, config.log.level)
    try:
        for account in config.accounts.values():
            account.read_api_key()
            if (loose := account.key_file_warning()) is not None:
                logs.log.warning("config.key_file_readable", error=loose)
    except ConfigError as exc:
        fail(EXIT_CONFIG, f"invalid configuration: {exc}")
    try:
        store = Store(config.store.url)
        lock = writer_lock(store)
        lock.acquire()  # before migrating: only the one daemon of a store changes its schema
        store.ensure_schema()
    except StoreError as exc:
        fail(EXIT_FAILURE, str(exc))
    try:
        code = asyncio.run(Daemon(config, store, config_path=context.config_path, lock=lock).run())
    finally:
        lock.release()
    raise typer.Exit(code)


@app.command("check-config")
def check_config(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only validate the file: print nothing unless it is invalid.")] = False,
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
    policies = [
        {"name": p.name, "match": match_shape(p.match), "max_queued": p.max_queued,
         "max_runtime": p.max_runtime, "action": p.action, "reserve_usd": p.reserve_usd}
        for p in config.policies
    ]
    budgets = [
        {"name": b.name, "match": match_shape(b.match), "limit_usd": b.limit_usd, "period": b.period,
         "window": b.window, "timezone": b.timezone, "warn_at": list(b.warn_at), "on_exceed": b.on_exceed}
        for b in config.budgets
    ]
    warnings += after_the_fact_warnings(config)
    from tether.store import StoreError, write_problem

    try:
        if (problem := write_problem(config.store.url)) is not None:
            warnings.append(f"warning: {problem} (the daemon cannot run on this store as it is)")
    except StoreError as exc:
        warnings.append(f"warning: {exc}")
    source = str(config.path) if config.path else None
    if as_json:
        shape = {"config": source, "store": config.store.url, "accounts": accounts, "policies": policies,
                 "budgets": budgets, "warnings": warnings}
        print(render.dumps(shape))
        return
    out.print(f"config: {source or '(none found: defaults)'}")
    out.print(f"store:  {config.store.url}")
    out.print(render.table("accounts", ["name", "base_url", "key source", "key"],
                           [[a["name"], a["base_url"], a["key_source"], a["key"]] for a in accounts]))
    out.print(render.table(
        "policies (first match applies)", ["name", "match", "max_queued", "max_runtime", "action", "reserve"],
        [[p["name"], match_text(p["match"]), render.duration(p["max_queued"]), render.duration(p["max_runtime"]),
          p["action"], render.usd(p["reserve_usd"])] for p in policies],
    ))
    if budgets:
        out.print(render.table(
            "budgets (every match counts)", ["name", "match", "limit", "window", "warn at", "on exceed"],
            [[b["name"], match_text(b["match"]), render.usd(b["limit_usd"]),
              b["period"] and f"{b['period']} ({b['timezone']})" or f"rolling {render.duration(b['window'])}",
              ", ".join(f"{f:.0%}" for f in b["warn_at"]) or "-", b["on_exceed"]] for b in budgets],
        ))
    for warning in warnings:
        err.print(warning, style="yellow")
    out.print("configuration OK", style="green")


def match_shape(match) -> dict[str, Any]:
    parts = (("model", list(match.model)), ("metadata", dict(match.metadata)),
             ("account", list(match.account)), ("labels", dict(match.labels)))
    return {k: v for k, v in parts if v}


def match_text(shape: dict[str, Any]) -> str:
    return json.dumps(shape) if shape else "(anything)"


def after_the_fact_warnings(config: Config) -> list[str]:
    """Budgets that some responses in scope reserve nothing for: they can act only once
    those responses have finished (SPEC §7: a reservation needs max_output_tokens or reserve_usd)."""
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


# ---- tracking ----------------------------------------------------------------------


def parse_labels(values: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(EXIT_USAGE, f"--label {item!r}: expected KEY=VALUE")
        labels[key.strip()] = value
    return labels


def check_policy(config: Config, policy: str, stored: set[str] = frozenset()) -> None:
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
        missing = [i for i, r in zip(ids, results) if isinstance(r, NotFound)]
        if missing:
            fail(EXIT_NOT_FOUND, f"no response {', '.join(missing)} on account {account!r}; nothing was tracked")
        failed = [(i, r) for i, r in zip(ids, results) if isinstance(r, BaseException)]
        if failed:
            rid, exc = failed[0]
            fail(EXIT_FAILURE, f"could not look up {rid}: {exc}; nothing was tracked (retry, or use --no-verify)")
        observed = list(results)  # type: ignore[arg-type]
    store = context.store(config)
    tracked = store_tracked(config, store, list(zip(ids, observed)), account=account, policy=policy, labels=labels)
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


# ---- reading -----------------------------------------------------------------------


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

    from tether.models import FINAL, Response

    labels = parse_labels(label)
    config = context.config()
    store = context.store(config)
    query = select(Response).order_by(Response.tracked_at.desc(), Response.id)
    if status:
        query = query.where(Response.status.in_(status))
    if active:
        query = query.where(or_(Response.status.is_(None), Response.status.not_in(FINAL)))
    if policy:
        query = query.where(Response.policy == policy)
    with store.reading() as session:
        if policy and config.policy_named(policy) is None:
            stored = session.execute(select(Response.policy).distinct().where(Response.policy.is_not(None))).scalars()
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


def load_response(store: Store, rid: str) -> tuple[Response, list[Event]]:
    from sqlalchemy import select

    from tether.models import Event, Response

    if not valid_id(rid):
        fail(EXIT_USAGE, f"invalid response id {rid!r}: ids are letters, digits, '_' and '-'")
    with store.reading() as session:
        row = session.get(Response, rid)
        if row is None:
            fail(EXIT_NOT_FOUND, f"{rid} is not tracked (see `tether ls`, or `tether track {rid}`)")
        query = select(Event).where(Event.response_id == rid).order_by(Event.at, Event.id)
        events = list(session.execute(query).scalars())
    return row, events


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

    from tether.models import Event

    # Time order: an event is written after the moment it records, so the ids of
    # events from the daemon and the CLI do not always follow their times.
    query = select(Event).where(Event.id > after_id).order_by(Event.at, Event.id)
    if response_id:
        query = query.where(Event.response_id == response_id)
    if after_time is not None:
        query = query.where(Event.at >= after_time)
    with store.reading() as session:
        yield from list(session.execute(query).scalars())


# ---- acting ------------------------------------------------------------------------


@app.command()
def cancel(
    ctx: typer.Context,
    response_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str | None, typer.Option(help="A note kept with the cancel (the reason is `manual`).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel a tracked response now."""
    import asyncio

    from tether import tracker
    from tether.api import APIError, RequestRejected
    from tether.models import TERMINAL, Response
    from tether.pricing import Pricing

    quiet_logs()
    context: Context = ctx.obj
    config = context.config()
    store = context.store(config)
    row, _ = load_response(store, response_id)
    if row.status in TERMINAL or row.status == "lost":
        out.print(f"{row.id} is already {row.status}; nothing to cancel")
        return
    now = time.time()
    with tracker.recording(store, "cli", now) as rec:
        row = rec.session.get(Response, response_id)
        tracker.request_cancel(rec, row, "manual", note=reason)
    client = client_for(config, row.account)

    async def send() -> dict[str, Any]:
        try:
            return await client.cancel(row.id)
        finally:
            await client.aclose()

    asked_at = time.time()
    try:
        observed = asyncio.run(send())
    except RequestRejected as exc:  # not cancellable now: record why, then see what it is
        with tracker.recording(store, "cli", time.time()) as rec:
            row = rec.session.get(Response, response_id)
            tracker.cancel_failed(rec, row, http_status=exc.status, error=exc.message, retry=False)
        observed = look_quietly(config, row.account, response_id)
    except APIError as exc:
        with tracker.recording(store, "cli", time.time()) as rec:
            row = rec.session.get(Response, response_id)
            tracker.cancel_failed(rec, row, http_status=exc.status, error=exc.message, retry=True)
        fail(EXIT_FAILURE, f"cancel of {response_id} failed: {exc}; it is recorded and a running daemon retries it")
    with tracker.recording(store, "cli", time.time()) as rec:
        row = rec.session.get(Response, response_id)
        if observed is not None:
            tracker.observe(rec, row, observed, config, Pricing.from_config(config), reason="cancel", asked_at=asked_at)
        tracker.cancel_answered(row, config.polling.confirm_window, rec.now)
        row.next_poll_at = rec.now + config.polling.first
    if as_json:
        print(render.dumps(render.record(row)))
    else:
        out.print(f"cancel sent: {row.id} is {row.status}")


def look_quietly(config: Config, account: str, rid: str) -> dict[str, Any] | None:
    import asyncio

    from tether.api import APIError

    client = client_for(config, account)

    async def get() -> dict[str, Any] | None:
        try:
            return await client.get(rid)
        except APIError:
            return None  # the daemon's confirmation polls will find out
        finally:
            await client.aclose()

    return asyncio.run(get())


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


# ---- operations --------------------------------------------------------------------


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


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        # Only a command that opened the store has loaded SQLAlchemy, and only it can fail so.
        store_errors = sys.modules.get("sqlalchemy.exc")
        if store_errors is None or not isinstance(exc, store_errors.SQLAlchemyError):
            raise
        # a store that cannot be read or written: say so, no traceback
        reason = getattr(exc, "orig", None) or exc
        err.print(f"tether: the store failed: {reason} (is the disk full, the file read-only, or its database server down?)")
        sys.exit(EXIT_FAILURE)
