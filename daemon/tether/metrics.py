"""The daemon's metrics, in the Prometheus text format (docs/operations.md, "Metrics").

A registry of its own, never prometheus-client's global one: what it serves is the daemon's
and nothing else. No label ever holds a response id: the number of series stays bounded by
the config (statuses, policies, accounts, budgets), however many responses go by.

What is cheapest to read when scraped is read then: the active responses are counted from the
daemon's records, and the budget figures are the budget watch's last measurement. What
happens on the hot paths (a poll) is one unlabelled counter's `inc`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tether import __version__
from tether.statuses import TERMINAL, is_active

if TYPE_CHECKING:
    from tether.accounting import Measured
    from tether.api import APIError

# No `_created` series (the time each counter was made), one per series: Prometheus reads
# nothing from them in the text format. This is process-wide; the daemon has no other metrics.
disable_created_metrics()

# Cancel sent minus its deadline: the daemon aims at a few milliseconds.
OVERRUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seen terminal minus the server's completed_at (whole seconds): about one poll interval.
DETECTION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
CANCEL_REASONS = ("max_queued", "max_runtime", "manual")  # and budget:<name>, one per configured budget


@dataclass(frozen=True, slots=True)
class BudgetFigures:
    name: str
    limit_usd: float
    spent_usd: float
    committed_usd: float


class Metrics:
    """The daemon's counters and histograms, and the gauges read when scraped.

    `records` gives the daemon's records of the responses it schedules (anything with
    `status`, `policy` and `account`); it is called at each scrape, on the event loop.
    """

    def __init__(self, records: Callable[[], Iterable[Any]], instance: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # With several daemons on one store, each series names its daemon (docs/cluster.md).
        self._exposed = registry
        if instance is not None:
            self._exposed = CollectorRegistry(auto_describe=False)
            self._exposed.register(_Labelled(registry, instance))
        Info("tether", "The daemon's version.", registry=registry).info({"version": __version__})
        self.polls = Counter("tether_polls", "Polls started (GETs on the polling backoff).", registry=registry)
        self._api_errors = Counter(
            "tether_api_errors",
            "API errors, by operation and HTTP status (network: no status, the request got no answer).",
            ["op", "code"],
            registry=registry,
        )
        self._cancels = Counter(
            "tether_cancels",
            "Cancels requested, by reason: max_queued, max_runtime, manual, or budget:<name>.",
            ["reason"],
            registry=registry,
        )
        for reason in CANCEL_REASONS:
            self._cancels.labels(reason)  # present at 0 from the start, so rate() sees the first one
        self.deadline_overrun = Histogram(
            "tether_deadline_overrun_seconds",
            "A deadline's cancel sent minus the deadline.",
            buckets=OVERRUN_BUCKETS,
            registry=registry,
        )
        self.detection_latency = Histogram(
            "tether_detection_latency_seconds",
            "A terminal status seen by tether minus the server's completed_at (whole seconds), where it gives one.",
            buckets=DETECTION_BUCKETS,
            registry=registry,
        )
        self.store_transactions = Counter(
            "tether_store_transactions",
            "Transactions committed by the daemon's store thread (each a batch of store functions).",
            registry=registry,
        )
        self.budgets: list[BudgetFigures] = []  # the budget watch's last measurement
        registry.register(_ReadWhenScraped(self, records))

    def api_error(self, op: str, exc: APIError) -> None:
        self._api_errors.labels(op, str(exc.status) if exc.status is not None else "network").inc()

    def api_errors(self) -> list[tuple[str, str, int]]:
        """(op, code, count) of every API error counted since the daemon started."""
        return [
            (sample.labels["op"], sample.labels["code"], int(sample.value))
            for family in self._api_errors.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        ]

    def cancel_requested(self, reason: str | None) -> None:
        """A cancel's intent recorded. Reasons outside the bounded set count as `manual`: the
        daemon's own are bounded by its config, and a manual cancel's note is not its reason."""
        if reason is None or (reason not in CANCEL_REASONS and not reason.startswith("budget:")):
            reason = "manual"
        self._cancels.labels(reason).inc()

    def saw_status(self, was: str | None, observed: Mapping[str, Any], now: float) -> None:
        """A look that moved a response from `was` to the observed status, answered at `now`.
        The reply is as the API sent it, of any shape: only a status string is looked up."""
        status, completed_at = observed.get("status"), observed.get("completed_at")
        ended = isinstance(status, str) and status in TERMINAL
        if was not in TERMINAL and ended and isinstance(completed_at, (int, float)):
            # The server's clock, in whole seconds: a negative difference is its skew, not news.
            self.detection_latency.observe(max(0.0, now - completed_at))

    def measured(self, measured: Iterable[Measured]) -> None:
        """The budget watch's latest figures (from the store thread: one assignment)."""
        self.budgets = [
            BudgetFigures(m.budget.name, m.budget.limit_usd, m.state.spent_usd, m.state.committed_usd) for m in measured
        ]

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format 0.0.4. Call it on the daemon's event loop:
        it counts the records the loop changes."""
        return generate_latest(self._exposed)


class _ReadWhenScraped(Collector):
    """The gauges computed at each scrape: cheap then, and never out of step."""

    def __init__(self, metrics: Metrics, records: Callable[[], Iterable[Any]]) -> None:
        self._metrics = metrics
        self._records = records

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        active, spent, committed, limit = self._families()
        counts = Tally((r.status, r.policy, r.account) for r in self._records() if is_active(r.status))
        for (status, policy, account), n in sorted(counts.items(), key=str):
            active.add_metric([status or "unseen", policy or "", account], n)
        for budget in self._metrics.budgets:
            spent.add_metric([budget.name], budget.spent_usd)
            committed.add_metric([budget.name], budget.committed_usd)
            limit.add_metric([budget.name], budget.limit_usd)
        return iter((active, spent, committed, limit))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "tether_responses_active",
                "Responses not finished (what `tether ls --active` shows), by status (unseen: not looked at yet), "
                "policy (empty: none) and account.",
                labels=["status", "policy", "account"],
            ),
            GaugeMetricFamily(
                "tether_budget_spent_usd", "Spent in the budget's window, at its last evaluation.", labels=["budget"]
            ),
            GaugeMetricFamily(
                "tether_budget_committed_usd",
                "Reserved by active responses in the budget's scope, at its last evaluation.",
                labels=["budget"],
            ),
            GaugeMetricFamily("tether_budget_limit_usd", "The budget's limit.", labels=["budget"]),
        )


class _Labelled(Collector):
    """Every metric of `registry`, each sample with an `instance` label added."""

    def __init__(self, registry: CollectorRegistry, instance: str) -> None:
        self._registry = registry
        self._instance = instance

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(
                    sample.name, {**sample.labels, "instance": self._instance}, sample.value, sample.timestamp
                )
            yield labelled


async def metrics_handler(request: web.Request) -> web.Response:
    """`GET /metrics`, for an aiohttp app holding the daemon's Metrics at `app[METRICS]`.

    Served as text format 0.0.4, what prometheus-client itself answers a scraper that asks for
    nothing else; the text is the same in its version 1.0.0, all names here being plain."""
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


METRICS = web.AppKey("metrics", Metrics)
