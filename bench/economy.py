"""API economy, computed from tether's own schedule (`tether.schedule`) — no clock involved.

A response tracked when it is created is polled at `first`, then after each poll at
`jittered(next_interval(previous))`: exactly the daemon's `_next_mark`. It is seen terminal at
the first poll at or after it ends. Durations are drawn uniformly within ±10 % of each nominal
duration, and the jitter from a seeded generator, so every figure is a distribution over
2,000 simulated responses. The documented fixed loop polls every 2 s from creation.

The same model, fed the exact durations of a real run, is what `bench.economy_run` compares
with the polls and detection latencies measured against the stand-in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from bench.procs import summary
from tether.config import PollingConfig
from tether.schedule import jittered, next_interval

NOMINAL = (10, 30, 60, 120, 300, 600, 900, 1200, 1800)  # seconds: 10 s to 30 min
LOOP_INTERVAL = 2.0
SAMPLES = 2000


def tether_polls(duration: float, polling: PollingConfig, rng: random.Random, offset: float = 0.0) -> tuple[int, float]:
    """(polls until seen terminal, detection latency) for a response ending `duration` after
    creation and tracked `offset` seconds after it was created."""
    at = offset + polling.first
    interval = None
    polls = 0
    while True:
        polls += 1
        if at >= duration:
            return polls, at - duration
        interval = next_interval(interval, polling)
        at += jittered(interval, polling.jitter, rng)


def loop_polls(duration: float, interval: float = LOOP_INTERVAL) -> tuple[int, float]:
    """The fixed loop: sleep(interval); retrieve() until terminal."""
    polls = math.ceil(duration / interval) if duration > 0 else 1
    return polls, polls * interval - duration


def table(
    polling: PollingConfig, nominal: Iterable[float] = NOMINAL, samples: int = SAMPLES, seed: int = 6
) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for d in nominal:
        durations = [d * rng.uniform(0.9, 1.1) for _ in range(samples)]
        t = [tether_polls(x, polling, rng) for x in durations]
        loop = [loop_polls(x) for x in durations]
        t_polls = sum(p for p, _ in t) / samples
        l_polls = sum(p for p, _ in loop) / samples
        rel = [lat / x for (_, lat), x in zip(t, durations, strict=True)]
        rows.append(
            {
                "duration": d,
                "tether_polls": t_polls,
                "loop_polls": l_polls,
                "polls_ratio": t_polls / l_polls,
                "tether_latency": summary([lat for _, lat in t]),
                "tether_latency_rel": summary(rel),
                "loop_latency": summary([lat for _, lat in loop]),
            }
        )
    return rows


def curve(
    polling: PollingConfig, up_to: float = 1800.0, step: float = 5.0, samples: int = 200, seed: int = 7
) -> list[dict]:
    """Polls and detection latency (mean, p99) against duration, for the plots."""
    rng = random.Random(seed)
    out = []
    d = step
    while d <= up_to:
        t = [tether_polls(d, polling, rng) for _ in range(samples)]
        lats = sorted(lat for _, lat in t)
        out.append(
            {
                "duration": d,
                "tether_polls": sum(p for p, _ in t) / samples,
                "loop_polls": loop_polls(d)[0],
                "latency_mean": sum(lats) / samples,
                "latency_p99": lats[min(samples - 1, int(0.99 * samples))],
            }
        )
        d += step
    return out


def expected(
    durations: Iterable[float], polling: PollingConfig, offsets: Iterable[float] | None = None, seed: int = 8
) -> list[tuple[float, float]]:
    """Mean (polls, latency) predicted for each given duration (200 jitter draws each)."""
    rng = random.Random(seed)
    offsets = list(offsets) if offsets is not None else None
    out = []
    for i, d in enumerate(durations):
        offset = offsets[i] if offsets is not None else 0.0
        t = [tether_polls(d, polling, rng, offset) for _ in range(200)]
        out.append((sum(p for p, _ in t) / len(t), sum(lat for _, lat in t) / len(t)))
    return out
