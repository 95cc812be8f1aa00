"""The status vocabulary and allowed transitions of `tether.statuses`, and the event kinds of `tether.models` (docs/cli.md: statuses, event kinds; docs/behaviour.md)."""

from __future__ import annotations

import pytest

from tether.models import EventKind
from tether.statuses import ACTIVE, API_STATUSES, FINAL, TERMINAL, TRANSITIONS, Status, is_active, is_allowed

API = ["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]
TERMINALS = ["completed", "failed", "cancelled", "incomplete"]


# --- the status sets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "actual", "expected"),
    [
        pytest.param("API_STATUSES", API_STATUSES, set(API), id="the API statuses are the six of the Responses API"),
        pytest.param("ACTIVE", ACTIVE, {"queued", "in_progress"}, id="queued and in_progress are active"),
        pytest.param("TERMINAL", TERMINAL, set(TERMINALS), id="the four API end states are terminal"),
        pytest.param("FINAL", FINAL, {*TERMINALS, "lost"}, id="final adds the local lost status"),
        pytest.param(
            "Status", {s.value for s in Status}, {*API, "lost"}, id="the Status enum is the API statuses and lost"
        ),
    ],
)
def test_the_status_sets_match_the_spec(name, actual, expected):
    assert set(actual) == expected, name


def test_every_api_status_is_either_active_or_terminal_never_both():
    assert ACTIVE | TERMINAL == API_STATUSES
    assert not ACTIVE & TERMINAL


def test_lost_is_local_and_not_an_api_status():
    assert "lost" not in API_STATUSES
    assert "lost" in FINAL


def test_the_event_kinds_are_those_of_spec_section_4_plus_budget_events():
    assert {k.value for k in EventKind} == {
        "tracked",
        "status",
        "limit_exceeded",
        "cancel_requested",
        "cancel_failed",
        "warned",
        "lost",
        "price_unknown",
        "budget_warn",
        "budget_exceeded",
    }


# --- is_active ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "active"),
    [
        pytest.param(None, True, id="a response not yet looked at is active"),
        pytest.param("queued", True, id="queued is active"),
        pytest.param("in_progress", True, id="in_progress is active"),
        pytest.param("completed", False, id="completed is not active"),
        pytest.param("failed", False, id="failed is not active"),
        pytest.param("cancelled", False, id="cancelled is not active"),
        pytest.param("incomplete", False, id="incomplete is not active"),
        pytest.param("lost", False, id="lost is not active"),
        pytest.param(Status.QUEUED, True, id="the enum member queued is active"),
        pytest.param(Status.CANCELLED, False, id="the enum member cancelled is not active"),
    ],
)
def test_is_active_tells_whether_a_response_is_still_polled_and_subject_to_deadlines(status, active):
    assert is_active(status) is active


# --- transitions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        pytest.param("queued", "in_progress", True, id="queued to in_progress is allowed"),
        pytest.param("queued", "completed", True, id="queued straight to completed is allowed"),
        pytest.param("queued", "cancelled", True, id="queued to cancelled is allowed"),
        pytest.param("queued", "lost", True, id="a queued response may be lost"),
        pytest.param("in_progress", "completed", True, id="in_progress to completed is allowed"),
        pytest.param("in_progress", "failed", True, id="in_progress to failed is allowed"),
        pytest.param("in_progress", "incomplete", True, id="in_progress to incomplete is allowed"),
        pytest.param("in_progress", "cancelled", True, id="in_progress to cancelled is allowed"),
        pytest.param("in_progress", "lost", True, id="an in_progress response may be lost"),
        pytest.param("in_progress", "queued", False, id="in_progress back to queued is refused"),
        pytest.param("queued", "queued", False, id="queued to queued is no transition"),
        pytest.param("in_progress", "in_progress", False, id="in_progress to in_progress is no transition"),
        pytest.param("cancelled", "completed", True, id="cancelled to completed is allowed as cancel is best effort"),
        pytest.param("completed", "cancelled", True, id="completed to cancelled is allowed during confirmation"),
        pytest.param("completed", "in_progress", False, id="a terminal response never becomes active again"),
        pytest.param("cancelled", "queued", False, id="a cancelled response never becomes queued again"),
        pytest.param("lost", "completed", True, id="a lost response that reappears completed is taken back"),
        pytest.param("lost", "in_progress", True, id="a lost response that reappears running is taken back"),
        pytest.param("lost", "queued", True, id="a lost response that reappears queued is taken back"),
        pytest.param("lost", "lost", False, id="lost to lost is no transition"),
        pytest.param(None, "lost", True, id="a response never seen may be lost"),
        pytest.param("queued", "requires_action", False, id="an unknown new status is refused"),
        pytest.param("requires_action", "completed", False, id="nothing is allowed from an unknown status"),
    ],
)
def test_is_allowed_follows_the_status_lifecycle(current, new, allowed):
    assert is_allowed(current, new) is allowed


@pytest.mark.parametrize("new", API)
def test_a_response_never_looked_at_may_take_any_api_status(new):
    assert is_allowed(None, new)


@pytest.mark.parametrize("status", TERMINALS)
def test_a_terminal_status_reported_again_is_not_a_transition(status):
    assert not is_allowed(status, status)


@pytest.mark.parametrize("new", TERMINALS)
@pytest.mark.parametrize("current", TERMINALS)
def test_a_terminal_status_may_only_move_to_another_terminal_status(current, new):
    assert is_allowed(current, new) is (current != new)


@pytest.mark.parametrize("current", TERMINALS)
def test_a_terminal_response_whose_final_object_is_recorded_is_never_declared_lost(current):
    # docs/behaviour.md, "Lost": the final object is recorded as soon as it is seen; a later 404 (store=false
    # data expiring) must not overwrite it with `lost`.
    assert not is_allowed(current, "lost")


@pytest.mark.parametrize("current", [None, *API, "lost"], ids=lambda s: str(s))
def test_every_known_status_has_a_transition_entry_and_only_to_known_statuses(current):
    assert current in TRANSITIONS
    assert TRANSITIONS[current] <= API_STATUSES | {"lost"}
    assert current not in TRANSITIONS[current]
