"""Deadlines and decisions of `tether.policies` (docs/configuration.md, policies; docs/behaviour.md, "Deadlines").

Deadlines are absolute instants from the server's `created_at`: `created_at + max_queued`
only while queued, `created_at + max_runtime` while not terminal. A limit already acted on is
not acted on again; a response tracked after its deadline is acted on at once.
"""

from __future__ import annotations

import pytest

from tether.config import PolicyConfig, parse_config
from tether.policies import Act, Deadline, Keep, decide, next_deadline, pending_deadlines

T0 = 1_795_636_800.0  # 2026-11-25T20:00:00Z: the server's created_at of the response
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
MICROSECOND = 1e-6


def _policies(*tables: dict) -> dict[str, PolicyConfig]:
    config = parse_config({"policy": list(tables)}, environ={})
    return {policy.name: policy for policy in config.policies}


POLICIES = _policies(
    {"name": "deep-research", "max_queued": "10m", "max_runtime": "45m"},
    {"name": "watch", "max_queued": "10m", "max_runtime": "45m", "action": "warn"},
    {"name": "queued-only", "max_queued": "10m"},
    {"name": "runtime-only", "max_runtime": "2h"},
    {"name": "queue-longer-than-run", "max_queued": "1h", "max_runtime": "30m"},
    {"name": "track-only"},
)
DEEP = POLICIES["deep-research"]
WARN = POLICIES["watch"]
QUEUED_ONLY = POLICIES["queued-only"]
RUNTIME_ONLY = POLICIES["runtime-only"]
INVERTED = POLICIES["queue-longer-than-run"]
TRACK_ONLY = POLICIES["track-only"]

MAX_QUEUED_AT = T0 + 10 * MINUTE
MAX_RUNTIME_AT = T0 + 45 * MINUTE

TERMINAL_AND_LOST = ["completed", "failed", "cancelled", "incomplete", "lost"]


def test_the_config_durations_become_the_policy_limits_in_seconds():
    assert (DEEP.max_queued, DEEP.max_runtime, DEEP.action) == (600.0, 2700.0, "cancel")
    assert (WARN.action, TRACK_ONLY.max_queued, TRACK_ONLY.max_runtime) == ("warn", None, None)


def test_one_microsecond_before_a_deadline_is_a_distinct_instant():
    # Guards the boundary cases below against float rounding at today's epoch magnitudes.
    assert MAX_QUEUED_AT - MICROSECOND < MAX_QUEUED_AT
    assert MAX_RUNTIME_AT - MICROSECOND < MAX_RUNTIME_AT


# --- decide ------------------------------------------------------------------------------------

DECIDE_CASES = [
    # (policy, status, created_at, now, limits_hit, expected)
    pytest.param(
        DEEP,
        "queued",
        T0,
        T0 + 11 * MINUTE,
        (),
        Act("max_queued", "cancel", MAX_QUEUED_AT),
        id="a queued response past max_queued is cancelled",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        T0,
        T0 + 11 * MINUTE,
        (),
        Keep(),
        id="an in_progress response past max_queued but before max_runtime is kept",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        T0,
        T0 + 46 * MINUTE,
        (),
        Act("max_runtime", "cancel", MAX_RUNTIME_AT),
        id="an in_progress response past max_runtime is cancelled",
    ),
    pytest.param(
        DEEP,
        "queued",
        T0,
        T0 + 46 * MINUTE,
        ("max_queued",),
        Act("max_runtime", "cancel", MAX_RUNTIME_AT),
        id="a response still queued past max_runtime is cancelled for max_runtime",
    ),
    pytest.param(
        DEEP,
        "queued",
        T0,
        MAX_QUEUED_AT,
        (),
        Act("max_queued", "cancel", MAX_QUEUED_AT),
        id="a queued response exactly at the max_queued instant is acted on",
    ),
    pytest.param(
        DEEP,
        "queued",
        T0,
        MAX_QUEUED_AT - MICROSECOND,
        (),
        Keep(),
        id="a queued response one microsecond before max_queued is kept",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        T0,
        MAX_RUNTIME_AT,
        (),
        Act("max_runtime", "cancel", MAX_RUNTIME_AT),
        id="an in_progress response exactly at the max_runtime instant is acted on",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        T0,
        MAX_RUNTIME_AT - MICROSECOND,
        (),
        Keep(),
        id="an in_progress response one microsecond before max_runtime is kept",
    ),
    pytest.param(
        DEEP,
        None,
        T0,
        T0 + DAY,
        (),
        Keep(),
        id="a response not yet looked at is kept until its status is known",
    ),
    pytest.param(
        None,
        "in_progress",
        T0,
        T0 + DAY,
        (),
        Keep(),
        id="a response without a policy is kept forever",
    ),
    pytest.param(
        TRACK_ONLY,
        "queued",
        T0,
        T0 + DAY,
        (),
        Keep(),
        id="a policy with neither limit only tracks",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        None,
        T0 + DAY,
        (),
        Keep(),
        id="a response without created_at has no deadline to act on",
    ),
    pytest.param(
        DEEP,
        "queued",
        T0,
        T0 + 11 * MINUTE,
        ("max_queued",),
        Keep(),
        id="a max_queued limit already hit is not acted on again",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        T0,
        T0 + DAY,
        ("max_queued", "max_runtime"),
        Keep(),
        id="a response with both limits already hit is kept",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        T0,
        T0 + DAY,
        ("max_runtime",),
        Keep(),
        id="a max_runtime limit already hit is not acted on again",
    ),
    pytest.param(
        WARN,
        "queued",
        T0,
        T0 + 11 * MINUTE,
        (),
        Act("max_queued", "warn", MAX_QUEUED_AT),
        id="a warn policy past max_queued warns",
    ),
    pytest.param(
        WARN,
        "in_progress",
        T0,
        T0 + 46 * MINUTE,
        (),
        Act("max_runtime", "warn", MAX_RUNTIME_AT),
        id="a warn policy past max_runtime warns",
    ),
    pytest.param(
        WARN,
        "queued",
        T0,
        T0 + 46 * MINUTE,
        ("max_queued",),
        Act("max_runtime", "warn", MAX_RUNTIME_AT),
        id="a warn policy warns again for the other limit",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        T0,
        T0 + 30 * DAY,
        (),
        Act("max_runtime", "cancel", MAX_RUNTIME_AT),
        id="an in_progress response tracked long after its deadline is acted on at once",
    ),
    pytest.param(
        DEEP,
        "queued",
        T0,
        T0 + 30 * DAY,
        (),
        Act("max_queued", "cancel", MAX_QUEUED_AT),
        id="a queued response tracked long after both deadlines is acted on for the earliest",
    ),
    pytest.param(
        INVERTED,
        "queued",
        T0,
        T0 + 45 * MINUTE,
        (),
        Act("max_runtime", "cancel", T0 + 30 * MINUTE),
        id="a max_runtime shorter than max_queued is acted on first",
    ),
    pytest.param(
        QUEUED_ONLY,
        "in_progress",
        T0,
        T0 + DAY,
        (),
        Keep(),
        id="a queued-only policy never acts once the response runs",
    ),
    pytest.param(
        RUNTIME_ONLY,
        "queued",
        T0,
        T0 + 2 * HOUR,
        (),
        Act("max_runtime", "cancel", T0 + 2 * HOUR),
        id="a runtime-only policy applies while the response is still queued",
    ),
]


@pytest.mark.parametrize(("policy", "status", "created_at", "now", "limits_hit", "expected"), DECIDE_CASES)
def test_decide_acts_on_the_earliest_passed_deadline_and_otherwise_keeps(
    policy, status, created_at, now, limits_hit, expected
):
    assert decide(policy, status, created_at, now, frozenset(limits_hit)) == expected


@pytest.mark.parametrize("status", TERMINAL_AND_LOST)
@pytest.mark.parametrize("policy", [DEEP, WARN, INVERTED], ids=lambda p: p.name)
def test_a_finished_response_is_never_acted_on_and_has_no_deadlines(policy, status):
    assert decide(policy, status, T0, T0 + 30 * DAY) == Keep()
    assert pending_deadlines(policy, status, T0) == []
    assert next_deadline(policy, status, T0) is None


@pytest.mark.parametrize(
    "limits_hit",
    [
        pytest.param(frozenset({"max_queued"}), id="frozenset"),
        pytest.param({"max_queued"}, id="set"),
        pytest.param(["max_queued"], id="list as stored in the database"),
    ],
)
def test_limits_hit_may_be_given_as_any_collection(limits_hit):
    assert decide(DEEP, "queued", T0, T0 + 11 * MINUTE, limits_hit) == Keep()
    assert next_deadline(DEEP, "queued", T0, limits_hit) == Deadline(MAX_RUNTIME_AT, "max_runtime")


# --- pending_deadlines / next_deadline ---------------------------------------------------------

PENDING_CASES = [
    # (policy, status, created_at, limits_hit, expected)
    pytest.param(
        DEEP,
        "queued",
        T0,
        (),
        [Deadline(MAX_QUEUED_AT, "max_queued"), Deadline(MAX_RUNTIME_AT, "max_runtime")],
        id="a queued response has both deadlines, earliest first",
    ),
    pytest.param(
        DEEP,
        None,
        T0,
        (),
        [Deadline(MAX_QUEUED_AT, "max_queued"), Deadline(MAX_RUNTIME_AT, "max_runtime")],
        id="a response not yet looked at may still be queued so keeps both deadlines",
    ),
    pytest.param(
        DEEP,
        "in_progress",
        T0,
        (),
        [Deadline(MAX_RUNTIME_AT, "max_runtime")],
        id="an in_progress response has only the max_runtime deadline",
    ),
    pytest.param(
        INVERTED,
        "queued",
        T0,
        (),
        [Deadline(T0 + 30 * MINUTE, "max_runtime"), Deadline(T0 + HOUR, "max_queued")],
        id="deadlines are sorted by instant not by limit name",
    ),
    pytest.param(
        DEEP,
        "queued",
        T0,
        ("max_queued",),
        [Deadline(MAX_RUNTIME_AT, "max_runtime")],
        id="a limit already hit is no longer pending",
    ),
    pytest.param(
        DEEP,
        "queued",
        T0,
        ("max_queued", "max_runtime"),
        [],
        id="with every limit hit nothing is pending",
    ),
    pytest.param(
        QUEUED_ONLY,
        "queued",
        T0,
        (),
        [Deadline(MAX_QUEUED_AT, "max_queued")],
        id="a queued-only policy has one deadline while queued",
    ),
    pytest.param(
        QUEUED_ONLY,
        "in_progress",
        T0,
        (),
        [],
        id="a queued-only policy has none once the response runs",
    ),
    pytest.param(
        RUNTIME_ONLY,
        "queued",
        T0,
        (),
        [Deadline(T0 + 2 * HOUR, "max_runtime")],
        id="a runtime-only policy has one deadline while queued",
    ),
    pytest.param(TRACK_ONLY, "queued", T0, (), [], id="a policy with neither limit has no deadline"),
    pytest.param(None, "queued", T0, (), [], id="no policy means no deadline"),
    pytest.param(DEEP, "queued", None, (), [], id="no created_at means no deadline"),
    pytest.param(DEEP, None, None, (), [], id="an unseen response without created_at has no deadline"),
]


@pytest.mark.parametrize(("policy", "status", "created_at", "limits_hit", "expected"), PENDING_CASES)
def test_pending_deadlines_lists_the_limits_still_to_enforce_earliest_first(
    policy, status, created_at, limits_hit, expected
):
    assert pending_deadlines(policy, status, created_at, frozenset(limits_hit)) == expected


@pytest.mark.parametrize(("policy", "status", "created_at", "limits_hit", "expected"), PENDING_CASES)
def test_next_deadline_is_the_first_pending_deadline(policy, status, created_at, limits_hit, expected):
    assert next_deadline(policy, status, created_at, frozenset(limits_hit)) == (expected[0] if expected else None)


@pytest.mark.parametrize(
    ("limits_hit", "expected"),
    [
        pytest.param((), Deadline(MAX_QUEUED_AT, "max_queued"), id="first max_queued"),
        pytest.param(("max_queued",), Deadline(MAX_RUNTIME_AT, "max_runtime"), id="then max_runtime"),
        pytest.param(("max_queued", "max_runtime"), None, id="then nothing"),
    ],
)
def test_once_a_limit_is_hit_the_next_deadline_becomes_the_other_limit(limits_hit, expected):
    assert next_deadline(WARN, "queued", T0, frozenset(limits_hit)) == expected


@pytest.mark.parametrize(
    ("status", "limits_hit"),
    [
        pytest.param("queued", (), id="queued"),
        pytest.param("queued", ("max_queued",), id="queued after max_queued was hit"),
        pytest.param("in_progress", (), id="in_progress"),
    ],
)
@pytest.mark.parametrize("policy", [DEEP, INVERTED, RUNTIME_ONLY, QUEUED_ONLY], ids=lambda p: p.name)
def test_decide_acts_exactly_from_the_next_deadline_onwards(policy, status, limits_hit):
    deadline = next_deadline(policy, status, T0, frozenset(limits_hit))
    if deadline is None:
        assert decide(policy, status, T0, T0 + 365 * DAY, frozenset(limits_hit)) == Keep()
        return
    before = decide(policy, status, T0, deadline.at - MICROSECOND, frozenset(limits_hit))
    at = decide(policy, status, T0, deadline.at, frozenset(limits_hit))
    assert before == Keep()
    assert at == Act(deadline.limit, policy.action, deadline.at)
