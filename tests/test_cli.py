"""The `tether` command line (docs/cli.md) through real subprocesses, against the stand-in API.

Oracles: exit codes and JSON shapes from docs/cli.md, the stand-in's own record of every call
(`fake.state.snapshot()`), and tether's store read back through `ls/show/log --json`.
Most tests need no daemon: the CLI reads and writes the store itself.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from conftest import API_KEY, FAST_POLLING, Tether, create, https_stand_in, server_record, wait_for

REPO = Path(__file__).resolve().parent.parent

RECORD_KEYS = [
    "id", "account", "status", "model", "policy", "labels", "metadata", "created_at", "tracked_at",
    "deadline_at", "last_polled_at", "polls", "cancel_requested_at", "cancel_reason", "finished_at",
    "error", "incomplete_reason", "usage", "cost_usd", "cost_estimated",
]  # fmt: skip
EVENT_KEYS = ["at", "response_id", "kind", "from", "to", "reason", "detail"]

POLICIES = """
[[policy]]
name = "alpha"
match = { metadata = { case = "a" } }
max_runtime = "1h"

[[policy]]
name = "beta"
match = { metadata = { case = "b" } }
max_runtime = "2h"
"""

WRONG_KEY = "sk-wrong-9876543210-MUST-NOT-LEAK"


# ---- helpers -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def key_never_printed(monkeypatch):
    """Every `tether.cli(...)` in this file also checks that the API key is not in its output."""
    original = Tether.cli

    def cli(self: Tether, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
        result = original(self, *args, **kwargs)
        assert_no_secret(result)
        return result

    monkeypatch.setattr(Tether, "cli", cli)


def assert_no_secret(result: subprocess.CompletedProcess) -> None:
    for secret in (API_KEY, WRONG_KEY):
        assert secret not in result.stdout, f"the API key leaked to stdout of {result.args}"
        assert secret not in result.stderr, f"the API key leaked to stderr of {result.args}"


def run(
    tether: Tether,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """`tether ARGS` with no implied --config, a chosen environment and working directory."""
    result = subprocess.run(
        [sys.executable, "-m", "tether", *args],
        env={**tether.env, **(env or {})},
        cwd=cwd or tether.root,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_no_secret(result)
    return result


def cli_all(tether: Tether, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Independent `tether.cli(*args)` calls run side by side (each subprocess costs ~1-2 s)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tether", "--config", str(tether.config_path), *args],
            env=tether.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in calls
    ]
    results = []
    for args, proc in zip(calls, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=60)
        result = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
        assert_no_secret(result)
        results.append(result)
    return results


def api_calls(fake, route: str) -> int:
    """How many requests the stand-in received on a route (`create`, `get`, `cancel`)."""
    return fake.state.snapshot()["requests"].get(route, 0)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def events(tether: Tether, *args: str) -> list[dict]:
    result = tether.cli("log", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json_lines(result.stdout)


def no_traceback(result: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in result.stderr and "Traceback" not in result.stdout


STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*Z")


def track_at(tether: Tether, rid: str, at: float) -> None:
    """Track `rid` with tether's own code as if at `at`: an event written after later ones."""
    from tether import tracker
    from tether.config import load_config
    from tether.pricing import Pricing
    from tether.store import Store

    config = load_config(str(tether.config_path), environ=tether.env)
    with tracker.recording(Store(config.store.url), "cli", at) as rec:
        tracker.track(
            rec,
            config,
            Pricing.from_config(config),
            response_id=rid,
            account="default",
            observed=None,
            policy_requested=None,
            labels={},
        )


# ---- track -------------------------------------------------------------------------------


def test_track_json_prints_one_record_per_id_with_exactly_the_spec_keys_in_order(tether, fake):
    ids = [create(fake, fake_run="60"), create(fake, fake_queue="60")]
    result = tether.cli("track", *ids, "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    for record in records:
        assert list(record) == RECORD_KEYS
    assert [r["id"] for r in records] == ids
    assert [r["status"] for r in records] == ["in_progress", "queued"]
    assert records[0]["account"] == "default" and records[0]["model"] == "o3-pro"
    assert records[0]["metadata"] == {"fake_run": "60"}
    assert records[0]["tracked_at"].endswith("Z") and records[0]["created_at"].endswith("Z")
    assert records[0]["polls"] == 0 and records[0]["cost_estimated"] is False


def test_tracking_an_id_again_changes_nothing_and_records_a_single_tracked_event(tether, fake):
    rid = create(fake, fake_run="60")
    first = tether.cli("track", rid, "--json")
    again = tether.cli("track", rid, "--json")
    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert [e["kind"] for e in tether.json("show", rid)["events"]] == ["tracked"]


def test_tracking_an_unknown_id_exits_3_names_it_and_stores_nothing_not_even_the_known_ids(tether, fake):
    known = create(fake, fake_run="60")
    result = tether.cli("track", known, "resp_does_not_exist")
    assert result.returncode == 3, result.stderr
    assert "resp_does_not_exist" in result.stderr
    assert tether.json("ls") == []


def test_tracking_a_malformed_id_exits_2_without_asking_the_api(tether, fake):
    bad_ids = ["bad id!", "../x", ""]
    for bad, result in zip(bad_ids, cli_all(tether, *(("track", bad) for bad in bad_ids)), strict=True):
        assert result.returncode == 2, f"{bad!r}: {result.stderr}"
        assert "invalid response id" in result.stderr and no_traceback(result), bad
    assert api_calls(fake, "get") == 0
    assert not tether.store_path.exists(), "nothing should be stored"


def test_tracking_while_the_api_is_down_exits_1_and_stores_nothing(tether, fake):
    rid = create(fake, fake_run="60")
    fake.state.faults.outage_for(120)
    result = tether.cli("track", rid)
    assert result.returncode == 1, result.stderr
    assert rid in result.stderr and "503" in result.stderr and no_traceback(result)
    assert not tether.store_path.exists(), "nothing should be stored"


def test_https_works_with_the_ca_named_by_ssl_cert_file_and_an_untrusted_one_is_named(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with https_stand_in(ca) as https_fake:
        rid = https_fake.state.create("o3-pro", background=True, metadata={"fake_run": "60"}).id
        untrusted = Tether(root=tmp_path, base_url=https_fake.base_url, extra_env={"SSL_CERT_FILE": "/dev/null"})
        untrusted.write_config()
        refused = untrusted.cli("track", rid)
        trusted = Tether(
            root=tmp_path, base_url=https_fake.base_url, extra_env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")}
        )
        tracked = trusted.json("track", rid)
    assert refused.returncode == 1 and no_traceback(refused)
    assert "certificate of 127.0.0.1 is not trusted" in refused.stderr, refused.stderr
    assert tracked["id"] == rid


def test_tracking_with_an_unknown_policy_exits_2_naming_the_known_policies(tether, fake):
    tether.write_config(POLICIES)
    result = tether.cli("track", "resp_abc", "--no-verify", "--policy", "nope")
    assert result.returncode == 2, result.stderr
    assert "nope" in result.stderr and "alpha" in result.stderr and "beta" in result.stderr
    assert not tether.store_path.exists(), "nothing should be stored"


def test_tracking_with_an_unknown_account_exits_2(tether, fake):
    result = tether.cli("track", "resp_abc", "--no-verify", "--account", "nope")
    assert result.returncode == 2, result.stderr
    assert "nope" in result.stderr and "default" in result.stderr
    assert not tether.store_path.exists(), "nothing should be stored"


def test_track_labels_are_stored_and_select_responses_in_ls(tether, fake):
    first = tether.cli("track", "resp_job42", "--no-verify", "--label", "job=42", "--label", "team=a=b")
    second = tether.cli("track", "resp_job7", "--no-verify", "--label", "job=7")
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    [record] = tether.json("ls", "--label", "job=42")
    assert record["id"] == "resp_job42"
    assert record["labels"] == {"job": "42", "team": "a=b"}


def test_a_label_without_a_value_exits_2(tether, fake):
    result = tether.cli("track", "resp_abc", "--no-verify", "--label", "novalue")
    assert result.returncode == 2, result.stderr
    assert "KEY=VALUE" in result.stderr and no_traceback(result)


def test_track_no_verify_stores_status_null_without_calling_the_api(tether, fake):
    result = tether.cli("track", "resp_unseen", "another-server-id", "--no-verify", "--json")
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert [(r["id"], r["status"], r["model"]) for r in records] == [
        ("resp_unseen", None, None),
        ("another-server-id", None, None),
    ]
    assert api_calls(fake, "get") == 0


# ---- submit ------------------------------------------------------------------------------


def test_submit_from_a_file_forces_background_prints_the_id_and_tracks_it(tether, fake):
    tether.write_config(POLICIES)
    body = tether.root / "body.json"
    body.write_text(json.dumps({"model": "o3-pro", "input": "hi", "background": False, "metadata": {"fake_run": "60"}}))
    result = tether.cli("submit", str(body), "--policy", "beta", "--label", "job=9")
    assert result.returncode == 0, result.stderr
    rid = result.stdout.strip()
    assert server_record(fake, rid)["background"] is True
    shown = tether.json("show", rid)
    assert (shown["status"], shown["policy"], shown["labels"]) == ("in_progress", "beta", {"job": "9"})
    assert [e["kind"] for e in shown["events"]] == ["tracked"]


def test_submit_reads_the_body_from_stdin_with_a_dash(tether, fake):
    body = json.dumps({"model": "gpt-5-pro", "input": "hi", "metadata": {"fake_queue": "60"}})
    result = tether.cli("submit", "-", input=body)
    assert result.returncode == 0, result.stderr
    rid = result.stdout.strip()
    assert server_record(fake, rid)["background"] is True
    assert server_record(fake, rid)["model"] == "gpt-5-pro"
    assert tether.records()[rid]["status"] == "queued"


@pytest.mark.parametrize(
    "body",
    ["{not json", json.dumps({"input": "no model"})],
    ids=["invalid-json", "no-model"],
)
def test_submit_rejects_a_bad_body_with_exit_2_and_sends_nothing(tether, fake, body):
    result = tether.cli("submit", "-", input=body)
    assert result.returncode == 2, result.stderr
    assert no_traceback(result)
    assert api_calls(fake, "create") == 0


def test_submit_of_a_body_the_api_rejects_exits_2_with_the_api_message_and_tracks_nothing(tether, fake):
    body = json.dumps({"model": "o3-pro", "input": "x", "metadata": {"fake_outcome": "exploded"}})
    result = tether.cli("submit", "-", input=body)
    assert result.returncode == 2, result.stderr
    assert "400" in result.stderr and "fake_" in result.stderr
    assert tether.json("ls") == []


@pytest.mark.parametrize("fault", ["server_error", "drop"])
def test_submit_whose_create_failed_after_it_was_sent_is_not_sent_again_and_says_check_first(tether, fake, fault):
    fake.state.faults.force("create", fault)
    result = tether.cli("submit", "-", input=json.dumps({"model": "o3-pro", "input": "x"}))
    assert result.returncode == 1, result.stderr
    assert "may have created a response" in result.stderr
    assert no_traceback(result)
    assert api_calls(fake, "create") == 1  # a create is never resent once it may have arrived
    assert tether.json("ls") == []


def test_submit_to_an_api_that_cannot_be_reached_says_nothing_was_created(tether):
    tether.base_url = "http://127.0.0.1:1/v1"  # nothing listens there
    tether.write_config()
    result = tether.cli("submit", "-", input=json.dumps({"model": "o3-pro", "input": "x"}))
    assert result.returncode == 1, result.stderr
    assert "nothing was created; submit it again later" in result.stderr
    assert no_traceback(result)


def test_submit_refused_unprocessed_with_a_429_is_sent_again_and_tracked_once(tether, fake):
    fake.state.faults.retry_after = 0.2
    fake.state.faults.force("create", "rate_limit")
    result = tether.cli(
        "submit", "-", input=json.dumps({"model": "o3-pro", "input": "x", "metadata": {"fake_run": "60"}})
    )
    assert result.returncode == 0, result.stderr
    assert api_calls(fake, "create") == 2
    [rid] = fake.state.snapshot()["responses"]
    assert result.stdout.strip() == rid
    assert [r["id"] for r in tether.json("ls")] == [rid]


# ---- ls ----------------------------------------------------------------------------------


def test_ls_lists_newest_first_and_limit_keeps_the_newest(tether, fake):
    # tracked in this order, so newest first is the reverse of the ids' own order
    for rid in ("resp_a_older", "resp_b_newer"):
        tether.ok("track", rid, "--no-verify")
    listed, limited, table = cli_all(tether, ("ls", "--json"), ("ls", "--limit", "1", "--json"), ("ls",))
    assert listed.returncode == limited.returncode == table.returncode == 0, listed.stderr + table.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == ["resp_b_newer", "resp_a_older"]
    assert [r["id"] for r in json.loads(limited.stdout)] == ["resp_b_newer"]
    assert table.stdout.index("resp_b_newer") < table.stdout.index("resp_a_older")


def test_ls_filters_by_status_activity_and_policy(tether, fake):
    tether.write_config(POLICIES)
    queued = create(fake, case="a", fake_queue="60")
    running = create(fake, case="b", fake_run="60")
    done = create(fake, case="a", fake_run="0")
    tether.ok("track", queued, running, done)

    queries = {
        ("--status", "queued"): {queued},
        ("--status", "queued", "--status", "completed"): {queued, done},
        ("--active",): {queued, running},
        ("--policy", "alpha"): {queued, done},
    }
    results = cli_all(tether, *(("ls", *query, "--json") for query in queries))
    for (query, expected), result in zip(queries.items(), results, strict=True):
        assert result.returncode == 0, result.stderr
        assert {r["id"] for r in json.loads(result.stdout)} == expected, query


def test_ls_with_an_unknown_policy_exits_2_like_track_listing_the_known_ones(tether, fake):
    tether.write_config(POLICIES)
    tether.ok("track", "resp_alpha", "--no-verify", "--policy", "alpha")
    result = tether.cli("ls", "--policy", "nosuch")
    assert result.returncode == 2, result.stderr
    assert "nosuch" in result.stderr and "alpha" in result.stderr and "beta" in result.stderr
    assert result.stdout == "" and no_traceback(result)


def test_ls_still_selects_by_a_policy_removed_from_the_config_that_stored_responses_carry(tether, fake):
    tether.write_config(POLICIES)
    tether.ok("track", "resp_alpha", "--no-verify", "--policy", "alpha")
    tether.write_config('[[policy]]\nname = "beta"\nmax_runtime = "2h"\n')  # alpha is gone
    assert [r["id"] for r in tether.json("ls", "--policy", "alpha")] == ["resp_alpha"]
    assert tether.json("ls", "--policy", "beta") == []
    result = tether.cli("ls", "--policy", "gamma")
    assert result.returncode == 2, result.stderr
    assert "beta" in result.stderr and "alpha" in result.stderr, "both the configured and the stored names"


def test_ls_with_an_unknown_status_exits_2_listing_the_valid_ones(tether, fake):
    result = tether.cli("ls", "--status", "running")
    assert result.returncode == 2, result.stderr
    assert "running" in result.stderr and "in_progress" in result.stderr


# ---- show --------------------------------------------------------------------------------


def test_show_json_is_the_record_plus_its_event_history(tether, fake):
    rid = create(fake, fake_run="60")
    tether.ok("track", rid, "--label", "job=1")
    shown = tether.json("show", rid)
    assert list(shown) == [*RECORD_KEYS, "events"]
    assert shown["id"] == rid and shown["labels"] == {"job": "1"}
    [tracked] = shown["events"]
    assert list(tracked) == EVENT_KEYS
    assert (tracked["response_id"], tracked["kind"], tracked["to"]) == (rid, "tracked", "in_progress")
    assert tracked["at"].endswith("Z")


IMPORTED = """
import json, sys
from tether.cli import main
sys.argv = ["tether", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    assert not exit.code, exit.code
heavy = [m for m in ("sqlmodel", "sqlalchemy.orm", "tether.models") if m in sys.modules]
print("imported:", json.dumps(heavy), file=sys.stderr)
"""


def test_ls_show_and_log_read_the_store_without_importing_sqlmodel_or_the_orm(tether, fake):
    """They read in SQLAlchemy Core (Store.table): SQLModel and the ORM would cost `ls` a sixth of
    its start-up (docs/benchmarks.md, CLI start-up)."""
    rid = create(fake, fake_run="60")
    tether.ok("track", rid, "--label", "job=1")
    for command in (["ls"], ["ls", "--active", "--label", "job=1"], ["show", rid], ["log", "--id", rid]):
        result = subprocess.run(
            [sys.executable, "-c", IMPORTED, "--config", str(tether.config_path), *command, "--json"],
            env=tether.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert rid in result.stdout
        [imported] = [line for line in result.stderr.splitlines() if line.startswith("imported:")]
        assert imported == "imported: []", f"tether {' '.join(command)} {imported}"


@pytest.mark.parametrize(("rid", "code"), [("resp_not_tracked", 3), ("../etc/passwd", 2)], ids=["unknown", "malformed"])
def test_show_of_an_unknown_id_exits_3_and_of_a_malformed_one_2(tether, fake, rid, code):
    result = tether.cli("show", rid, "--json")
    assert result.returncode == code, result.stderr
    assert rid in result.stderr and result.stdout == ""


def test_show_prints_labels_literally_even_when_they_look_like_markup_or_emoji_codes(tether, fake):
    tether.ok("track", "resp_markup", "--no-verify", "--label", "a=[/]", "--label", "b=[red]x", "--label", "c=:smile:")
    result = tether.cli("show", "resp_markup")
    assert result.returncode == 0, result.stderr[-500:]
    assert no_traceback(result)
    [labels] = [line.split(None, 1)[1] for line in result.stdout.splitlines() if line.strip().startswith("labels ")]
    assert labels.strip() == "a=[/], b=[red]x, c=:smile:"


def test_show_prints_money_labels_and_times_as_people_read_them(tether, fake):
    rid = create(fake, fake_run="0")
    tether.ok("track", rid, "--label", "job=42", "--label", "team=search")
    cost = tether.json("show", rid)["cost_usd"]
    assert cost is not None, "the stand-in's usage should give a finished response a cost"
    text = tether.ok("show", rid).stdout
    fields = dict(line.strip().split(None, 1) for line in text.split("\n\n")[0].splitlines())
    assert fields["id"] == rid
    assert fields["labels"] == "job=42, team=search"
    assert re.fullmatch(r"\$[\d,]+\.(\d{4}|\d{2})", fields["cost"]), fields["cost"]
    assert float(fields["cost"].lstrip("$").replace(",", "")) == pytest.approx(cost, abs=0.00005 if cost < 1 else 0.005)
    assert "cost_usd" not in fields and "cost_estimated" not in fields
    assert "True" not in text and "False" not in text and "{" not in text
    stamps = STAMP.findall(text)
    assert stamps and {len(s) for s in stamps} == {len("2026-01-01T00:00:00.000Z")}, stamps
    assert rid in tether.ok("ls").stdout, "ls prints ids whole"


# ---- log ---------------------------------------------------------------------------------


def test_log_prints_events_in_time_order_in_one_time_width_with_labels_as_pairs(tether, fake):
    tether.ok("track", "resp_written_first", "--no-verify", "--label", "job=42", "--label", "team=search")
    track_at(tether, "resp_written_later", float(int(time.time()) - 60))  # a whole second, a minute ago
    assert [e["response_id"] for e in events(tether)] == ["resp_written_later", "resp_written_first"]
    lines = tether.ok("log").stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["resp_written_later", "resp_written_first"]
    assert {len(line.split()[0]) for line in lines} == {len("2026-01-01T00:00:00.000Z")}, lines
    assert all(STAMP.fullmatch(line.split()[0]) for line in lines), lines
    assert "labels=(job=42, team=search)" in lines[1] and "{" not in lines[1]


def test_log_json_prints_one_event_per_line_oldest_first(tether, fake):
    first = create(fake, fake_run="60")
    tether.ok("track", first)
    tether.ok("cancel", first, "--reason", "test")
    tether.ok("track", "resp_later", "--no-verify")

    logged = events(tether)
    assert all(list(e) == EVENT_KEYS for e in logged)
    assert [(e["response_id"], e["kind"]) for e in logged] == [
        (first, "tracked"),
        (first, "cancel_requested"),
        (first, "status"),
        ("resp_later", "tracked"),
    ]
    assert [e["at"] for e in logged] == sorted(e["at"] for e in logged)


def test_log_is_narrowed_by_id_and_by_since_a_duration_or_a_timestamp(tether, fake):
    tether.ok("track", "resp_old", "--no-verify")
    tether.ok("track", "resp_new", "--no-verify")
    [old, new] = events(tether)
    assert old["at"] < new["at"], "the two tracks should be at least a millisecond apart"
    queries = {
        ("--id", "resp_old"): ["resp_old"],
        ("--since", "1h"): ["resp_old", "resp_new"],
        ("--since", "2020-01-01T00:00:00Z"): ["resp_old", "resp_new"],
        ("--since", new["at"]): ["resp_new"],
        ("--since", "2099-01-01T00:00:00Z"): [],
    }
    results = cli_all(tether, *(("log", "--json", *query) for query in queries))
    for (query, expected), result in zip(queries.items(), results, strict=True):
        assert result.returncode == 0, result.stderr
        assert [e["response_id"] for e in json_lines(result.stdout)] == expected, query


def test_log_since_garbage_exits_2(tether, fake):
    result = tether.cli("log", "--since", "garbage")
    assert result.returncode == 2, result.stderr
    assert "garbage" in result.stderr and no_traceback(result)


def test_log_follow_prints_an_event_written_after_it_started(tether, fake):
    tether.ok("track", "resp_before", "--no-verify")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "--config", str(tether.config_path), "log", "--follow", "--json"],
        env=tether.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("resp_before" in line for line in lines), timeout=45, what="the existing event")
        tether.ok("track", "resp_after", "--no-verify")
        wait_for(lambda: any("resp_after" in line for line in lines), timeout=45, what="the new event")
        assert proc.poll() is None, "--follow should keep running"
    finally:
        proc.terminate()
        proc.wait(timeout=45)
        reader.join(timeout=45)
    followed = json_lines("".join(lines))
    assert [(e["response_id"], e["kind"]) for e in followed] == [("resp_before", "tracked"), ("resp_after", "tracked")]


# ---- cancel ------------------------------------------------------------------------------


def test_cancel_cancels_on_the_api_and_records_reason_manual_with_the_note(tether, fake):
    rid = create(fake, fake_run="60")
    tether.ok("track", rid)
    result = tether.cli("cancel", rid, "--reason", "not needed any more")
    assert result.returncode == 0, result.stderr

    server = server_record(fake, rid)
    assert server["status"] == "cancelled"
    assert [call["changed"] for call in server["cancels"]] == [True]
    shown = tether.json("show", rid)
    assert (shown["status"], shown["cancel_reason"]) == ("cancelled", "manual")
    assert shown["cancel_requested_at"] is not None
    [requested] = [e for e in shown["events"] if e["kind"] == "cancel_requested"]
    assert requested["reason"] == "manual"
    assert "not needed any more" in json.dumps(requested["detail"])


def test_cancelling_a_response_already_known_finished_exits_0_and_sends_no_cancel(tether, fake):
    rid = create(fake, fake_run="0")
    tether.ok("track", rid)
    result = tether.cli("cancel", rid)
    assert result.returncode == 0, result.stderr
    assert "nothing to cancel" in result.stdout
    assert server_record(fake, rid)["cancels"] == []


def test_cancelling_a_response_that_finished_unseen_exits_0_and_records_its_final_status(tether, fake):
    rid = create(fake, fake_run="0")  # finished on the server; tether has not looked yet
    tether.ok("track", rid, "--no-verify")
    result = tether.cli("cancel", rid, "--json")
    assert result.returncode == 0, result.stderr
    [call] = server_record(fake, rid)["cancels"]
    assert (call["status"], call["changed"]) == ("completed", False)
    assert json.loads(result.stdout)["status"] == "completed"


def test_cancel_of_an_untracked_id_exits_3_and_sends_nothing(tether, fake):
    rid = create(fake, fake_run="60")
    result = tether.cli("cancel", rid)
    assert result.returncode == 3, result.stderr
    assert rid in result.stderr
    assert api_calls(fake, "cancel") == 0


@pytest.mark.parametrize("lost_after", [3, 1])
def test_a_cancel_answered_404_is_counted_toward_lost_as_the_daemon_counts_it(tether, fake, lost_after):
    """`tether cancel` and the daemon share one cancel path (`tether.cancelling`): a 404 is a
    response the server does not know, counted toward `lost_after`, not a cancel_failed."""
    rid = "resp_unknown_to_the_api"
    tether.write_config(polling=FAST_POLLING + f"lost_after = {lost_after}\n")
    tether.ok("track", rid, "--no-verify")
    result = tether.cli("cancel", rid)
    assert result.returncode == 1, result.stderr
    assert api_calls(fake, "cancel") == 1
    shown = tether.json("show", rid)
    assert [e["kind"] for e in shown["events"]] == ["tracked", "cancel_requested"] + (
        ["lost"] if lost_after == 1 else []
    )
    if lost_after == 1:
        assert shown["status"] == "lost" and "nothing left to cancel" in result.stderr
    else:
        assert shown["status"] is None and "a running daemon retries it" in result.stderr


# ---- check-config ------------------------------------------------------------------------


def test_help_names_the_config_option_a_path(tether):
    result = run(tether, "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"--config PATH\s", result.stdout), result.stdout


def test_the_repository_example_config_passes_check_config(tether):
    result = run(tether, "--config", "config/tether.toml", "check-config", "--json", cwd=REPO)
    assert result.returncode == 0, result.stderr
    checked = json.loads(result.stdout)
    assert [a["name"] for a in checked["accounts"]] == ["default"]
    assert checked["accounts"][0]["base_url"] == "https://api.openai.com/v1"
    assert checked["policies"] == []  # its policies are examples, commented out


def test_check_config_lists_accounts_and_policies(tether):
    tether.write_config(
        '[[policy]]\nname = "deep-research"\nmax_runtime = "45m"\n\n'
        '[[policy]]\nname = "warn-only"\nmax_runtime = "1h30m"\naction = "warn"\n'
    )
    result = tether.ok("check-config")
    assert "configuration OK" in result.stdout
    for policy in ("deep-research", "warn-only"):
        assert policy in result.stdout
    checked = json.loads(tether.ok("check-config", "--json").stdout)
    assert [a["name"] for a in checked["accounts"]] == ["default"]
    assert checked["accounts"][0]["base_url"] == tether.base_url
    assert [p["name"] for p in checked["policies"]] == ["deep-research", "warn-only"]
    assert checked["policies"][0]["max_runtime"] == 45 * 60
    assert checked["policies"][1]["action"] == "warn"


BAD_CONFIGS = {
    "bad-duration": ('[[policy]]\nname = "x"\nmax_runtime = "5 minutes"\n', "policy[1].max_runtime"),
    "unknown-key": ('[polling]\nfirts = "1s"\n', "polling.firts"),
    "inline-api-key": ('[accounts.default]\napi_key = "sk-inline-SECRET-123"\n', "accounts.default.api_key"),
    "toml-syntax": ('[store\nurl = "sqlite:///x.db"\n', "line 1"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_check_config_exits_78_naming_the_bad_key_without_a_traceback(tether, case):
    text, where = BAD_CONFIGS[case]
    tether.config_path.write_text(text)
    result = tether.cli("check-config")
    assert result.returncode == 78, result.stdout + result.stderr
    assert where in result.stderr
    assert no_traceback(result)
    assert "sk-inline-SECRET-123" not in result.stdout + result.stderr


def test_check_config_with_a_missing_config_file_exits_78_naming_it(tether):
    result = run(tether, "--config", "nowhere/tether.toml", "check-config")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "nowhere/tether.toml" in result.stderr and no_traceback(result)


def test_every_command_exits_78_on_a_bad_config_without_a_traceback(tether):
    tether.config_path.write_text('[polling]\nfirst = "soon"\n')
    body = tether.root / "body.json"
    body.write_text(json.dumps({"model": "o3-pro"}))
    commands = [
        ("track", "resp_x", "--no-verify"),
        ("submit", str(body)),
        ("ls",),
        ("show", "resp_x"),
        ("log",),
        ("cancel", "resp_x"),
        ("check",),
        ("db", "upgrade"),
        ("run",),
    ]
    for args, result in zip(commands, cli_all(tether, *commands), strict=True):
        assert result.returncode == 78, f"{args}: {result.stdout}{result.stderr}"
        assert "polling.first" in result.stderr, args
        assert no_traceback(result), args
    assert not tether.store_path.exists()


def test_check_config_prints_match_values_literally_even_when_they_look_like_markup(tether):
    tether.config_path.write_text(
        '[[policy]]\nname = "p"\nmatch = { metadata = { note = "[/]", tag = "[red]x" } }\nmax_runtime = "1h"\n'
    )
    result = tether.cli("check-config")
    assert result.returncode == 0, result.stderr[-500:]
    assert no_traceback(result)
    assert "[/]" in result.stdout and "[red]x" in result.stdout


# ---- db, check ---------------------------------------------------------------------------


def test_db_upgrade_applies_the_schema_then_reports_it_up_to_date(tether):
    first = tether.cli("db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout and tether.store_path.exists()
    again = tether.cli("db", "upgrade")
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout


def test_check_fails_with_a_reason_when_no_daemon_has_ever_run(tether):
    fresh = tether.cli("check")
    assert fresh.returncode == 1, fresh.stderr
    assert "unhealthy" in fresh.stderr and "does not exist" in fresh.stderr and no_traceback(fresh)
    assert not tether.store_path.exists()  # a probe must not create the store
    tether.ok("db", "upgrade")
    migrated = tether.cli("check")
    assert migrated.returncode == 1, migrated.stderr
    assert "no daemon has ever run" in migrated.stderr


def test_check_passes_while_a_daemon_runs(tether):
    daemon = tether.start_daemon()
    result = tether.cli("check")  # healthy from the moment the daemon is up: the first heartbeat precedes READY
    assert result.returncode == 0, result.stderr
    assert f"pid {daemon.pid}" in result.stdout
    assert tether.stop_daemon(daemon) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_check_says_unhealthy_at_once_when_the_daemon_has_stopped_or_died(tether, suite_store, sig):
    """The heartbeat is at most 5 s old when the daemon goes, far from stale (30 s): a clean stop
    is read from the store, a death from the single-writer lock being free."""
    tether.store_url = suite_store
    tether.write_config()
    daemon = tether.start_daemon()
    assert tether.cli("check").returncode == 0
    tether.stop_daemon(daemon, sig)
    result = tether.cli("check")
    assert result.returncode == 1, result.stdout
    assert "unhealthy" in result.stderr and f"pid {daemon.pid}" in result.stderr and no_traceback(result)
    if sig == signal.SIGTERM:
        assert "stopped at" in result.stderr
    elif suite_store is None:
        assert "not running: its lock on the store is free" in result.stderr
    else:  # each daemon of a PostgreSQL store is listed (docs/cluster.md)
        assert "not running: its session ended without a clean stop" in result.stderr
    again = tether.start_daemon()  # a new daemon is healthy at once, whatever the last one left
    assert tether.cli("check").returncode == 0
    assert tether.stop_daemon(again) == 0


# ---- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["track", "submit", "cancel"])
def test_a_rejected_api_key_exits_1_with_a_message_that_never_contains_the_key(tether, fake, command):
    rid = create(fake, fake_run="60")
    wrong = {"TETHER_TEST_KEY": WRONG_KEY}
    config = ("--config", str(tether.config_path))
    if command == "track":
        result = run(tether, *config, "track", rid, env=wrong)
    elif command == "submit":
        result = run(tether, *config, "submit", "-", env=wrong, input=json.dumps({"model": "o3-pro", "input": "x"}))
    else:
        assert run(tether, *config, "track", rid, "--no-verify", env=wrong).returncode == 0
        result = run(tether, *config, "cancel", rid, env=wrong)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "401" in result.stderr and no_traceback(result)
    # run() already asserted that neither the configured key nor the real one was printed
    assert server_record(fake, rid)["cancels"] == []


# ---- budget ------------------------------------------------------------------------------


def test_budget_json_lists_each_budget_window(tether, fake):
    tether.write_config('[[budget]]\nname = "daily"\nlimit_usd = 50.0\nperiod = "day"\n')
    result = tether.cli("budget", "--json")
    assert result.returncode == 0, result.stderr
    [window] = json.loads(result.stdout)
    assert list(window) == [
        "name", "window_start", "window_end", "limit_usd", "spent_usd", "committed_usd", "remaining_usd",
        "state", "active",
    ]  # fmt: skip
    assert (window["name"], window["limit_usd"], window["state"]) == ("daily", 50.0, "ok")
