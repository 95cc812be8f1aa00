"""Hostile input: property-based tests (hypothesis) of what tether reads from outside.

- Config files: random TOML documents, and valid documents with one value replaced by a random
  one, make `check-config` exit 0 or 78 with a message, never a traceback.
- Command-line arguments (ids, labels, durations, filters): exit 0, 2 or 3 with a message.
- API payloads of unexpected shape: applying them to a tracked response never raises, the
  record still renders, and an unknown status is logged as an anomaly; end to end, the daemon
  survives replies of any shape and logs each failed one.

The CLI runs in-process here (Typer's CliRunner: thousands of examples in seconds); a few
cases also run as real subprocesses. Cases that hit a known bug are excluded from the
properties (`assume`) and reproduced on their own as strict xfails.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import API_KEY, Tether, wait_for
from tether import render, tracker
from tether.cli import app
from tether.config import parse_config
from tether.fakeapi import FakeServer, Faults, RouteFaults
from tether.models import Response
from tether.pricing import Pricing
from tether.statuses import API_STATUSES, TERMINAL
from tether.store import Store

REPO = Path(__file__).resolve().parent.parent
# the example config with its commented-out settings turned on (a bare `#` removed), so that
# random values land in policies, prices and budgets too
EXAMPLE = tomllib.loads(re.sub(r"(?m)^#(?=\[|[a-z_]+ = )", "", (REPO / "config" / "tether.toml").read_text()))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
runner = CliRunner()

# --- TOML -------------------------------------------------------------------------------------

KNOWN_KEYS = [
    "store",
    "url",
    "log",
    "format",
    "level",
    "stats_interval",
    "accounts",
    "default",
    "base_url",
    "api_key_env",
    "api_key_file",
    "api_key_credential",
    "api_key",
    "organization",
    "project",
    "max_concurrency",
    "request_timeout",
    "polling",
    "first",
    "max_interval",
    "backoff",
    "jitter",
    "confirm_window",
    "lost_after",
    "policy",
    "name",
    "match",
    "model",
    "metadata",
    "account",
    "labels",
    "max_queued",
    "max_runtime",
    "action",
    "reserve_usd",
    "prices",
    "input",
    "cached_input",
    "output",
    "service_tiers",
    "estimate",
    "output_tokens_per_second",
    "budget",
    "limit_usd",
    "period",
    "window",
    "timezone",
    "warn_at",
    "on_exceed",
]
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=12))
interesting_strings = st.sampled_from(
    [
        "",
        "5m",
        "0.5s",
        "1h30m",
        "2d",
        "-1s",
        "1e9s",
        "nan",
        "inf",
        "sk-abc",
        "cancel",
        "warn",
        "UTC",
        "Mars/Base",
        "day",
        "hour",
        "http://",
        "sqlite://",
        "sqlite:///:memory:",
        "/dev/null",
        "a" * 300,
        "🦀",
        "\\",
        "\n",
    ]
)
scalars = st.one_of(
    st.text(max_size=20),
    interesting_strings,
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12
)


def toml_value(value: Any) -> str:
    """`value` as TOML (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in data.items())


def replaced(data: Any, path: list[int], value: Any) -> Any:
    """`data` with the node chosen by `path` (indices into the keys/items met on the way) set to `value`."""
    if not path or not isinstance(data, (dict, list)) or not data:
        return value
    if isinstance(data, dict):
        key = sorted(data)[path[0] % len(data)]
        return {**data, key: replaced(data[key], path[1:], value)}
    index = path[0] % len(data)
    return [*data[:index], replaced(data[index], path[1:], value), *data[index + 1 :]]


@pytest.fixture(scope="module")
def workdir() -> Any:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def check_config(workdir: Path, text: str, *extra: str) -> Any:
    path = workdir / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    env = {"OPENAI_API_KEY": API_KEY, "XDG_STATE_HOME": str(workdir / "state"), "TETHER_CONFIG": None}
    return runner.invoke(app, ["--config", str(path), "check-config", *extra], env=env)


def assert_clean_exit(result: Any, allowed: tuple[int, ...]) -> None:
    assert result.exit_code in allowed, (result.exit_code, result.output[-2000:], repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert result.output.strip(), "an error exit without a message"
    assert API_KEY not in result.output


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_as_a_config_exits_0_or_78(workdir, text):
    result = check_config(workdir, text)
    assert_clean_exit(result, (0, 78))
    if result.exit_code == 78:
        assert "invalid configuration" in result.output


@FUZZ
@given(data=st.dictionaries(keys, toml_values, max_size=6))
def test_random_toml_documents_exit_0_or_78_with_a_message(workdir, data):
    text = toml_document(data)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assume(False)  # the serializer's fault (a key TOML cannot hold), not tether's
    for extra in ((), ("--json",)):
        result = check_config(workdir, text, *extra)
        assert_clean_exit(result, (0, 78))
        if result.exit_code == 78:
            assert "invalid configuration" in result.output


@FUZZ
@given(path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=5), value=toml_values)
def test_a_random_value_anywhere_in_the_example_config_exits_0_or_78_naming_the_key(workdir, path, value):
    data = replaced(EXAMPLE, path, value)
    result = check_config(workdir, toml_document(data), "--json")
    assert_clean_exit(result, (0, 78))
    if result.exit_code == 0:
        json.loads(result.output)  # --json prints one JSON document


def test_an_api_key_file_that_never_ends_is_refused_without_reading_it_forever(workdir):
    """`api_key_file = "/dev/zero"`: a key is a short line; reading an endless file must stop."""
    text = toml_document(
        {"accounts": {"default": {"api_key_file": "/dev/zero"}}, "store": {"url": f"sqlite:///{workdir}/k.db"}}
    )
    path = workdir / "zero.toml"
    path.write_text(text)
    import resource

    def at_most_1_gib() -> None:  # the endless read must not take the machine's memory with it
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    try:
        result = subprocess.run(
            [sys.executable, "-m", "tether", "--config", str(path), "check-config"],
            capture_output=True,
            text=True,
            timeout=10,
            preexec_fn=at_most_1_gib,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("check-config never returned: it reads /dev/zero without end")
    assert result.returncode in (0, 78) and "Traceback" not in result.stderr, result.stderr[-500:]


# --- command-line arguments -------------------------------------------------------------------

argv_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
arg = st.one_of(
    argv_text,
    st.sampled_from(
        [
            "",
            "-",
            "--",
            "--json",
            "resp_ok",
            "resp_" + "a" * 300,
            "a=b",
            "=x",
            "k=",
            "==",
            "1h",
            "-1s",
            "0s",
            "99999999999999999999d",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00Z",
            "0001-01-01T00:00:00-01:00",
            "9999-12-31T23:59:59+14:00",
            "nan",
            "1e309",
            "queued",
            "lost",
            "p",
            "default",
            "../../etc/passwd",
            "%s%n",
        ]
    ),
)


@pytest.fixture(scope="module")
def cli_home(workdir: Path) -> dict[str, str]:
    config = workdir / "cli.toml"
    config.write_text(
        f"""
[store]
url = "sqlite:///{workdir}/cli.db"
[accounts.default]
base_url = "http://127.0.0.1:9/v1"
api_key_env = "TETHER_FUZZ_KEY"
[[policy]]
name = "p"
max_runtime = "1h"
"""
    )
    return {"config": str(config)}


def tether_cli(cli_home: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, ["--config", cli_home["config"], *args], env={"TETHER_FUZZ_KEY": API_KEY})


@FUZZ
@given(rid=arg, as_json=st.booleans())
def test_show_any_id_exits_0_2_or_3(cli_home, rid, as_json):
    result = tether_cli(cli_home, "show", rid, *(["--json"] if as_json else []))
    assert_clean_exit(result, (0, 2, 3))


@FUZZ
@given(rid=arg, since=arg, follow=st.just(False))
def test_log_with_any_id_and_since_exits_0_or_2(cli_home, rid, since, follow):
    result = tether_cli(cli_home, "log", "--id", rid, "--since", since, "--json")
    assert_clean_exit(result, (0, 2))


@FUZZ
@given(status=arg, label=arg, limit=arg, policy=arg, active=st.booleans())
def test_ls_with_any_filters_exits_0_or_2(cli_home, status, label, limit, policy, active):
    args = ["ls", "--status", status, "--label", label, "--limit", limit, "--policy", policy, "--json"]
    result = tether_cli(cli_home, *args, *(["--active"] if active else []))
    assert_clean_exit(result, (0, 2))
    if result.exit_code == 0:
        assert isinstance(json.loads(result.output), list)


@FUZZ
@given(
    ids=st.lists(arg, min_size=1, max_size=3),
    label=arg,
    policy=st.one_of(st.none(), arg),
    account=st.one_of(st.none(), arg),
)
def test_track_without_a_look_of_any_ids_labels_policy_and_account_exits_0_or_2(cli_home, ids, label, policy, account):
    args = ["track", "--no-verify", "--json", "--label", label]
    args += ["--policy", policy] if policy is not None else []
    args += ["--account", account] if account is not None else []
    result = tether_cli(cli_home, *args, *ids)  # options first: an id "--" makes the rest ids
    assert_clean_exit(result, (0, 2))


@FUZZ
@given(rid=arg, reason=arg)
def test_cancel_of_any_untracked_id_exits_2_or_3(cli_home, rid, reason):
    assume(not rid.startswith("trk_"))
    result = tether_cli(cli_home, "cancel", rid, "--reason", reason)
    if result.exit_code == 1:  # an id tracked by an earlier example: the API (unreachable) was asked
        assert "cancel of" in result.output
        return
    assert_clean_exit(result, (0, 2, 3))


def test_hostile_arguments_in_real_processes_exit_2_or_3_without_a_traceback(cli_home):
    cases = [
        (["show", "../../etc/passwd"], 2),
        (["show", "resp_nope"], 3),
        (["log", "--since", "yesterday"], 2),
        (["ls", "--limit", "0"], 2),
        (["ls", "--status", "paused"], 2),
        (["track", "x y", "--no-verify"], 2),
        (["track", "resp_ok", "--label", "novalue", "--no-verify"], 2),
        (["cancel", "resp_nope"], 3),
    ]
    for args, code in cases:
        result = subprocess.run(
            [sys.executable, "-m", "tether", "--config", cli_home["config"], *args],
            capture_output=True,
            text=True,
            env={**os.environ, "TETHER_FUZZ_KEY": API_KEY},
            timeout=60,
        )
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert result.stderr.startswith("tether:") or "Usage" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


# --- API payloads -----------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["queued", "in_progress", "completed", "failed", "cancelled", "incomplete", "paused", ""]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "id",
    "status",
    "created_at",
    "model",
    "metadata",
    "background",
    "max_output_tokens",
    "service_tier",
    "usage",
    "error",
    "incomplete_details",
    "output",
    "object",
]


def base_object(status: str) -> dict[str, Any]:
    return {
        "id": "resp_x",
        "object": "response",
        "created_at": int(time.time()) - 5,
        "status": status,
        "model": "o3-pro",
        "metadata": {"team": "search"},
        "background": True,
        "max_output_tokens": None,
        "service_tier": "default",
        "usage": None,
        "error": None,
        "incomplete_details": None,
        "output": [],
    }


payloads = st.builds(
    lambda status, changes, drops: {k: v for k, v in {**base_object(status), **changes}.items() if k not in drops},
    st.sampled_from(["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]),
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), json_values, max_size=5),
    st.sets(st.sampled_from(FIELDS), max_size=4),
)

# Year 1 to 9999: what Python's datetime (and so tether's ISO rendering) can hold.
TIME_RANGE = (-62135596800.0, 253402300799.0)


def known_bug(payload: dict[str, Any]) -> str | None:
    """Payloads that hit a bug reproduced on its own below (excluded from the property)."""
    status = payload.get("status")
    if isinstance(status, (list, dict)):
        return "a status that is a list or an object"
    details = payload.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if status in TERMINAL and not isinstance(reason, (str, int, float, bool, type(None))):
        return "incomplete_details.reason that is not a scalar"
    for value in (reason, payload.get("max_output_tokens")):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            return "an integer beyond 64 bits"
    created = payload.get("created_at")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        if math.isfinite(created) and not TIME_RANGE[0] <= created <= TIME_RANGE[1] - 10**8:
            return "created_at outside the years 1 to 9999"
        if math.isinf(created):
            return "created_at outside the years 1 to 9999"
    return None


@pytest.fixture(scope="module")
def payload_store(workdir: Path) -> tuple[Store, Any, Pricing]:
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{workdir}/payloads.db"},
            "accounts": {"default": {"base_url": "http://x/v1"}},
            "policy": [
                {"name": "p", "match": {"metadata": {"team": "search"}}, "max_queued": "1m", "max_runtime": "1h"}
            ],
        },
        environ={},
    )
    store = Store(config.store.url)
    store.ensure_schema()
    return store, config, Pricing.from_config(config)


def apply(payload_store: tuple[Store, Any, Pricing], payload: dict[str, Any], rid: str) -> Response:
    store, config, pricing = payload_store
    with tracker.recording(store, "cli", time.time()) as rec:
        tracker.track(
            rec, config, pricing, response_id=rid, account="default", observed=None, policy_requested=None, labels={}
        )
    for _ in range(2):  # the same reply twice: the second changes nothing
        with tracker.recording(store, "daemon", time.time()) as rec:
            row = rec.session.get(Response, rid)
            tracker.observe(rec, row, payload, config, pricing, reason="poll")
    with store.reading() as session:
        return session.get(Response, rid)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads, n=st.integers(min_value=0, max_value=10**9))
def test_a_reply_of_any_shape_never_raises_and_the_record_still_renders(payload_store, payload, n):
    assume(known_bug(payload) is None)
    row = apply(payload_store, payload, f"resp_fuzz_{n}")
    record = render.record(row)
    json.dumps(record)
    assert row.status is None or row.status in API_STATUSES


def reproduce(payload_store: Any, payload: dict[str, Any]) -> None:
    row = apply(payload_store, payload, f"resp_bug_{time.monotonic_ns()}")
    json.dumps(render.record(row))


def test_an_incomplete_reason_that_is_not_a_string_is_stored_as_text(payload_store):
    reproduce(
        payload_store, {**base_object("incomplete"), "incomplete_details": {"reason": {"code": "max_output_tokens"}}}
    )


def test_a_status_that_is_a_list_is_an_anomaly_not_an_exception(payload_store):
    reproduce(payload_store, {**base_object("queued"), "status": ["in_progress"]})


def test_a_max_output_tokens_beyond_64_bits_is_ignored(payload_store):
    reproduce(payload_store, {**base_object("queued"), "max_output_tokens": 2**64})


def test_a_created_at_outside_the_calendar_is_refused_as_an_anomaly(payload_store):
    reproduce(payload_store, {**base_object("queued"), "created_at": 1e20})


# --- end to end: the daemon and replies of odd shape ------------------------------------------


def test_the_daemon_survives_replies_of_odd_shape_and_logs_each_failed_one(tmp_path: Path, fake: FakeServer):
    t = Tether(root=tmp_path, base_url=fake.base_url)
    t.write_config('[[policy]]\nname = "p"\nmatch = { metadata = { team = "a" } }\nmax_runtime = "3s"\n')
    daemon = t.start_daemon()
    fake.state.faults = Faults(seed=7, get=RouteFaults(odd_shape=0.4), cancel=RouteFaults(odd_shape=0.4))
    try:
        ids = [
            fake.state.create("o3-pro", background=True, metadata={"team": "a", "fake_run": str(1 + i % 6)}).id
            for i in range(20)
        ]
        assert t.cli("track", *ids, "--no-verify").returncode == 0
        wait_for(lambda: fake.state.fault_counts["odd_shape"] >= 20, timeout=60, what="20 odd replies")
        fake.state.faults = Faults()
        server = lambda: fake.state.snapshot()["responses"]  # noqa: E731
        wait_for(
            lambda: all(r["status"] == server()[r["id"]]["status"] for r in t.records().values()),
            timeout=60,
            what="tether to agree with the server once replies are sane again",
        )
        alive = daemon.poll() is None
        assert t.stop_daemon(daemon) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    lines = t.log_lines(daemon)
    assert alive
    unexpected = [line for line in lines if line["event"] in ("daemon.error", "daemon.failed", "daemon.store_failed")]
    assert not unexpected
    odd = [c for c in fake.state.calls() if c["fault"] and "odd_shape" in c["fault"]]
    errors = [line for line in lines if line["event"] == "api.error"]
    assert len(errors) >= len([c for c in odd if c["route"] == "get"]) * 0.2, "odd replies went unlogged"
    assert "Traceback" not in daemon.log_path.read_text()


def test_a_hostile_incomplete_reason_does_not_stop_the_daemon(tmp_path: Path, fake: FakeServer):
    t = Tether(root=tmp_path, base_url=fake.base_url)
    t.write_config()
    daemon = t.start_daemon()
    try:
        record = fake.state.create(
            "o3-pro", background=True, metadata={"fake_run": "0.5", "fake_outcome": "incomplete"}
        )
        record.overrides["incomplete_details"] = {"reason": {"code": "max_output_tokens"}}
        assert t.cli("track", record.id, "--no-verify").returncode == 0
        wait_for(
            lambda: daemon.poll() is not None or t.records()[record.id]["status"] == "incomplete",
            timeout=30,
            what="the incomplete status recorded (or the daemon gone)",
        )
        alive = daemon.poll() is None
        assert isinstance(t.records()[record.id]["incomplete_reason"], str)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert alive, daemon.log_path.read_text()[-1500:]


def test_a_reply_with_fields_of_the_wrong_type_is_logged_as_an_anomaly(tmp_path: Path, fake: FakeServer):
    t = Tether(root=tmp_path, base_url=fake.base_url)
    t.write_config()
    daemon = t.start_daemon()
    try:
        record = fake.state.create("o3-pro", background=True, metadata={"fake_run": "60"})
        record.overrides.update(created_at="yesterday", metadata=["team", "a"])
        assert t.cli("track", record.id, "--no-verify").returncode == 0
        wait_for(lambda: len(record.gets) >= 2, timeout=30, what="two polls")
    finally:
        t.stop_daemon(daemon)
    anomalies = [
        line
        for line in t.log_lines(daemon)
        if line["event"] == "api.error" and line.get("kind") == "anomaly" and line.get("response_id") == record.id
    ]
    assert anomalies and any("created_at" in line["error"] for line in anomalies)
