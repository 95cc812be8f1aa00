"""The JSON shapes of docs/cli.md ("JSON shapes") and their human renderings (rich tables, event lines)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from sqlalchemy.engine import Row

    from tether.budgets import BudgetState
    from tether.models import Event, Response

STATUS_STYLES = {
    "queued": "yellow",
    "in_progress": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "incomplete": "red",
    "lost": "red",
}


def duration(seconds: float | None) -> str:
    """Seconds as the config writes them: "45m", "1h30m", "2.5s"."""
    if seconds is None:
        return "-"
    if seconds < 60 or not float(seconds).is_integer():
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    parts, rest = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def iso(at: float | None) -> str | None:
    """ISO 8601 UTC with a Z: whole seconds when exact, else milliseconds."""
    if at is None:
        return None
    moment = datetime.fromtimestamp(at, UTC)
    spec = "seconds" if float(at).is_integer() else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def stamp(at: float | None) -> str:
    """A time for people: ISO 8601 UTC, always with milliseconds, so that columns line up."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The columns `record` reads but "metadata" (the row's `meta`): what `tether ls` selects.
RECORD_COLUMNS = (
    "id",
    "account",
    "status",
    "model",
    "policy",
    "labels",
    "created_at",
    "tracked_at",
    "deadline_at",
    "last_polled_at",
    "polls",
    "cancel_requested_at",
    "cancel_reason",
    "finished_at",
    "error",
    "incomplete_reason",
    "usage",
    "cost_usd",
    "cost_estimated",
)


def record(row: Response | Row) -> dict[str, Any]:
    """A response's record: from its row, or a plain row of RECORD_COLUMNS and `meta`."""
    return {
        "id": row.id,
        "account": row.account,
        "status": row.status,
        "model": row.model,
        "policy": row.policy,
        "labels": row.labels,
        "metadata": row.meta,
        "created_at": iso(row.created_at),
        "tracked_at": iso(row.tracked_at),
        "deadline_at": iso(row.deadline_at),
        "last_polled_at": iso(row.last_polled_at),
        "polls": row.polls,
        "cancel_requested_at": iso(row.cancel_requested_at),
        "cancel_reason": row.cancel_reason,
        "finished_at": iso(row.finished_at),
        "error": row.error,
        "incomplete_reason": row.incomplete_reason,
        "usage": row.usage,
        "cost_usd": row.cost_usd,
        "cost_estimated": row.cost_estimated,
    }


def event(ev: Event | Row) -> dict[str, Any]:
    return {
        "at": iso(ev.at),
        "response_id": ev.response_id,
        "kind": ev.kind,
        "from": ev.from_status,
        "to": ev.to_status,
        "reason": ev.reason,
        "detail": ev.detail,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(", ", ": "), ensure_ascii=False)


def status_text(status: str | None) -> Text:
    return Text(status or "unseen", style=STATUS_STYLES.get(status or "", "dim"))


def age(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    seconds = max(0, int(now - at))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def until(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    delta = at - now
    return f"in {age(now - delta, now)}" if delta > 0 else f"{age(at, now)} ago"


def human(value: Any) -> str:
    """A JSON value as a person reads it: yes/no, `job=42, team=search`, "-" for nothing."""
    if value is None or value == {} or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(
            f"{k}={f'({human(v)})' if isinstance(v, Mapping) and v else human(v)}" for k, v in value.items()
        )
    if isinstance(value, list):
        return ", ".join(human(v) for v in value)
    return str(value)


TIMES = ("created_at", "tracked_at", "deadline_at", "last_polled_at", "cancel_requested_at", "finished_at")


def moment(text: str | None) -> float | None:
    """A time of a JSON shape (`iso`) back as seconds since the epoch."""
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# The human renderings are drawn from the JSON shapes, so a command prints the same whether
# it read the store itself or asked the daemon (which answers with these shapes).


def response_table(record: Mapping[str, Any]) -> Table:
    """One response, a field a line (`tether show`): the keys of its record, human values."""
    table = Table(show_header=False, box=None)
    for key, value in record.items():
        if key in ("cost_estimated", "events"):
            continue  # the cost says it: "$0.1512 (estimated)"
        if key == "status":
            table.add_row(key, status_text(value))
        elif key == "cost_usd":
            table.add_row("cost", usd(value, record["cost_estimated"]))
        else:
            table.add_row(key, stamp(moment(value)) if key in TIMES else human(value))
    return table


def responses_table(records: list[Mapping[str, Any]], now: float, title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", expand=False)
    # Ids whole whatever the terminal's width: one is useless unless pasted whole.
    table.add_column("id", no_wrap=True, min_width=max((len(r["id"]) for r in records), default=2))
    for name in ("status", "model", "policy", "age", "deadline", "polls", "cost", "cancel"):
        table.add_column(name, no_wrap=name == "status")
    for r in records:
        table.add_row(
            r["id"],
            status_text(r["status"]),
            r["model"] or "-",
            r["policy"] or "-",
            age(moment(r["created_at"] or r["tracked_at"]), now),
            until(moment(r["deadline_at"]), now),
            str(r["polls"]),
            usd(r["cost_usd"], r["cost_estimated"]),
            r["cancel_reason"] or "",
        )
    return table


def event_line(ev: Mapping[str, Any]) -> Text:
    """One event (its JSON shape) as a line: time, response, kind, what changed, why."""
    line = Text()
    line.append(stamp(moment(ev["at"])), style="dim")
    line.append(f"  {ev['response_id'] or 'budget ' + str((ev['detail'] or {}).get('budget'))}  ")
    line.append(f"{ev['kind']:<16}", style="bold")
    if ev["from"] or ev["to"]:
        line.append(f" {ev['from'] or '-'} -> ")
        line.append_text(status_text(ev["to"]))
    if ev["reason"]:
        line.append(f"  ({ev['reason']})")
    if ev["detail"]:
        extra = {k: v for k, v in ev["detail"].items() if v not in (None, {}, [])}
        if extra:
            line.append(f"  {human(extra)}", style="dim")
    return line


def budget(state: BudgetState) -> dict[str, Any]:
    return {
        "name": state.name,
        "window_start": iso(state.window.start),
        "window_end": iso(state.window.end),
        "limit_usd": state.limit_usd,
        "spent_usd": round(state.spent_usd, 6),
        "committed_usd": round(state.committed_usd, 6),
        "remaining_usd": round(state.remaining_usd, 6),
        "state": state.state,
        "active": state.active,
    }


BUDGET_STYLES = {"ok": "green", "warn": "yellow", "exceeded": "red"}


def budgets_table(budgets: list[Mapping[str, Any]]) -> Table:
    table = Table(title="budgets", header_style="bold")
    for name in ("name", "window", "limit", "spent", "committed", "remaining", "state", "active"):
        table.add_column(
            name, justify="right" if name in ("limit", "spent", "committed", "remaining", "active") else "left"
        )
    for b in budgets:
        table.add_row(
            b["name"],
            f"{stamp(moment(b['window_start']))} .. {stamp(moment(b['window_end']))}",
            usd(b["limit_usd"]),
            usd(b["spent_usd"]),
            usd(b["committed_usd"]),
            usd(b["remaining_usd"]),
            Text(b["state"], style=BUDGET_STYLES[b["state"]]),
            human(b["active"]),
        )
    return table


def usd(amount: float | None, estimated: bool = False) -> str:
    """Dollars as people write them: to the cent, or 4 decimals below a dollar."""
    if amount is None:
        return "-"
    text = f"${amount:,.4f}" if abs(amount) < 1 else f"${amount:,.2f}"
    return f"{text} (estimated)" if estimated else text


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    result = Table(title=title, header_style="bold")
    for name in columns:
        result.add_column(name)
    for row in rows:
        result.add_row(*(cell if isinstance(cell, Text) else str(cell) for cell in row))
    return result
