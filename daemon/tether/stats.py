"""What the daemon did since the last `daemon.stats` line: for operators and benchmarks."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    polls: int = 0
    api_errors: int = 0
    cancels: int = 0
    poll_lags: list[float] = field(default_factory=list)  # actual poll start minus its due time
    deadline_lags: list[float] = field(default_factory=list)  # cancel sent minus its deadline

    def poll(self, lag: float) -> None:
        self.polls += 1
        self.poll_lags.append(lag)

    def cancel_at_deadline(self, lag: float) -> None:
        self.cancels += 1
        self.deadline_lags.append(lag)

    def take(self, seconds: float, active: int, confirming: int) -> dict[str, Any]:
        """The figures since the last take, as log fields; counters start again. `active` and
        `confirming` are counts of now: responses not finished, and finished ones still watched."""
        line = {
            "seconds": round(seconds, 3),
            "active": active,
            "confirming": confirming,
            "polls": self.polls,
            "polls_per_second": round(self.polls / seconds, 1) if seconds > 0 else None,
            "api_errors": self.api_errors,
            "deadline_cancels": self.cancels,
            **summary("poll_lag", self.poll_lags),
            **summary("deadline_lag", self.deadline_lags),
            "max_rss_mb": peak_rss_mb(),
            "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 3),
        }
        self.polls = self.api_errors = self.cancels = 0
        self.poll_lags, self.deadline_lags = [], []
        return line


def peak_rss_mb() -> float:
    """This process's peak resident memory, from /proc (VmHWM). Not getrusage's ru_maxrss: Linux
    carries it over fork and exec, so a daemon started by a large process would report that
    process's peak as its own."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def summary(name: str, values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"{name}_p50": None, f"{name}_p99": None, f"{name}_max": None}
    ordered = sorted(values)
    return {
        f"{name}_p50": round(percentile(ordered, 0.50), 4),
        f"{name}_p99": round(percentile(ordered, 0.99), 4),
        f"{name}_max": round(ordered[-1], 4),
    }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]
