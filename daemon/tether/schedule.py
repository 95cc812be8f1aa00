"""Pure timing rules: poll backoff with jitter, and the cancel retry delay."""

from __future__ import annotations

import random

from tether.config import PollingConfig

CANCEL_RETRY_BASE = 1.0
CANCEL_RETRY_CAP = 60.0


def next_interval(previous: float | None, polling: PollingConfig, safety_poll: float | None = None) -> float:
    """`first` for the first poll, then ×backoff per poll, capped at max_interval.

    With webhooks on, a response's end is told by its webhook: polls after the first are
    only a safety net against a lost event, every `safety_poll`."""
    if previous is None:
        return polling.first
    if safety_poll is not None:
        return safety_poll
    return min(previous * polling.backoff, polling.max_interval)


def jittered(interval: float, jitter: float, rng: random.Random) -> float:
    return interval * (1 + rng.uniform(-jitter, jitter))


def cancel_retry_delay(attempts: int, retry_after: float | None, rng: random.Random) -> float:
    """Exponential from 1 s to 60 s with jitter; the server's Retry-After is a floor."""
    doublings = min(max(0, attempts - 1), 16)  # past the cap anyway; keeps 2**n finite
    delay = min(CANCEL_RETRY_CAP, CANCEL_RETRY_BASE * 2**doublings) * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 300.0))
    return delay
