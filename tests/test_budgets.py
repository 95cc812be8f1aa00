from datetime import datetime

import pytest

from tether.budgets import Commitment, Window, assess, cancel_plan, thresholds_crossed, window_at
from tether.config import BudgetConfig


def at(text: str) -> float:
    """Unix seconds of an ISO 8601 time with its offset."""
    return datetime.fromisoformat(text).timestamp()


def budget(**changes) -> BudgetConfig:
    fields = {"name": "b", "limit_usd": 10.0, "period": "day", "timezone": "UTC"}
    return BudgetConfig(**{**fields, **changes})


# --- calendar windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "timezone", "now", "start", "end"),
    [
        # days
        pytest.param(
            "day", "UTC", "2026-05-14T15:20:00+00:00", "2026-05-14T00:00:00+00:00", "2026-05-15T00:00:00+00:00",
            id="a day runs from midnight to midnight",
        ),
        pytest.param(
            "day", "UTC", "2026-05-15T00:00:00+00:00", "2026-05-15T00:00:00+00:00", "2026-05-16T00:00:00+00:00",
            id="midnight itself belongs to the new day",
        ),
        pytest.param(
            "day", "UTC", "2026-05-14T23:59:59.999+00:00", "2026-05-14T00:00:00+00:00", "2026-05-15T00:00:00+00:00",
            id="the last instant before midnight belongs to the old day",
        ),
        pytest.param(
            "day", "America/New_York", "2026-05-15T02:00:00+00:00",
            "2026-05-14T00:00:00-04:00", "2026-05-15T00:00:00-04:00",
            id="a New York day is the local day, not the UTC one",
        ),
        pytest.param(
            "day", "America/New_York", "2026-01-15T04:59:59+00:00",
            "2026-01-14T00:00:00-05:00", "2026-01-15T00:00:00-05:00",
            id="New York in winter is five hours behind",
        ),
        pytest.param(
            "day", "Asia/Kolkata", "2026-05-14T18:29:59+00:00",
            "2026-05-14T00:00:00+05:30", "2026-05-15T00:00:00+05:30",
            id="a Kolkata day ends at 18:30 UTC",
        ),
        pytest.param(
            "day", "Asia/Kolkata", "2026-05-14T18:30:00+00:00",
            "2026-05-15T00:00:00+05:30", "2026-05-16T00:00:00+05:30",
            id="the next Kolkata day starts at 18:30 UTC",
        ),
        pytest.param(
            "day", "Europe/Berlin", "2026-03-29T12:00:00+02:00",
            "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00",
            id="the Berlin spring DST day has 23 hours",
        ),
        pytest.param(
            "day", "Europe/Berlin", "2026-10-25T12:00:00+01:00",
            "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00",
            id="the Berlin autumn DST day has 25 hours",
        ),
        pytest.param(
            "day", "Europe/Berlin", "2026-10-25T02:30:00+01:00",
            "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00",
            id="the repeated Berlin hour belongs to its day",
        ),
        pytest.param(
            "day", "America/Santiago", "2026-09-06T12:00:00-03:00",
            "2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00",
            id="a day whose midnight is skipped starts when the clock jumps",
        ),
        # hours
        pytest.param(
            "hour", "UTC", "2026-05-14T15:00:00+00:00", "2026-05-14T15:00:00+00:00", "2026-05-14T16:00:00+00:00",
            id="the full hour belongs to the new hour",
        ),
        pytest.param(
            "hour", "Asia/Kolkata", "2026-05-14T15:10:00+00:00",
            "2026-05-14T20:00:00+05:30", "2026-05-14T21:00:00+05:30",
            id="Kolkata hours start at half past in UTC",
        ),
        pytest.param(
            "hour", "Europe/Berlin", "2026-10-25T02:30:00+02:00",
            "2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00",
            id="the first pass of a repeated hour is one hour",
        ),
        pytest.param(
            "hour", "Europe/Berlin", "2026-10-25T02:30:00+01:00",
            "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00",
            id="the second pass of a repeated hour is another hour",
        ),
        pytest.param(
            "hour", "Europe/Berlin", "2026-03-29T03:10:00+02:00",
            "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00",
            id="the hour after a skipped hour",
        ),
        pytest.param(
            "hour", "Australia/Lord_Howe", "2026-10-04T02:40:00+11:00",
            "2026-10-04T02:30:00+11:00", "2026-10-04T03:00:00+11:00",
            id="a half hour DST jump leaves a half hour",
        ),
        # weeks
        pytest.param(
            "week", "UTC", "2026-05-14T12:00:00+00:00", "2026-05-11T00:00:00+00:00", "2026-05-18T00:00:00+00:00",
            id="a week starts on Monday",
        ),
        pytest.param(
            "week", "UTC", "2026-05-17T23:59:59+00:00", "2026-05-11T00:00:00+00:00", "2026-05-18T00:00:00+00:00",
            id="Sunday night still belongs to the week",
        ),
        pytest.param(
            "week", "UTC", "2026-05-18T00:00:00+00:00", "2026-05-18T00:00:00+00:00", "2026-05-25T00:00:00+00:00",
            id="Monday midnight starts a new week",
        ),
        pytest.param(
            "week", "America/New_York", "2026-05-18T02:00:00+00:00",
            "2026-05-11T00:00:00-04:00", "2026-05-18T00:00:00-04:00",
            id="a week is a local week",
        ),
        pytest.param(
            "week", "Europe/Berlin", "2026-03-27T12:00:00+01:00",
            "2026-03-23T00:00:00+01:00", "2026-03-30T00:00:00+02:00",
            id="a week across DST has 167 hours",
        ),
        pytest.param(
            "week", "UTC", "2026-12-31T12:00:00+00:00", "2026-12-28T00:00:00+00:00", "2027-01-04T00:00:00+00:00",
            id="a week spans the new year",
        ),
        # months
        pytest.param(
            "month", "UTC", "2026-05-14T12:00:00+00:00", "2026-05-01T00:00:00+00:00", "2026-06-01T00:00:00+00:00",
            id="a month starts on the first",
        ),
        pytest.param(
            "month", "UTC", "2028-02-29T23:59:59+00:00", "2028-02-01T00:00:00+00:00", "2028-03-01T00:00:00+00:00",
            id="a leap February has 29 days",
        ),
        pytest.param(
            "month", "UTC", "2027-02-15T00:00:00+00:00", "2027-02-01T00:00:00+00:00", "2027-03-01T00:00:00+00:00",
            id="a common February has 28 days",
        ),
        pytest.param(
            "month", "UTC", "2026-12-31T23:00:00+00:00", "2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00",
            id="December ends in the new year",
        ),
        pytest.param(
            "month", "Asia/Kolkata", "2026-04-30T19:00:00+00:00",
            "2026-05-01T00:00:00+05:30", "2026-06-01T00:00:00+05:30",
            id="a month is a local month",
        ),
        pytest.param(
            "month", "Europe/Berlin", "2026-03-15T12:00:00+01:00",
            "2026-03-01T00:00:00+01:00", "2026-04-01T00:00:00+02:00",
            id="a month across DST is an hour short",
        ),
    ],
)  # fmt: skip
def test_a_calendar_window_follows_the_local_wall_clock(period, timezone, now, start, end):
    window = window_at(budget(period=period, timezone=timezone), at(now))
    assert window == Window(at(start), at(end))


@pytest.mark.parametrize(
    ("period", "timezone", "now", "hours"),
    [
        pytest.param("day", "Europe/Berlin", "2026-03-29T08:00:00+02:00", 23, id="Berlin Mar 29 2026 has 23 h"),
        pytest.param("day", "Europe/Berlin", "2026-10-25T08:00:00+01:00", 25, id="Berlin Oct 25 2026 has 25 h"),
        pytest.param("day", "Europe/Berlin", "2026-10-26T08:00:00+01:00", 24, id="the day after has 24 h again"),
        pytest.param("hour", "Europe/Berlin", "2026-10-25T02:30:00+01:00", 1, id="an hour is always one hour"),
    ],
)
def test_dst_days_have_the_hours_the_clock_shows(period, timezone, now, hours):
    window = window_at(budget(period=period, timezone=timezone), at(now))
    assert window.end - window.start == hours * 3600


INSTANTS = [
    "2026-01-01T00:00:00+00:00",
    "2026-03-29T00:59:59+00:00",
    "2026-03-29T01:00:00+00:00",
    "2026-10-25T00:30:00+00:00",
    "2026-10-25T01:00:00+00:00",
    "2026-10-04T15:29:59+00:00",
    "2028-02-29T12:34:56.5+00:00",
]


ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Europe/Berlin", "Australia/Lord_Howe"]


@pytest.mark.parametrize("now", INSTANTS)
@pytest.mark.parametrize("period", ["hour", "day", "week", "month"])
@pytest.mark.parametrize("timezone", ZONES)
def test_calendar_windows_tile_time_so_the_next_starts_where_one_ends(timezone, period, now):
    b = budget(period=period, timezone=timezone)
    window = window_at(b, at(now))
    assert window.start <= at(now) < window.end
    assert window_at(b, window.end).start == window.end
    assert window_at(b, window.start - 0.001).end == window.start
    assert window_at(b, window.start) == window


# --- rolling windows -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "now", "window"),
    [
        pytest.param(86400.0, 1_800_000_000.0, Window(1_799_913_600.0, 1_800_000_000.0), id="a day back from now"),
        pytest.param(3600.0, 1_800_000_000.5, Window(1_799_996_400.5, 1_800_000_000.5), id="an hour back from now"),
    ],
)
def test_a_rolling_window_ends_now(seconds, now, window):
    assert window_at(budget(period=None, window=seconds), now) == window


def test_a_rolling_window_moves_with_now_and_ignores_the_timezone():
    b = budget(period=None, window=3600.0, timezone="Asia/Kolkata")
    assert [window_at(b, now) for now in (7200.0, 7201.0)] == [Window(3600.0, 7200.0), Window(3601.0, 7201.0)]


def test_an_instant_is_in_a_window_from_its_start_up_to_its_end():
    window = Window(10.0, 20.0)
    assert [instant in window for instant in (9.999, 10.0, 19.999, 20.0)] == [False, True, True, False]


# --- state -----------------------------------------------------------------------------------------

WINDOW = Window(0.0, 86400.0)


def commitments(*amounts: float) -> list[Commitment]:
    return [Commitment(f"resp_{n}", float(n), amount) for n, amount in enumerate(amounts, start=1)]


@pytest.mark.parametrize(
    ("warn_at", "spent", "amounts", "state"),
    [
        pytest.param((0.5, 0.8), 0.0, (), "ok", id="nothing spent is ok"),
        pytest.param((0.5, 0.8), 4.99, (), "ok", id="below the lowest threshold is ok"),
        pytest.param((0.5, 0.8), 5.0, (), "warn", id="at the lowest threshold warns"),
        pytest.param((0.5, 0.8), 2.0, (1.5, 1.5), "warn", id="commitments count toward the threshold"),
        pytest.param((0.5, 0.8), 10.0, (), "warn", id="exactly at the limit is not exceeded"),
        pytest.param((0.5, 0.8), 10.01, (), "exceeded", id="over the limit is exceeded"),
        pytest.param((0.5, 0.8), 6.0, (3.0, 1.5), "exceeded", id="commitments can exceed the limit"),
        pytest.param((), 9.99, (), "ok", id="without thresholds it never warns"),
        pytest.param((), 11.0, (), "exceeded", id="without thresholds it still exceeds"),
        pytest.param((1.0,), 10.0, (), "warn", id="a threshold of one warns at the limit"),
    ],
)
def test_a_budget_is_ok_warn_or_exceeded_by_spent_plus_committed(warn_at, spent, amounts, state):
    assessed = assess(budget(warn_at=warn_at), WINDOW, spent, commitments(*amounts))
    assert assessed.state == state


def test_an_assessment_reports_every_figure():
    assessed = assess(budget(name="search-daily", warn_at=(0.5,)), WINDOW, 6.0, commitments(3.0, 2.5, 0.0))
    assert assessed == assessed.__class__(
        name="search-daily",
        window=WINDOW,
        limit_usd=10.0,
        spent_usd=6.0,
        committed_usd=5.5,
        remaining_usd=-1.5,
        state="exceeded",
        active=3,
    )


def test_float_sums_that_equal_the_limit_do_not_exceed_it():
    assessed = assess(budget(limit_usd=0.3), WINDOW, 0.1, commitments(0.2))
    assert (assessed.state, cancel_plan(0.3, 0.1, commitments(0.2))) == ("ok", [])


@pytest.mark.parametrize(
    ("warn_at", "spent", "committed", "crossed"),
    [
        pytest.param((0.5, 0.8), 0.0, 0.0, [], id="none at zero"),
        pytest.param((0.5, 0.8), 4.0, 0.99, [], id="none just below the first"),
        pytest.param((0.5, 0.8), 4.0, 1.0, [0.5], id="the first when reached exactly"),
        pytest.param((0.5, 0.8), 7.0, 1.0, [0.5, 0.8], id="both, lowest first"),
        pytest.param((0.5, 0.8), 20.0, 0.0, [0.5, 0.8], id="both when over the limit"),
        pytest.param((), 20.0, 0.0, [], id="none without thresholds"),
        pytest.param((0.25, 0.5, 1.0), 0.0, 5.0, [0.25, 0.5], id="commitments alone cross thresholds"),
    ],
)
def test_thresholds_crossed_are_the_warn_fractions_reached(warn_at, spent, committed, crossed):
    assert thresholds_crossed(budget(warn_at=warn_at), spent, committed) == crossed


# --- what to cancel --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "spent", "active", "plan"),
    [
        pytest.param(10.0, 2.0, [("a", 1, 3.0), ("b", 2, 3.0)], [], id="nothing when it fits"),
        pytest.param(10.0, 4.0, [("a", 1, 3.0), ("b", 2, 3.0)], [], id="nothing when it fits exactly"),
        pytest.param(10.0, 5.0, [("a", 1, 3.0), ("b", 2, 3.0)], ["b"], id="the newest first"),
        pytest.param(
            10.0, 5.0, [("b", 2, 3.0), ("a", 1, 3.0), ("c", 3, 0.5)], ["c", "b"],
            id="newest first until it fits, whatever the input order",
        ),
        pytest.param(
            10.0, 5.0, [("a", 1, 4.0), ("b", 2, 1.0), ("c", 3, 1.0)], ["c"],
            id="stops as soon as it fits, sparing older ones",
        ),
        pytest.param(
            10.0, 9.0, [("a", 1, 5.0), ("b", 2, 0.0), ("c", 3, 0.0)], ["c", "b", "a"],
            id="responses reserving nothing are cancelled in turn too",
        ),
        pytest.param(
            10.0, 5.0, [("resp_a", 7, 3.0), ("resp_b", 7, 3.0)], ["resp_b"], id="ties go to the greater id first"
        ),
        pytest.param(
            10.0, 12.0, [("a", 1, 1.0), ("b", 3, 1.0), ("c", 2, 1.0)], ["b", "c", "a"],
            id="all of them newest first when spent alone is over",
        ),
        pytest.param(10.0, 12.0, [], [], id="nothing to cancel when nothing is active"),
    ],
)  # fmt: skip
def test_a_cancel_plan_cancels_the_newest_until_the_budget_fits(limit, spent, active, plan):
    assert cancel_plan(limit, spent, [Commitment(*item) for item in active]) == plan
