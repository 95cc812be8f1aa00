"""The daemon end to end: a real `tether run` subprocess, a real SQLite store, the stand-in API.

Oracles are the stand-in's own record (when each cancel arrived, final statuses) and
tether's store and log, read through the CLI's --json output.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from conftest import FAST_POLLING, Tether, create, server_record, wait_for

# The stuck and the runaway deadlines, counted from the responses' creation: room to create
# and track them first on a busy 2-core machine, so that the daemon knows them ahead.
STUCK_AFTER, RUNAWAY_AFTER = 10.0, 11.0

POLICIES = f"""
[[policy]]
name = "stuck"
match = {{ metadata = {{ case = "stuck" }} }}
max_queued = "{STUCK_AFTER:g}s"

[[policy]]
name = "runaway"
match = {{ metadata = {{ case = "runaway" }} }}
max_runtime = "{RUNAWAY_AFTER:g}s"

[[policy]]
name = "watch"
match = {{ metadata = {{ case = "watch" }} }}
max_runtime = "3s"
action = "warn"

[[policy]]
name = "roomy"
max_runtime = "60s"
"""


def bare_daemon(tmp_path: Path):
    """A Daemon with the default config on a SQLite file of its own, not running: for the tests
    of one of its mechanisms."""
    from tether.config import parse_config
    from tether.daemon import Daemon
    from tether.store import Store

    return Daemon(parse_config({}, environ={}), Store(f"sqlite:///{tmp_path / 't.db'}"))


def settled(tether: Tether, ids: list[str]) -> bool:
    records = tether.records()
    return all(records[i]["status"] not in ("queued", "in_progress", None) for i in ids)


def test_over_limit_responses_are_cancelled_within_a_second_of_their_deadline_and_no_others(tether, fake):
    tether.write_config(POLICIES)
    daemon = tether.start_daemon()
    cases = {
        create(fake, case="stuck", fake_queue="30"): ("stuck", STUCK_AFTER),
        create(fake, case="runaway", fake_run="30"): ("runaway", RUNAWAY_AFTER),
        create(fake, fake_run="1"): None,
        create(fake, fake_queue="0.5", fake_run="1.5", fake_outcome="failed"): None,
        create(fake, fake_run="2", fake_outcome="incomplete"): None,
        create(fake, case="watch", fake_run="5"): None,
    }
    ids = list(cases)
    tether.ok("track", *ids)
    wait_for(lambda: settled(tether, ids), timeout=60, what="every response to finish")

    records = tether.records()
    for rid, expected in cases.items():
        server = server_record(fake, rid)
        assert records[rid]["status"] == server["status"], rid
        if expected is None:
            assert server["cancels"] == [], f"{rid} was cancelled without being over a limit"
            assert records[rid]["cancel_reason"] is None
            continue
        policy, limit = expected
        deadline = int(server["created_at"]) + limit
        tracked_at = datetime.fromisoformat(records[rid]["tracked_at"]).timestamp()
        [call] = server["cancels"]
        # README.md: within a second of the deadline; one tracked after it (a slow machine) is acted on at once.
        due = max(deadline, tracked_at)
        assert call["at"] >= deadline and call["at"] - due <= 1.0, (
            f"cancel {call['at'] - deadline:+.3f}s from the deadline"
        )
        assert records[rid]["status"] == "cancelled"
        assert records[rid]["cancel_reason"] == ("max_queued" if policy == "stuck" else "max_runtime")
        assert records[rid]["policy"] == policy
    assert tether.stop_daemon(daemon) == 0


SPARSE_POLLING = """first = "1s"
max_interval = "30s"
backoff = 20
jitter = 0
confirm_window = "2s"
"""


def test_a_deadline_looks_first_at_a_queued_response_but_cancels_an_in_progress_one_at_once(tether, fake):
    """max_queued ends when the response starts, so a queued one is looked at (GET) before the
    cancel; max_runtime holds for every active status, so an in_progress one is not."""
    policies = """
[[policy]]
name = "stuck"
match = { metadata = { case = "stuck" } }
max_queued = "8s"

[[policy]]
name = "runaway"
match = { metadata = { case = "runaway" } }
max_runtime = "8s"
"""
    tether.write_config(policies, polling=SPARSE_POLLING)  # after the first poll (1 s), none for 20 s
    daemon = tether.start_daemon()
    stuck, runaway = create(fake, case="stuck", fake_queue="30"), create(fake, case="runaway", fake_run="30")
    tether.ok("track", stuck, runaway)
    wait_for(lambda: settled(tether, [stuck, runaway]), timeout=30, what="both to be cancelled")

    def gets_before_the_cancel(rid: str) -> int:
        calls = [c for c in fake.state.calls() if c["response_id"] == rid]
        [cancel] = [c for c in calls if c["route"] == "cancel"]
        return len([c for c in calls if c["route"] == "get" and c["at"] < cancel["at"]])

    # Both had `tether track`'s own GET and the same polls; only the queued one had a look.
    gets = {"stuck": gets_before_the_cancel(stuck), "runaway": gets_before_the_cancel(runaway)}
    assert gets["stuck"] == gets["runaway"] + 1, gets
    assert tether.records()[stuck]["cancel_reason"] == "max_queued"
    assert tether.records()[runaway]["cancel_reason"] == "max_runtime"
    assert tether.stop_daemon(daemon) == 0


@pytest.mark.parametrize("fault", ["server_error", "malformed_json"])
def test_a_failed_look_at_a_max_queued_deadline_is_tried_again_not_left_to_the_next_poll(tether, fake, fault):
    """The look before a max_queued cancel fails (an error, or an answer with no status):
    the look is tried again with the cancel's backoff (up to 1 s, then 2 s). Left to the
    polls, it would never be: the next comes 20 s later, sees the same `queued` and writes
    nothing."""
    policies = """
[[policy]]
name = "stuck"
match = { metadata = { case = "stuck" } }
max_queued = "15s"
"""
    tether.write_config(policies, polling=SPARSE_POLLING)
    daemon = tether.start_daemon()
    rid = create(fake, case="stuck", fake_queue="60")
    tether.ok("track", rid)
    gets = lambda: [c for c in fake.state.calls() if c["response_id"] == rid and c["route"] == "get"]  # noqa: E731
    # track's look, the first poll at pickup and the next 1 s later; the next would be 20 s later
    wait_for(lambda: len(gets()) >= 3, timeout=15, what="track's look and two polls")
    fake.state.faults.force("get", fault, times=2)  # the deadline's look, and its first retry
    wait_for(lambda: server_record(fake, rid)["cancels"], timeout=30, what="the max_queued cancel")

    record = server_record(fake, rid)
    [cancel] = record["cancels"]
    failed = [c for c in gets() if c["fault"] == fault]
    deadline = int(record["created_at"]) + 15
    assert len(failed) == 2 and all(c["at"] >= deadline for c in failed), failed
    assert cancel["at"] < deadline + 10  # two retries: up to 3 s, and some room
    wait_for(lambda: tether.records()[rid]["status"] == "cancelled", timeout=30, what="status cancelled")
    assert tether.records()[rid]["cancel_reason"] == "max_queued"
    assert tether.stop_daemon(daemon) == 0


def test_every_status_change_is_one_event_and_one_log_line(tether, fake):
    tether.write_config(POLICIES)
    daemon = tether.start_daemon()
    # In progress for 4 s, several of FAST_POLLING's intervals (1 s at most, ±10 %): a window of
    # one interval could fall between two polls, and tether would rightly record queued -> completed.
    ids = [create(fake, fake_queue="6", fake_run="4"), create(fake, case="runaway", fake_run="30")]
    tether.ok("track", *ids)
    wait_for(lambda: settled(tether, ids), timeout=45, what="both responses to finish")
    assert tether.stop_daemon(daemon) == 0

    events = [e for e in map(_json_line, tether.cli("log", "--json").stdout.splitlines())]
    changes = [(e["response_id"], e["from"], e["to"]) for e in events if e["kind"] == "status"]
    logged = [
        (line["response_id"], line["from"], line["to"])
        for line in tether.log_lines(daemon)
        if line["event"] == "response.status"
    ]
    assert sorted(changes) == sorted(logged)
    assert len(changes) == len(set(changes)), "a status change was recorded twice"
    first, runaway = ids
    assert [(f, t) for r, f, t in changes if r == first] == [("queued", "in_progress"), ("in_progress", "completed")]
    assert ("in_progress", "cancelled") in [(f, t) for r, f, t in changes if r == runaway]
    kinds = [e["kind"] for e in events if e["response_id"] == runaway]
    assert kinds.index("cancel_requested") < kinds.index("status", kinds.index("limit_exceeded"))
    tracked_lines = [line for line in tether.log_lines(daemon) if line["event"] == "response.tracked"]
    assert {line["response_id"] for line in tracked_lines} == set(ids)


def _json_line(text: str) -> dict:
    import json

    return json.loads(text)


def test_a_response_tracked_after_its_deadline_is_cancelled_at_once(tether, fake):
    tether.write_config(POLICIES)
    daemon = tether.start_daemon()
    reply = httpx.post(
        f"{fake.url}/_fake/responses",
        json={"model": "o3-pro", "created_at": time.time() - 600, "metadata": {"fake_run": "3600"}, "background": True},
        timeout=30,
    )
    rid = reply.json()["id"]
    tether.ok("track", rid)
    wait_for(lambda: server_record(fake, rid)["cancels"], timeout=45, what="the cancel call")
    [call] = server_record(fake, rid)["cancels"]
    tracked_at = datetime.fromisoformat(tether.records()[rid]["tracked_at"]).timestamp()
    assert call["at"] - tracked_at < 1.0  # picked up within a second, then acted on at once
    wait_for(lambda: tether.records()[rid]["status"] == "cancelled", timeout=45, what="status cancelled")
    assert tether.records()[rid]["cancel_reason"] == "max_runtime"
    assert tether.stop_daemon(daemon) == 0


def test_an_overrun_that_ended_while_no_daemon_ran_is_recorded_at_the_next_start_without_a_cancel(tether, fake):
    """Tracked in_progress, past its max_runtime deadline and finished while no daemon ran: the
    daemon's first look finds it finished, and records the limit as exceeded (too late to act:
    no cancel), with `warned` under a warn policy. One that ended before its deadline is not."""
    policies = """
[[policy]]
name = "watch"
match = { metadata = { case = "watch" } }
max_runtime = "3s"
action = "warn"

[[policy]]
name = "runaway"
match = { metadata = { case = "runaway" } }
max_runtime = "3s"

[[policy]]
name = "roomy"
max_runtime = "90s"
"""
    tether.write_config(policies)
    # roomy's deadline is far enough that the daemon, however late it starts on a busy machine,
    # sees it finished first (at its deadline it would cancel a response last seen in_progress).
    watched, runaway, roomy = (create(fake, case=case, fake_run="6") for case in ("watch", "runaway", "roomy"))
    tracked = tether.ok("track", watched, runaway, roomy, "--json").stdout.splitlines()
    assert [json.loads(line)["status"] for line in tracked] == ["in_progress"] * 3
    wait_for(
        lambda: all(server_record(fake, r)["status"] == "completed" for r in (watched, runaway, roomy)),
        timeout=30,
        what="all three to finish on the server",
    )
    daemon = tether.start_daemon()
    wait_for(lambda: settled(tether, [watched, runaway, roomy]), timeout=30, what="the daemon to see them finished")

    def events(rid: str) -> list[dict]:
        return [
            e for e in tether.json("show", rid)["events"] if e["kind"] not in ("tracked", "status", "price_unknown")
        ]

    for rid, policy, action in ((watched, "watch", "warn"), (runaway, "runaway", "cancel")):
        [limit, *rest] = events(rid)
        assert (limit["kind"], limit["reason"]) == ("limit_exceeded", "max_runtime"), limit
        assert limit["detail"]["finished_before_action"] is True
        assert (limit["detail"]["policy"], limit["detail"]["action"]) == (policy, action)
        created = int(server_record(fake, rid)["created_at"])
        assert datetime.fromisoformat(limit["detail"]["deadline_at"]).timestamp() == created + 3
        assert [e["kind"] for e in rest] == (["warned"] if action == "warn" else [])
        assert server_record(fake, rid)["cancels"] == []
    assert events(roomy) == [] and server_record(fake, roomy)["cancels"] == []
    assert tether.stop_daemon(daemon) == 0


def test_a_warn_policy_records_the_limit_but_never_cancels(tether, fake):
    tether.write_config(POLICIES)
    daemon = tether.start_daemon()
    rid = create(fake, case="watch", fake_run="8")
    tether.ok("track", rid)
    wait_for(lambda: settled(tether, [rid]), timeout=45, what="completion")
    shown = tether.json("show", rid)
    assert shown["status"] == "completed"
    assert [e["kind"] for e in shown["events"]].count("warned") == 1
    assert server_record(fake, rid)["cancels"] == []
    assert any(line["event"] == "response.warned" for line in tether.log_lines(daemon))
    tether.stop_daemon(daemon)


def test_repeated_404s_end_a_response_as_lost(tether, fake):
    daemon = tether.start_daemon()
    tether.ok("track", "--no-verify", "resp_never_existed")
    wait_for(lambda: tether.records()["resp_never_existed"]["status"] == "lost", timeout=45, what="lost")
    shown = tether.json("show", "resp_never_existed")
    assert [e["kind"] for e in shown["events"]] == ["tracked", "lost"]
    assert tether.stop_daemon(daemon) == 0


def test_a_transiently_failing_cancel_is_retried_until_the_response_is_cancelled(tether, fake):
    tether.write_config(POLICIES)
    fake.state.faults.cancel.server_error = 1.0
    daemon = tether.start_daemon()
    rid = create(fake, case="runaway", fake_run="60")
    tether.ok("track", rid)
    failures = lambda: [e for e in tether.json("show", rid)["events"] if e["kind"] == "cancel_failed"]  # noqa: E731
    wait_for(lambda: len(failures()) >= 2, timeout=45, what="two failed cancel calls")
    assert server_record(fake, rid)["status"] == "in_progress"
    fake.state.faults.cancel.server_error = 0.0
    wait_for(lambda: tether.records()[rid]["status"] == "cancelled", timeout=45, what="cancelled")
    kinds = [e["kind"] for e in tether.json("show", rid)["events"]]
    assert kinds.count("cancel_requested") == 1
    assert failures()[0]["detail"]["http_status"] in (500, 502, 503)
    assert any(line["event"] == "api.error" and line.get("op") == "cancel" for line in tether.log_lines(daemon))
    assert tether.stop_daemon(daemon) == 0


def test_a_cancel_reported_cancelled_that_later_completes_is_confirmed_as_completed(tether, fake):
    tether.write_config(POLICIES)
    fake.state.faults.cancel_then_complete = 1.0
    fake.state.faults.cancel_then_complete_after = 0.3
    daemon = tether.start_daemon()
    rid = create(fake, case="runaway", fake_run="60")
    tether.ok("track", rid)
    wait_for(lambda: tether.records()[rid]["status"] == "completed", timeout=45, what="completed after the cancel")
    changes = [(e["from"], e["to"]) for e in tether.json("show", rid)["events"] if e["kind"] == "status"]
    assert changes == [("in_progress", "cancelled"), ("cancelled", "completed")]
    assert tether.stop_daemon(daemon) == 0


def test_a_manual_cancel_from_the_cli_is_recorded_with_reason_manual(tether, fake):
    daemon = tether.start_daemon()
    rid = create(fake, fake_run="60")
    tether.ok("track", rid)
    result = tether.cli("cancel", rid, "--reason", "not needed any more")
    assert result.returncode == 0, result.stderr
    record = tether.records()[rid]
    assert (record["status"], record["cancel_reason"]) == ("cancelled", "manual")
    wait_for(
        lambda: any(line["event"] == "response.cancel_requested" for line in tether.log_lines(daemon)),
        timeout=45,
        what="the daemon to log the CLI's cancel",
    )
    assert tether.stop_daemon(daemon) == 0


def test_sighup_with_a_broken_config_keeps_the_old_one_and_a_good_one_applies_at_once(tether, fake):
    tether.write_config()  # no policies
    daemon = tether.start_daemon()
    rid = create(fake, fake_run="60")
    tether.ok("track", rid)

    tether.config_path.write_text("[[policy]]\nname = 'x'\nmax_runtime = '5 minutes'\n")
    daemon.send_signal(signal.SIGHUP)
    failed = wait_for(
        lambda: [line for line in tether.log_lines(daemon) if line["event"] == "daemon.reload_failed"],
        timeout=45,
        what="daemon.reload_failed",
    )
    assert "policy[1].max_runtime" in failed[0]["error"]
    assert daemon.poll() is None

    tether.write_config('[[policy]]\nname = "short"\nmax_runtime = "1s"\n')
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: server_record(fake, rid)["cancels"], timeout=45, what="the new policy's cancel")
    assert any(line["event"] == "daemon.reloaded" for line in tether.log_lines(daemon))
    wait_for(lambda: tether.records()[rid]["cancel_reason"] == "max_runtime", timeout=45, what="cancel recorded")
    assert tether.stop_daemon(daemon) == 0


WEBHOOK_SECRET = "whsec_dGV0aGVyLXRlc3Qtd2ViaG9vay1rZXktMDEyMzQ1Njc4OQ=="
WEBHOOKS = """
[webhooks]
secret_env = "TETHER_TEST_WEBHOOK_SECRET"
safety_poll = "1h"
"""


def with_listener(table: str) -> str:
    """`table` and the TCP listener webhooks need, on a free loopback port."""
    from test_server import free_port

    return f'\n[server]\nlisten = "127.0.0.1:{free_port()}"\n{table}'


def test_with_webhooks_a_response_is_polled_every_safety_poll_but_deadlines_and_confirmations_are_not(tether, fake):
    """docs/behaviour.md: with webhooks on, after the first polls only `safety_poll`; the look at
    a deadline, the cancel and the confirmation polls after it go on as without webhooks."""
    runaway_policy = f"""
[[policy]]
name = "runaway"
match = {{ metadata = {{ case = "runaway" }} }}
max_runtime = "{RUNAWAY_AFTER:g}s"
"""
    tether.write_config(runaway_policy + with_listener(WEBHOOKS))
    fake.state.faults.cancel_then_complete = 1.0  # the cancelled one ends `completed` 0.3 s later
    fake.state.faults.cancel_then_complete_after = 0.3
    daemon = tether.start_daemon({"TETHER_TEST_WEBHOOK_SECRET": WEBHOOK_SECRET})
    quiet, runaway = create(fake, fake_run="60"), create(fake, case="runaway", fake_run="60")
    tether.ok("track", quiet, runaway)
    tracked_at = time.time()
    wait_for(lambda: tether.records()[runaway]["status"] == "completed", timeout=45, what="the confirmed completion")
    changes = [(e["from"], e["to"]) for e in tether.json("show", runaway)["events"] if e["kind"] == "status"]
    assert changes == [("in_progress", "cancelled"), ("cancelled", "completed")]
    [cancel] = server_record(fake, runaway)["cancels"]
    assert cancel["at"] - (server_record(fake, runaway)["created_at"] + RUNAWAY_AFTER) <= 1.0

    wait_for(lambda: time.time() - tracked_at > 5, timeout=10, what="5 s of tracking")
    gets = [c for c in fake.state.calls() if c["response_id"] == quiet and c["route"] == "get"]
    # `tether track`'s GET, then polls after `first` (0.2 s) twice; without webhooks, a dozen by now.
    assert len(gets) == 3, [round(c["at"] - tracked_at, 2) for c in gets]
    assert tether.stop_daemon(daemon) == 0


def test_a_reload_whose_webhook_secret_cannot_be_read_keeps_the_old_config(tether, fake):
    tables = with_listener(WEBHOOKS)
    tether.write_config(policies=tables)
    daemon = tether.start_daemon({"TETHER_TEST_WEBHOOK_SECRET": WEBHOOK_SECRET})
    tether.write_config(policies=tables.replace("TETHER_TEST_WEBHOOK_SECRET", "TETHER_TEST_UNSET"))
    daemon.send_signal(signal.SIGHUP)
    failed = wait_for(
        lambda: [line for line in tether.log_lines(daemon) if line["event"] == "daemon.reload_failed"],
        timeout=45,
        what="daemon.reload_failed",
    )
    assert failed[0]["error"] == "webhooks.secret_env: environment variable TETHER_TEST_UNSET is not set"
    assert daemon.poll() is None
    assert WEBHOOK_SECRET not in daemon.log_path.read_text()
    assert tether.stop_daemon(daemon) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_daemon_stops_cleanly_with_exit_0(tether, fake, sig):
    daemon = tether.start_daemon()
    rid = create(fake, fake_run="60")
    tether.ok("track", rid)
    wait_for(lambda: tether.records()[rid]["polls"] >= 1, timeout=45, what="a poll")
    assert tether.stop_daemon(daemon, sig) == 0
    events = [line["event"] for line in tether.log_lines(daemon)]
    assert events[-2:] == ["daemon.stopping", "daemon.stopped"], events[-5:]
    assert tether.log_lines(daemon)[-1]["exit_code"] == 0


def test_a_second_daemon_on_the_same_store_refuses_to_start(tether):
    first = tether.start_daemon()
    second = tether.cli("run", timeout=30)
    assert second.returncode == 1
    assert "already running" in second.stderr and str(first.pid) in second.stderr
    assert first.poll() is None
    assert tether.stop_daemon(first) == 0


def test_a_restarted_daemon_takes_up_where_the_killed_one_left(tether, fake):
    tether.write_config(POLICIES)
    daemon = tether.start_daemon()
    ids = [create(fake, case="runaway", fake_run="60"), create(fake, fake_run="10")]  # still running when tracked
    tether.ok("track", *ids)
    wait_for(lambda: tether.records()[ids[1]]["polls"] >= 1, timeout=45, what="a poll")
    daemon.kill()
    daemon.wait()
    restarted = tether.start_daemon()
    wait_for(lambda: settled(tether, ids), timeout=60, what="both to finish after the restart")
    records = tether.records()
    assert records[ids[0]]["status"] == "cancelled" == server_record(fake, ids[0])["status"]
    assert records[ids[1]]["status"] == "completed" == server_record(fake, ids[1])["status"]
    assert len(server_record(fake, ids[0])["cancels"]) == 1
    assert tether.stop_daemon(restarted) == 0


def test_the_daemon_logs_its_figures_in_daemon_stats_lines(tether, fake):
    tether.write_config(POLICIES, stats_interval="0.5s")
    daemon = tether.start_daemon()
    rid = create(fake, case="runaway", fake_run="60")
    tether.ok("track", rid)
    wait_for(lambda: tether.records()[rid]["status"] == "cancelled", timeout=45, what="the deadline cancel")
    stats = wait_for(
        lambda: [
            line for line in tether.log_lines(daemon) if line["event"] == "daemon.stats" and line["deadline_cancels"]
        ],
        timeout=45,
        what="a daemon.stats line counting the cancel",
    )
    line = stats[0]
    assert 0 <= line["deadline_lag_max"] < 1.0
    assert sum(s["polls"] for s in tether.log_lines(daemon) if s["event"] == "daemon.stats") >= 1
    assert line["max_rss_mb"] > 10
    assert tether.stop_daemon(daemon) == 0


def test_the_stats_line_counts_as_active_what_ls_active_shows_and_cancelled_ones_as_confirming(tether, fake):
    """After a cancel the daemon keeps polling the response for confirm_window (a late `completed`),
    but it is finished: `active` is what `tether ls --active` shows, and it is counted apart."""
    long_confirm = FAST_POLLING.replace('confirm_window = "1s"', 'confirm_window = "60s"')
    tether.write_config(POLICIES, polling=long_confirm, stats_interval="0.3s")
    daemon = tether.start_daemon()
    runaway, running = create(fake, case="runaway", fake_run="60"), create(fake, fake_run="60")
    tether.ok("track", runaway, running)
    wait_for(lambda: tether.records()[runaway]["status"] == "cancelled", timeout=45, what="the deadline cancel")
    shown = {r["id"] for r in tether.json("ls", "--active")}
    count_from = len(tether.log_lines(daemon))
    line = wait_for(
        lambda: [x for x in tether.log_lines(daemon)[count_from:] if x["event"] == "daemon.stats"],
        timeout=30,
        what="a daemon.stats line after the cancel",
    )[0]
    assert shown == {running}
    assert (line["active"], line["confirming"]) == (1, 1), line
    assert tether.stop_daemon(daemon) == 0


def test_the_stats_line_reports_the_daemons_own_peak_memory_not_its_parents(tether):
    """Started by a process holding 300 MB (as by a large supervisor or a benchmark harness),
    the daemon reports its own peak, not that one's."""
    tether.write_config(stats_interval="0.3s")
    launcher = "import os, sys; ballast = b'x' * (300 << 20); os.execv(sys.executable, sys.argv[1:])"
    log = (tether.root / "daemon-launched.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, sys.executable, "-m", "tether", "--config", str(tether.config_path), "run"],
        env=tether.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    tether.daemons.append(proc)
    line = wait_for(
        lambda: next((line for line in tether.log_lines(proc) if line["event"] == "daemon.stats"), None),
        timeout=60,
        what="a daemon.stats line",
    )
    status = Path(f"/proc/{proc.pid}/status").read_text()
    own_peak_mb = round(int(next(row for row in status.splitlines() if row.startswith("VmHWM:")).split()[1]) / 1024, 1)
    assert 10 < line["max_rss_mb"] <= own_peak_mb < 300
    assert tether.stop_daemon(proc) == 0


def test_events_the_cli_wrote_while_no_daemon_ran_are_logged_once_at_the_next_start(tether, fake):
    first = tether.start_daemon()
    assert tether.stop_daemon(first) == 0
    tether.ok("track", "--no-verify", "resp_tracked_while_down")

    def tracked_lines(proc):
        return [
            line
            for line in tether.log_lines(proc)
            if line["event"] == "response.tracked" and line["response_id"] == "resp_tracked_while_down"
        ]

    second = tether.start_daemon()
    [line] = wait_for(lambda: tracked_lines(second), what="the tracked line at the next start")
    assert line["origin"] == "cli"
    assert tether.stop_daemon(second) == 0
    third = tether.start_daemon()
    tether.ok("track", "--no-verify", "resp_tracked_later")
    wait_for(
        lambda: [x for x in tether.log_lines(third) if x.get("response_id") == "resp_tracked_later"],
        what="the third daemon to pick up a newer event",
    )
    assert tether.stop_daemon(third) == 0
    assert tracked_lines(third) == []


def test_a_backlog_longer_than_one_pickup_page_is_logged_whole_and_once(tether, fake):
    from tether.daemon.queries import PICKUP_PAGE

    ids = [f"resp_backlog_{i}" for i in range(PICKUP_PAGE + 5)]
    tether.ok("track", "--no-verify", *ids)  # written while no daemon runs
    daemon = tether.start_daemon()

    def tracked():
        return [line["response_id"] for line in tether.log_lines(daemon) if line["event"] == "response.tracked"]

    wait_for(lambda: len(tracked()) >= len(ids), what="every tracked event of the backlog logged")
    assert tether.stop_daemon(daemon) == 0
    assert sorted(tracked()) == sorted(ids)


async def test_a_start_schedules_every_open_response_in_pages(tether, fake, monkeypatch):
    """At start the open responses are read a page at a time (bounded memory with 100,000 of
    them): every one is scheduled, across page boundaries, and no finished one."""
    from tether.config import load_config
    from tether.daemon import Daemon, queries
    from tether.store import Store

    running = [create(fake, fake_run="600") for _ in range(7)]
    finished = create(fake, fake_run="0")
    tether.ok("track", *running)
    wait_for(lambda: server_record(fake, finished)["status"] == "completed", timeout=10)
    tether.ok("track", finished)
    monkeypatch.setattr(queries, "LOAD_PAGE", 3)  # pages of 3, 3, 1
    config = load_config(str(tether.config_path), environ=tether.env)
    daemon = Daemon(config, Store(config.store.url))
    await daemon._load()
    assert set(daemon.state.active) == set(running)


def test_a_record_loaded_at_start_equals_one_made_from_the_stored_row(tmp_path):
    """Start-up builds its records from plain rows (`open_rows`, the metadata as JSON text),
    everything else from ORM rows: the two must agree, for every kind of open response."""
    from sqlmodel import select

    from tether.daemon.queries import open_rows
    from tether.daemon.records import Active
    from tether.models import Response
    from tether.store import Store

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    rows = [
        Response(
            id="resp_a",
            account="default",
            tracked_at=1.0,
            status="in_progress",
            model="o3-pro",
            created_at=10.0,
            meta={"team": "search", "run": "7"},
            next_poll_at=20.0,
            poll_interval=1.5,
            deadline_at=100.0,
        ),
        Response(
            id="resp_b", account="other", tracked_at=1.0, status="queued", cancel_state="pending", cancel_attempts=2
        ),
        Response(id="resp_c", account="default", tracked_at=1.0, status="cancelled", confirm_until=50.0),
        Response(id="resp_d", account="default", tracked_at=1.0),  # never seen: no status yet
        Response(id="resp_e", account="default", tracked_at=1.0, status="completed"),  # closed: not loaded
    ]
    with store.writing() as session:
        session.add_all(rows)
    with store.reading() as session:
        loaded = [Active.loaded(row) for row in open_rows(session, "")]
        stored = session.exec(select(Response).where(Response.id != "resp_e").order_by(Response.id)).all()
        assert loaded == [Active.from_row(row) for row in stored]
        assert [rec.id for rec in loaded] == ["resp_a", "resp_b", "resp_c", "resp_d"]
        assert open_rows(session, "resp_b")[0][0] == "resp_c"  # paged by id


async def test_polls_held_behind_a_hung_cancel_are_freed_again_after_a_later_burst(tmp_path, monkeypatch):
    """A burst of cancels holds polls back for at most POLLS_HELD_MAX, also when an earlier
    burst is still out (a hung cancel): that one must not keep polls held after the later
    burst ends."""
    import asyncio

    from tether.daemon import polling as polling_module

    monkeypatch.setattr(polling_module, "POLLS_HELD_MAX", 0.2)
    polling = bare_daemon(tmp_path).polling
    hung = polling.held()
    hung.__enter__()  # a burst whose cancel never comes back
    await asyncio.wait_for(polling.free.wait(), timeout=5)  # its valve frees the polls
    with polling.held():  # a later burst, over quickly
        assert not polling.free.is_set()
    await asyncio.wait_for(polling.free.wait(), timeout=5)
    hung.__exit__(None, None, None)
    assert polling.free.is_set()


async def test_a_deadlines_decisions_overtake_the_store_writes_queued_before_them(tmp_path):
    """Store writes queued while the store thread is busy commit together; a deadline's
    decisions (urgent) do not wait behind them: they run next, in a transaction of their own."""
    import asyncio
    import threading

    writer = bare_daemon(tmp_path).state.writer
    store = writer.store
    store.migrate()
    running, release = threading.Event(), threading.Event()
    ran: list[tuple[str, object]] = []  # (job, the session of the transaction it ran in)

    def busy() -> None:
        running.set()
        assert release.wait(10)

    def job(name: str) -> None:
        ran.append((name, store._batch.open[0]))

    first = asyncio.ensure_future(writer.run(busy))
    await asyncio.to_thread(running.wait, 10)
    queued = [asyncio.ensure_future(writer.run(job, f"write{i}")) for i in range(3)]
    urgent = asyncio.ensure_future(writer.run(job, "decisions", urgent=True))
    await asyncio.sleep(0)  # the four coroutines have queued their jobs behind `busy`
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *queued, urgent), 10)
    assert [name for name, _ in ran] == ["decisions", "write0", "write1", "write2"]
    sessions = [session for _, session in ran]
    assert sessions[0] is not sessions[1] and sessions[1] is sessions[2] is sessions[3]


async def test_grouped_store_writes_queued_together_are_one_call_each_caller_getting_its_result(tmp_path):
    """Creates tracked through the daemon queue grouped writes: those queued while the store
    thread is busy reach one call of their function, each caller resumes with its own item's
    result once the batch has committed, and an error of the call is each of its callers'."""
    import asyncio
    import threading

    writer = bare_daemon(tmp_path).state.writer
    writer.store.migrate()
    running, release = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def busy() -> None:
        running.set()
        assert release.wait(10)

    def double(items: list[int]) -> list[int]:
        calls.append(items)
        return [2 * i for i in items]

    def refuse(items: list[int]) -> list[int]:
        calls.append(items)
        raise ValueError("refused")

    first = asyncio.ensure_future(writer.run(busy))
    await asyncio.to_thread(running.wait, 10)
    doubled = [asyncio.ensure_future(writer.run_grouped(double, i)) for i in range(4)]
    refused = [asyncio.ensure_future(writer.run_grouped(refuse, i)) for i in (7, 8)]
    await asyncio.sleep(0)  # all six have queued behind `busy`
    release.set()
    await asyncio.wait_for(first, 10)
    assert await asyncio.wait_for(asyncio.gather(*doubled), 10) == [0, 2, 4, 6]
    for future in refused:
        with pytest.raises(ValueError, match="refused"):
            await asyncio.wait_for(future, 10)
    assert calls == [[0, 1, 2, 3], [7, 8]]


async def test_creates_tracked_in_a_group_are_stored_as_the_cli_stores_them_each_once(store_url):
    """The proxy's creates are tracked in groups as plain rows (one Core insert): on either
    store each reads back as the row the CLI's tracking stores, with its `tracked` event, and
    an id tracked already, or twice in the group, is tracked once."""
    import asyncio

    from sqlalchemy import select

    from tether.config import parse_config
    from tether.daemon import Daemon
    from tether.daemon.queries import Created
    from tether.models import Event, Response
    from tether.render import record
    from tether.store import Store

    config = parse_config({"policy": [{"name": "roomy", "max_runtime": "60s"}]}, environ={})
    store = Store(store_url)
    store.migrate()
    state = Daemon(config, store).state
    created = {"id": "resp_new", "status": "queued", "model": "o3-pro", "created_at": 1_795_636_800}
    created["metadata"] = {"team": "search"}
    items = [
        Created(created, "default", "roomy", {"job": "42"}),
        Created({**created, "id": "resp_old"}, "default", None, {}),
        Created(created, "default", None, {}),
    ]
    await state.writer.run(state.queries.write_created, [Created({**created, "id": "resp_old"}, "default", None, {})])
    tracked = await asyncio.gather(*(state.writer.run_grouped(state.queries.write_created, i) for i in items))
    assert [(row.id, new) for row, new in tracked] == [("resp_new", True), ("resp_old", False), ("resp_new", False)]
    with store.reading() as session:
        stored = session.get(Response, "resp_new")
        assert stored is not None
        assert record(stored) == record(tracked[0][0])
        assert (stored.policy, stored.labels, stored.meta, stored.status) == (
            "roomy",
            {"job": "42"},
            {"team": "search"},
            "queued",
        )
        assert stored.deadline_at == 1_795_636_860 and stored.next_poll_at is not None
        kinds = session.execute(select(Event.response_id, Event.kind).order_by(Event.id)).all()
    assert [tuple(k) for k in kinds] == [("resp_old", "tracked"), ("resp_new", "tracked")]
    store.dispose()


async def test_a_periodic_job_cancelled_by_the_schedulers_shutdown_ends_without_a_traceback(tmp_path, caplog):
    """At SIGTERM the scheduler's shutdown cancels the jobs still running (a pickup waiting for
    the store, say); APScheduler logs a job that raised, CancelledError included, with its
    traceback. The chaos suite on PostgreSQL, where a store call takes longer, caught one."""
    import asyncio

    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    daemon = bare_daemon(tmp_path)
    running, ended = asyncio.Event(), asyncio.Event()

    async def pickup() -> None:  # a job that is still waiting when the scheduler stops
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.add_job(daemon._guarded(pickup, "pickup"), "interval", seconds=0.05, max_instances=1)
    scheduler.start()
    await asyncio.wait_for(running.wait(), 10)
    scheduler.shutdown(wait=False)
    await asyncio.wait_for(ended.wait(), 10)  # resumes after the job's task has finished
    assert not [r for r in caplog.records if r.name.startswith("apscheduler") and r.levelname == "ERROR"]
