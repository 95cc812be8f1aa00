"""Budget enforcement: budgets are evaluated whenever spend or commitments change, and at
window rollovers; a budget with on_exceed=cancel cancels what it cannot fit (README.md,
"Budgets")."""

from __future__ import annotations

import asyncio

from tether import accounting, tracker
from tether.budgets import cancel_plan, thresholds_crossed, window_at
from tether.daemon.state import State
from tether.daemon.writer import StoreFailure
from tether.models import EventKind, Response
from tether.render import iso

BUDGET_SETTLE = 0.05  # coalesce a burst of spend changes into one budget evaluation


class BudgetWatch:
    def __init__(self, state: State) -> None:
        self.state = state

    async def loop(self) -> None:
        state = self.state
        state.budget_wake.set()
        while True:
            rollover = self._next_rollover()
            await state.sleep(state.budget_wake, None if rollover is None else rollover - state.clock())
            if not state.config.budgets or (state.cluster is not None and not state.cluster.budgets):
                # With several daemons, one enforces the budgets (tether/cluster.py, PG_BUDGETS).
                state.metrics.measured([])
                state.budget_wake.clear()
                continue
            await asyncio.sleep(BUDGET_SETTLE)
            state.budget_wake.clear()
            try:
                rows = await state.writer.run(self._write_budgets)
            except StoreFailure:
                return
            for row in rows:  # newly cancelled by a budget: send at once
                state.metrics.cancel_requested(row.cancel_reason)
                state.adopt(row)

    def _next_rollover(self) -> float | None:
        now = self.state.clock()
        ends = [window_at(b, now).end for b in self.state.config.budgets if b.period is not None]
        return min(ends) if ends else None

    def _write_budgets(self) -> list[Response]:
        """On the store thread: record thresholds crossed and cancel what a budget with
        on_exceed=cancel cannot fit."""
        state = self.state
        cancelled: list[Response] = []
        with tracker.recording(state.store, "daemon", state.clock()) as rec:
            measurement = accounting.measure(rec.session, state.config, state.pricing, rec.now)
            state.metrics.measured(measurement)
            for measured in measurement:
                cancelled += self._enforce_budget(rec, measured)
        return cancelled

    def _enforce_budget(self, rec: tracker.Recorder, measured: accounting.Measured) -> list[Response]:
        budget, state = measured.budget, measured.state
        # Marks are kept per window; a rolling window is bucketed by its own length.
        mark_start = state.window.start if budget.period else rec.now - rec.now % (budget.window or 1)
        figures = {
            "limit_usd": budget.limit_usd,
            "spent_usd": round(state.spent_usd, 6),
            "committed_usd": round(state.committed_usd, 6),
            "window_start": iso(state.window.start),
        }
        for fraction in thresholds_crossed(budget, state.spent_usd, state.committed_usd):
            if tracker.first_mark(rec, budget.name, mark_start, f"warn:{fraction:g}"):
                rec.event(None, EventKind.BUDGET_WARN, reason=f"{fraction:g}", budget=budget.name, detail=figures)
        if state.state != "exceeded":
            return []
        if budget.on_exceed == "warn":
            if tracker.first_mark(rec, budget.name, mark_start, "exceeded"):
                rec.event(None, EventKind.BUDGET_EXCEEDED, reason="warn", budget=budget.name, detail=figures)
            return []
        candidates = accounting.cancellable(rec.session, measured.commitments)
        pending = state.committed_usd - sum(c.amount for c in candidates)  # already being cancelled
        plan = cancel_plan(budget.limit_usd, state.spent_usd + pending, candidates)
        if not plan:
            return []
        detail = {**figures, "cancelling": plan}
        rec.event(None, EventKind.BUDGET_EXCEEDED, reason="cancel", budget=budget.name, detail=detail)
        rows = [rec.session.get_one(Response, rid) for rid in plan]
        for row in rows:
            tracker.request_cancel(rec, row, f"budget:{budget.name}")
        return rows
