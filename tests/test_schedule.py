"""Poll backoff, jitter and the cancel retry delay of `tether.schedule` (docs/configuration.md, [polling]; docs/behaviour.md)."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from tether.config import PollingConfig, parse_config
from tether.schedule import cancel_retry_delay, jittered, next_interval

DRAWS = 10_000


class EdgeRng(random.Random):
    """A Random whose `uniform(a, b)` always returns one end of the range: jitter made exact."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return b if self.end == "high" else a


def polling(**keys) -> PollingConfig:
    return parse_config({"polling": keys}, environ={}).polling


def intervals(config: PollingConfig, count: int) -> list[float]:
    found, previous = [], None
    for _ in range(count):
        previous = next_interval(previous, config)
        found.append(previous)
    return found


# --- next_interval -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            polling(),
            [1.0, 1.5, 2.25, 3.375, 5.0625],
            id="the defaults start at 1s and grow by 1.5",
        ),
        pytest.param(
            polling(first="2s", backoff=2, max_interval="10s"),
            [2.0, 4.0, 8.0, 10.0, 10.0, 10.0],
            id="doubling stops at max_interval and stays there",
        ),
        pytest.param(
            polling(first="5s", backoff=1, max_interval="60s"),
            [5.0, 5.0, 5.0, 5.0],
            id="a backoff of 1 keeps a fixed interval",
        ),
        pytest.param(
            polling(first="30s", backoff=3, max_interval="30s"),
            [30.0, 30.0, 30.0],
            id="first equal to max_interval never grows",
        ),
        pytest.param(
            polling(first="0.5s", backoff=10, max_interval="1m"),
            [0.5, 5.0, 50.0, 60.0, 60.0],
            id="a large backoff is capped on the step that would pass max_interval",
        ),
        pytest.param(
            polling(first=0, backoff=2, max_interval="1m"),
            [0.0, 0.0, 0.0],
            id="a first poll at once with no growth stays at once",
        ),
    ],
)
def test_poll_intervals_start_at_first_and_back_off_up_to_max_interval(config, expected):
    assert intervals(config, len(expected)) == pytest.approx(expected)


def test_the_default_intervals_reach_max_interval_and_never_exceed_it():
    sequence = intervals(polling(), 50)
    assert max(sequence) == 60.0
    assert sequence[-1] == 60.0
    assert all(later >= earlier for earlier, later in pairwise(sequence))


@pytest.mark.parametrize(
    ("previous", "expected"),
    [
        pytest.param(120.0, 30.0, id="an interval above a lowered max_interval drops to it"),
        pytest.param(30.0, 30.0, id="an interval at max_interval stays"),
        pytest.param(10.0, 15.0, id="an interval below max_interval grows"),
    ],
)
def test_the_next_interval_honours_a_max_interval_lowered_by_a_reload(previous, expected):
    assert next_interval(previous, polling(first="1s", backoff=1.5, max_interval="30s")) == expected


@pytest.mark.parametrize(
    ("config", "safety_poll", "expected"),
    [
        pytest.param(polling(), 600.0, [1.0, 600.0, 600.0, 600.0], id="the defaults: 1s, then every safety_poll"),
        pytest.param(
            polling(first="5s", max_interval="30s"), 1800.0, [5.0, 1800.0, 1800.0], id="past max_interval too"
        ),
        pytest.param(polling(first="1m", max_interval="5m"), 20.0, [60.0, 20.0, 20.0], id="below first too"),
    ],
)
def test_with_webhooks_the_polls_after_the_first_come_every_safety_poll(config, safety_poll, expected):
    found, previous = [], None
    for _ in expected:
        previous = next_interval(previous, config, safety_poll)
        found.append(previous)
    assert found == pytest.approx(expected)


# --- jittered ----------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [1.0, 7.5, 60.0], ids=lambda i: f"{i:g}s")
@pytest.mark.parametrize("jitter", [0.1, 0.25, 0.5], ids=lambda j: f"jitter {j:g}")
def test_a_jittered_interval_stays_within_plus_or_minus_jitter(interval, jitter):
    rng = random.Random(1234)
    draws = [jittered(interval, jitter, rng) for _ in range(DRAWS)]
    low, high = interval * (1 - jitter), interval * (1 + jitter)
    assert all(low <= value <= high for value in draws)
    # ... and actually spreads over both sides of the interval, reaching near both bounds.
    spread = interval * jitter
    assert min(draws) < low + spread * 0.05
    assert max(draws) > high - spread * 0.05
    assert sum(draws) / DRAWS == pytest.approx(interval, rel=jitter / 10)


@pytest.mark.parametrize("interval", [0.0, 1.0, 2.25, 60.0], ids=lambda i: f"{i:g}s")
def test_a_jitter_of_zero_leaves_the_interval_exact(interval):
    rng = random.Random(99)
    assert {jittered(interval, 0.0, rng) for _ in range(100)} == {interval}


def test_jitter_draws_are_reproducible_from_the_seed():
    first = [jittered(10.0, 0.1, random.Random(7)) for _ in range(5)]
    again = [jittered(10.0, 0.1, random.Random(7)) for _ in range(5)]
    assert first == again


# --- cancel_retry_delay ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        pytest.param(0, 1.0, id="before any failure 1s"),
        pytest.param(1, 1.0, id="after the first failure 1s"),
        pytest.param(2, 2.0, id="after the second 2s"),
        pytest.param(3, 4.0, id="after the third 4s"),
        pytest.param(6, 32.0, id="after the sixth 32s"),
        pytest.param(7, 60.0, id="after the seventh capped at 60s"),
        pytest.param(20, 60.0, id="after twenty still 60s"),
        pytest.param(1000, 60.0, id="after a thousand still 60s"),
    ],
)
def test_the_cancel_retry_delay_grows_exponentially_up_to_60s(attempts, expected):
    assert cancel_retry_delay(attempts, None, EdgeRng("high")) == expected


@pytest.mark.parametrize("attempts", [1, 2, 5, 7, 12, 50])
def test_the_cancel_retry_delay_with_jitter_never_exceeds_the_exponential_step_nor_60s(attempts):
    rng = random.Random(attempts)
    ceiling = min(60.0, 2.0 ** (attempts - 1))
    draws = [cancel_retry_delay(attempts, None, rng) for _ in range(DRAWS)]
    assert all(0 < delay <= ceiling for delay in draws)
    assert len(set(draws)) > 1  # jittered: concurrent retries do not fire in lockstep


def test_the_cancel_retry_delay_never_shrinks_as_failures_accumulate():
    delays = [cancel_retry_delay(n, None, EdgeRng("high")) for n in range(1, 30)]
    assert all(later >= earlier for earlier, later in pairwise(delays))
    assert delays[-1] == 60.0


@pytest.mark.parametrize("rng_end", ["low", "high"])
@pytest.mark.parametrize(
    ("attempts", "retry_after", "expected_at_least", "expected_at_most"),
    [
        pytest.param(1, 10.0, 10.0, 10.0, id="a Retry-After longer than the backoff is waited for"),
        pytest.param(1, 300.0, 300.0, 300.0, id="a Retry-After of exactly 300s is honoured"),
        pytest.param(1, 301.0, 300.0, 300.0, id="a Retry-After just above 300s is capped at 300s"),
        pytest.param(1, 86400.0, 300.0, 300.0, id="a Retry-After of a day is capped at 300s"),
        pytest.param(20, 86400.0, 300.0, 300.0, id="the 300s cap also applies late in the retries"),
        pytest.param(7, 5.0, 30.0, 60.0, id="a Retry-After shorter than the backoff does not shorten it"),
        pytest.param(1, 0.0, 0.5, 1.0, id="a Retry-After of zero leaves the backoff"),
    ],
)
def test_retry_after_is_a_floor_on_the_cancel_retry_delay_capped_at_300s(
    attempts, retry_after, expected_at_least, expected_at_most, rng_end
):
    delay = cancel_retry_delay(attempts, retry_after, EdgeRng(rng_end))
    assert expected_at_least <= delay <= expected_at_most
    assert delay >= min(retry_after, 300.0)


@pytest.mark.parametrize("retry_after", [0.5, 3.0, 45.0, 120.0, 299.0])
def test_a_jittered_cancel_retry_never_comes_before_retry_after(retry_after):
    rng = random.Random(42)
    for attempts in range(1, 12):
        assert cancel_retry_delay(attempts, retry_after, rng) >= retry_after


@pytest.mark.parametrize("attempts", [1025, 5000], ids=["attempt 1025", "attempt 5000"])
def test_the_cancel_retry_delay_stays_at_60s_however_many_attempts_failed(attempts):
    assert cancel_retry_delay(attempts, None, EdgeRng("high")) == 60.0
