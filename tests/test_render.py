"""The JSON shapes of docs/cli.md and the helpers behind them in `tether.render`."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from rich.console import Console

from tether.config import parse_duration
from tether.models import Event, Response
from tether.render import (
    dumps,
    duration,
    event,
    event_line,
    human,
    iso,
    record,
    response_table,
    responses_table,
    stamp,
    usd,
)

T0 = 1_795_636_800.0  # 2026-11-25T20:00:00Z

RECORD_KEYS = [
    "id", "account", "status", "model", "policy", "labels", "metadata", "created_at", "tracked_at",
    "deadline_at", "last_polled_at", "polls", "cancel_requested_at", "cancel_reason", "finished_at",
    "error", "incomplete_reason", "usage", "cost_usd", "cost_estimated",
]  # fmt: skip
EVENT_KEYS = ["at", "response_id", "kind", "from", "to", "reason", "detail"]


# --- iso ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        pytest.param(T0, "2026-11-25T20:00:00Z", id="a whole second has no fraction"),
        pytest.param(int(T0), "2026-11-25T20:00:00Z", id="an int is a whole second"),
        pytest.param(T0 + 1.204, "2026-11-25T20:00:01.204Z", id="a fraction is given in milliseconds"),
        pytest.param(T0 + 0.5, "2026-11-25T20:00:00.500Z", id="a half second keeps three digits"),
        pytest.param(0, "1970-01-01T00:00:00Z", id="the epoch"),
        pytest.param(0.25, "1970-01-01T00:00:00.250Z", id="a fraction after the epoch"),
        pytest.param(None, None, id="no time is null"),
    ],
)
def test_iso_renders_utc_with_a_z_in_whole_seconds_or_milliseconds(at, expected):
    assert iso(at) == expected


@pytest.mark.parametrize("at", [T0, T0 + 0.001, T0 + 59.999, T0 + 86399.5, 1.0e9 + 0.123])
def test_iso_reads_back_as_the_same_utc_instant_to_the_millisecond(at):
    text = iso(at)
    assert text.endswith("Z") and "+" not in text
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None and parsed.utcoffset().total_seconds() == 0
    assert parsed.timestamp() == pytest.approx(at, abs=0.001)


# --- duration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        pytest.param(2700, "45m", id="45 minutes"),
        pytest.param(5400, "1h30m", id="an hour and a half"),
        pytest.param(0.5, "0.5s", id="half a second"),
        pytest.param(None, "-", id="no duration is a dash"),
        pytest.param(0, "0s", id="zero"),
        pytest.param(59, "59s", id="under a minute in seconds"),
        pytest.param(60, "1m", id="one minute"),
        pytest.param(90, "1m30s", id="a minute and a half"),
        pytest.param(3600, "1h", id="one hour"),
        pytest.param(3601, "1h1s", id="an hour and a second skips the zero minutes"),
        pytest.param(86400, "1d", id="one day"),
        pytest.param(2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d3h4m5s", id="every unit"),
        pytest.param(7200.0, "2h", id="a float that is whole"),
        pytest.param(90.5, "90.5s", id="a fractional duration above a minute stays in seconds"),
    ],
)
def test_duration_writes_seconds_as_the_config_does(seconds, expected):
    assert duration(seconds) == expected


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(0.25, id="250ms"),
        pytest.param(2700.0, id="45m"),
        pytest.param(5400.0, id="1h30m"),
        pytest.param(93784.0, id="1d2h3m4s"),
        pytest.param(3600.5, id="3600.5s"),
        pytest.param(1234567.5, id="a large fractional duration"),
        pytest.param(100000.5, id="a fractional duration with six integer digits"),
    ],
)
def test_a_rendered_duration_reads_back_as_the_same_number_of_seconds(seconds):
    assert parse_duration(duration(seconds), "rendered") == pytest.approx(seconds)


# --- record ------------------------------------------------------------------------------------


def full_response() -> Response:
    return Response(
        id="resp_abc123",
        account="default",
        status="in_progress",
        model="o3-pro",
        background=True,
        policy="deep-research",
        policy_requested="deep-research",
        labels={"job": "42"},
        meta={"team": "search"},
        created_at=T0,
        tracked_at=T0 + 1.204,
        deadline_at=T0 + 2700,
        deadline_kind="max_runtime",
        limits_hit=["max_queued"],
        last_polled_at=T0 + 30.5,
        polls=7,
        not_found=1,
        next_poll_at=T0 + 60,
        poll_interval=30.0,
        cancel_requested_at=None,
        cancel_reason=None,
        finished_at=None,
        error=None,
        incomplete_reason=None,
        usage=None,
        max_output_tokens=1000,
        service_tier="default",
        cost_usd=None,
        cost_estimated=False,
    )


def test_a_record_has_exactly_the_keys_of_spec_section_4_in_order():
    assert list(record(full_response())) == RECORD_KEYS


def test_a_minimal_record_still_has_every_key_in_order():
    assert list(record(Response(id="resp_x", account="default", tracked_at=T0))) == RECORD_KEYS


def test_a_record_matches_the_spec_example():
    assert record(full_response()) == {
        "id": "resp_abc123",
        "account": "default",
        "status": "in_progress",
        "model": "o3-pro",
        "policy": "deep-research",
        "labels": {"job": "42"},
        "metadata": {"team": "search"},
        "created_at": "2026-11-25T20:00:00Z",
        "tracked_at": "2026-11-25T20:00:01.204Z",
        "deadline_at": "2026-11-25T20:45:00Z",
        "last_polled_at": "2026-11-25T20:00:30.500Z",
        "polls": 7,
        "cancel_requested_at": None,
        "cancel_reason": None,
        "finished_at": None,
        "error": None,
        "incomplete_reason": None,
        "usage": None,
        "cost_usd": None,
        "cost_estimated": False,
    }


def test_a_record_of_a_response_never_looked_at_is_mostly_null():
    assert record(Response(id="resp_new", account="work", tracked_at=T0)) == {
        "id": "resp_new",
        "account": "work",
        "status": None,
        "model": None,
        "policy": None,
        "labels": {},
        "metadata": {},
        "created_at": None,
        "tracked_at": "2026-11-25T20:00:00Z",
        "deadline_at": None,
        "last_polled_at": None,
        "polls": 0,
        "cancel_requested_at": None,
        "cancel_reason": None,
        "finished_at": None,
        "error": None,
        "incomplete_reason": None,
        "usage": None,
        "cost_usd": None,
        "cost_estimated": False,
    }


USAGE = {
    "input_tokens": 100,
    "input_tokens_details": {"cached_tokens": 20},
    "output_tokens": 500,
    "output_tokens_details": {"reasoning_tokens": 400},
    "total_tokens": 600,
}


@pytest.mark.parametrize(
    ("fields", "key", "expected"),
    [
        pytest.param({"meta": {"team": "search"}}, "metadata", {"team": "search"}, id="metadata comes from meta"),
        pytest.param({"labels": {"job": "42"}}, "labels", {"job": "42"}, id="labels are a mapping"),
        pytest.param({"status": "lost"}, "status", "lost", id="the local lost status is shown"),
        pytest.param(
            {"cancel_requested_at": T0 + 600.25},
            "cancel_requested_at",
            "2026-11-25T20:10:00.250Z",
            id="the cancel request time is iso",
        ),
        pytest.param(
            {"cancel_reason": "budget:search-daily"},
            "cancel_reason",
            "budget:search-daily",
            id="a budget cancel reason",
        ),
        pytest.param({"finished_at": T0 + 3600}, "finished_at", "2026-11-25T21:00:00Z", id="the finish time is iso"),
        pytest.param(
            {"error": {"code": "server_error", "message": "boom"}},
            "error",
            {"code": "server_error", "message": "boom"},
            id="a failed response's error is code and message",
        ),
        pytest.param(
            {"incomplete_reason": "max_output_tokens"},
            "incomplete_reason",
            "max_output_tokens",
            id="the incomplete reason",
        ),
        pytest.param({"usage": USAGE}, "usage", USAGE, id="usage is passed through"),
        pytest.param({"cost_usd": 0.042}, "cost_usd", 0.042, id="the cost in dollars"),
        pytest.param({"cost_estimated": True}, "cost_estimated", True, id="an estimated cost is flagged"),
        pytest.param({"polls": 12}, "polls", 12, id="the poll count"),
    ],
)
def test_a_record_carries_each_field_of_the_response(fields, key, expected):
    row = Response(id="resp_x", account="default", tracked_at=T0, **fields)
    assert record(row)[key] == expected


@pytest.mark.parametrize(
    "hidden",
    ["meta", "background", "policy_requested", "deadline_kind", "limits_hit", "not_found", "next_poll_at",
     "poll_interval", "cancel_state", "cancel_attempts", "confirm_until", "max_output_tokens", "service_tier"],
)  # fmt: skip
def test_a_record_does_not_expose_the_daemons_internal_columns(hidden):
    assert hidden not in record(full_response())


def test_a_record_is_json_serialisable_with_times_as_strings():
    row = full_response()
    row.usage = USAGE
    text = dumps(record(row))
    decoded = json.loads(text)
    assert decoded["created_at"] == "2026-11-25T20:00:00Z"
    assert list(decoded) == RECORD_KEYS


# --- event -------------------------------------------------------------------------------------


EVENT_CASES = [
    pytest.param(
        Event(at=T0 + 31.5, response_id="resp_abc", kind="status", from_status="queued", to_status="in_progress",
              reason="poll", detail={}),
        {"at": "2026-11-25T20:00:31.500Z", "response_id": "resp_abc", "kind": "status", "from": "queued",
         "to": "in_progress", "reason": "poll", "detail": {}},
        id="a status change has from and to",
    ),
    pytest.param(
        Event(at=T0 + 600, response_id="resp_abc", kind="cancel_requested", reason="max_queued",
              detail={"policy": "deep-research"}),
        {"at": "2026-11-25T20:10:00Z", "response_id": "resp_abc", "kind": "cancel_requested", "from": None,
         "to": None, "reason": "max_queued", "detail": {"policy": "deep-research"}},
        id="a cancel request has its reason and no statuses",
    ),
    pytest.param(
        Event(at=T0, response_id="resp_abc", kind="tracked"),
        {"at": "2026-11-25T20:00:00Z", "response_id": "resp_abc", "kind": "tracked", "from": None, "to": None,
         "reason": None, "detail": {}},
        id="a bare event has null fields and an empty detail",
    ),
    pytest.param(
        Event(at=T0 + 1, response_id="resp_abc", kind="cancel_failed", reason="max_runtime",
              detail={"http_status": 503, "error": "unavailable", "attempt": 2, "will_retry": True}),
        {"at": "2026-11-25T20:00:01Z", "response_id": "resp_abc", "kind": "cancel_failed", "from": None,
         "to": None, "reason": "max_runtime",
         "detail": {"http_status": 503, "error": "unavailable", "attempt": 2, "will_retry": True}},
        id="a failed cancel carries its detail",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("ev", "expected"), EVENT_CASES)
def test_an_event_renders_as_the_spec_event_object(ev, expected):
    rendered = event(ev)
    assert list(rendered) == EVENT_KEYS
    assert rendered == expected


def test_an_event_does_not_expose_its_row_id_or_origin():
    rendered = event(Event(id=5, at=T0, response_id="resp_abc", kind="tracked", origin="daemon"))
    assert "id" not in rendered and "origin" not in rendered


def test_an_event_is_one_json_line():
    ev = Event(at=T0, response_id="resp_abc", kind="status", from_status="queued", to_status="in_progress",
               reason="poll", detail={"note": "a\nb"})  # fmt: skip
    text = dumps(event(ev))
    assert "\n" not in text
    assert json.loads(text)["detail"] == {"note": "a\nb"}


# --- human renderings --------------------------------------------------------------------------

LONG_ID = "resp_" + "0123456789abcdef" * 3  # as long as the API's ids (53 characters)


def rendered(renderable, width: int = 200) -> str:
    console = Console(width=width, color_system=None, markup=False, highlight=False)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


@pytest.mark.parametrize("at", [T0, T0 + 0.5, T0 + 1.204, T0 + 59.999, 0, 1.0e9 + 0.123])
def test_a_human_timestamp_has_one_width_with_or_without_a_fraction(at):
    text = stamp(at)
    assert len(text) == len("2026-11-25T20:00:00.000Z") and text.endswith("Z")
    assert datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() == pytest.approx(at, abs=0.001)


@pytest.mark.parametrize(
    ("amount", "estimated", "expected"),
    [
        pytest.param(0.15119740104675292, False, "$0.1512", id="below a dollar: 4 decimals"),
        pytest.param(0.15119740104675292, True, "$0.1512 (estimated)", id="estimated says so in words"),
        pytest.param(12.5, False, "$12.50", id="a dollar or more: to the cent"),
        pytest.param(1234.5, True, "$1,234.50 (estimated)", id="thousands are grouped"),
        pytest.param(0.0, False, "$0.0000", id="nothing spent"),
        pytest.param(None, False, "-", id="no cost known"),
    ],
)
def test_money_is_written_as_people_write_it(amount, estimated, expected):
    assert usd(amount, estimated) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(True, "yes", id="true"),
        pytest.param(False, "no", id="false"),
        pytest.param({"job": "42", "team": "search"}, "job=42, team=search", id="labels"),
        pytest.param(
            {"input_tokens": 10, "details": {"reasoning": 4}}, "input_tokens=10, details=(reasoning=4)", id="nested"
        ),
        pytest.param({}, "-", id="no labels"),
        pytest.param(None, "-", id="null"),
        pytest.param(["max_queued", "max_runtime"], "max_queued, max_runtime", id="a list"),
        pytest.param(7, "7", id="a number"),
    ],
)
def test_human_values_are_yes_no_and_key_value_pairs(value, expected):
    assert human(value) == expected


def test_show_prints_money_booleans_labels_and_times_for_people():
    row = full_response()
    row.cost_usd, row.cost_estimated = 0.15119740104675292, True
    row.usage = {"input_tokens": 100, "output_tokens": 2000}
    lines = dict(
        line.strip().split(None, 1) for line in rendered(response_table(record(row))).splitlines() if line.strip()
    )
    assert lines["cost"] == "$0.1512 (estimated)"
    assert "cost_estimated" not in lines and "cost_usd" not in lines
    assert lines["labels"] == "job=42" and lines["metadata"] == "team=search"
    assert lines["usage"] == "input_tokens=100, output_tokens=2000"
    assert lines["created_at"] == "2026-11-25T20:00:00.000Z" and lines["tracked_at"] == "2026-11-25T20:00:01.204Z"
    assert lines["cancel_requested_at"] == "-"


def test_an_event_line_has_a_fixed_width_time_and_labels_as_pairs():
    ev = Event(
        at=T0,
        response_id="resp_abc123",
        kind="tracked",
        to_status="queued",
        detail={"account": "default", "policy": None, "labels": {"job": "42", "team": "search"}},
    )
    line = event_line(event(ev)).plain
    assert line.startswith("2026-11-25T20:00:00.000Z  resp_abc123  tracked")
    assert "account=default, labels=(job=42, team=search)" in line
    assert "{" not in line and "policy" not in line


def test_the_responses_table_prints_every_id_whole_even_on_a_narrow_terminal():
    rows = [Response(id=LONG_ID[:-1] + str(i), account="default", tracked_at=T0, status="queued") for i in range(3)]
    text = rendered(responses_table([record(r) for r in rows], T0 + 60), width=80)
    assert all(row.id in text for row in rows), text


def test_ls_reads_plain_rows_that_render_as_the_stored_responses_do(store_url):
    """`tether ls` reads only the columns a record shows, as plain rows (not ORM objects): each
    record is the one its stored row renders, every field set or none."""
    from tether.actions import list_records
    from tether.config import parse_config
    from tether.store import Store

    store = Store(store_url)
    store.migrate()
    finished = full_response()
    finished.id, finished.status, finished.tracked_at = "resp_done", "failed", T0 + 5
    finished.finished_at, finished.usage, finished.error = T0 + 90, {"output_tokens": 3}, {"code": "x", "message": "y"}
    finished.incomplete_reason, finished.cost_usd, finished.cost_estimated = "max_output_tokens", 0.25, True
    finished.cancel_requested_at, finished.cancel_reason = T0 + 80, "manual"
    rows = [finished, full_response(), Response(id="resp_new", account="work", tracked_at=T0)]
    with store.writing() as session:
        session.add_all(rows)
    with store.reading() as session:
        expected = [record(session.get(Response, row.id)) for row in rows]
    config = parse_config({"accounts": {"default": {"api_key_env": "X"}}}, environ={})
    listed = list_records(store, config, statuses=[], active=False, policy=None, labels={}, limit=10)
    assert listed == expected
    assert list_records(store, config, statuses=[], active=False, policy=None, labels={"job": "42"}, limit=1) == [
        expected[0]
    ]
    store.dispose()
