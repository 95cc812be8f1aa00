"""Deterministic reproductions of bugs the chaos suite found, one fault forced at a time.

Each test states the behaviour tether should have. While a bug stands its test is a strict
xfail, so a fix turns it into an XPASS failure that asks for the mark to be removed. The first
three were fixed in 4131150 and are regression tests now.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from reliability_kit import Install, kill_all, read_store, store_statuses

from conftest import wait_for
from tether.fakeapi import FakeServer, Faults

# Sparse polls: after the first one, the next is 10 s away, so the requests around a
# deadline are the deadline look, the cancel and what follows it.
SPARSE_POLLING = """first = "1s"
max_interval = "30s"
backoff = 10
jitter = 0
confirm_window = "2s"
"""


# The same, with a confirmation window long enough for its first poll (window / 8) to come
# 1 s after the cancel.
SPARSE_POLLING_LONG_CONFIRMATION = SPARSE_POLLING.replace('confirm_window = "2s"', 'confirm_window = "8s"')


def started(
    tmp_path: Path, fake: FakeServer, policy: str, polling: str = SPARSE_POLLING, account_extra: str = ""
) -> tuple[Install, object]:
    install = Install(root=tmp_path, base_url=fake.base_url)
    install.write_configs(policy, polling, account_extra=account_extra)
    return install, install.start_daemon()


def tracked_running(install: Install, fake: FakeServer) -> str:
    """A response that runs for a minute, tracked with `tether track`; its id."""
    rid = fake.state.create("o3-pro", background=True, metadata={"fake_run": "60"}).id
    assert install.cli("track", rid).returncode == 0
    return rid


def api_errors(install: Install, rid: str, op: str) -> list[dict]:
    return [
        line
        for line in install.all_log_lines()
        if line.get("event") == "api.error" and line.get("response_id") == rid and line.get("op") == op
    ]


def daemon_calls(fake: FakeServer, rid: str, route: str) -> list[dict]:
    return [
        c
        for c in fake.state.calls()
        if c["response_id"] == rid and c["route"] == route and c["project"] == "proj_daemon"
    ]


def test_a_cancel_that_fails_once_then_succeeds_logs_the_failure(tmp_path: Path, fake: FakeServer):
    install, daemon = started(tmp_path, fake, '[[policy]]\nname = "p"\nmax_runtime = "6s"\n')
    try:
        fake.state.faults.force("cancel", "server_error")  # the first cancel gets a 5xx
        rid = tracked_running(install, fake)
        wait_for(lambda: fake.state.record(rid).cancels, timeout=30, what="the cancel to reach the server")
        failed = [c for c in daemon_calls(fake, rid, "cancel") if c["status"] >= 500]
        assert len(failed) == 1
        wait_for(lambda: store_statuses(install.store)[rid] == "cancelled", timeout=30)
    finally:
        install.stop_daemon(daemon)
        kill_all(install)
    assert len(api_errors(install, rid, "cancel")) == 1, "the failed cancel request left no api.error line"


def test_a_failed_look_after_a_refused_cancel_is_logged(tmp_path: Path, fake: FakeServer):
    install, daemon = started(tmp_path, fake, '[[policy]]\nname = "p"\nmax_runtime = "20s"\n')
    try:
        # Finishes at 15 s, before its deadline (20 to 21 s after creation); the first poll sees
        # it running (15 s: room to track it and poll it first on a busy 2-core machine).
        rid = fake.state.create("o3-pro", background=True, metadata={"fake_run": "15"}).id
        assert install.cli("track", rid).returncode == 0
        wait_for(lambda: daemon_calls(fake, rid, "get"), timeout=30, what="the daemon's first poll")
        assert time.time() < fake.state.record(rid).finishes_at, "the machine is too slow for this timing"
        # Every GET fails from now on: the deadline look fails, tether cancels on what it knows
        # (in_progress), the server refuses (it has finished), and the look after that fails too.
        fake.state.faults.get.drop = 1.0
        wait_for(lambda: fake.state.record(rid).cancels, timeout=45, what="a cancel (refused: it has finished)")
        refused_at = fake.state.record(rid).cancels[0].at
        wait_for(
            lambda: [c for c in daemon_calls(fake, rid, "get") if c["at"] > refused_at],
            timeout=30,
            what="the look after the refused cancel",
        )
        fake.state.faults.get.drop = 0.0
        wait_for(lambda: store_statuses(install.store)[rid] == "completed", timeout=30)
        dropped = [c for c in daemon_calls(fake, rid, "get") if c["fault"] == "drop"]
    finally:
        install.stop_daemon(daemon)
        kill_all(install)
    assert len(api_errors(install, rid, "get")) >= len(dropped), (
        f"{len(dropped)} GETs failed, {len(api_errors(install, rid, 'get'))} api.error lines"
    )


# A failed look, and one answered with a status tether does not know (the chaos run of
# seed 92460 found that tether took the latter for an answer and cancelled on `queued`).
@pytest.mark.parametrize("fault", ["server_error", "unknown_status"])
def test_a_failed_look_at_a_max_queued_deadline_does_not_cancel_a_response_that_started(
    tmp_path: Path, fake: FakeServer, fault: str
):
    install, daemon = started(tmp_path, fake, '[[policy]]\nname = "q"\nmax_queued = "14s"\n')
    try:
        # Queued 12 s (the first poll sees it queued), then runs for a minute; its max_queued
        # deadline (14 to 15 s after creation) finds it running.
        rid = fake.state.create("o3-pro", background=True, metadata={"fake_queue": "12", "fake_run": "60"}).id
        assert install.cli("track", rid).returncode == 0
        wait_for(lambda: daemon_calls(fake, rid, "get"), timeout=30, what="the daemon's first poll")
        record = fake.state.record(rid)
        assert time.time() < record.created_at + 12, "the machine is too slow for this timing"
        setattr(fake.state.faults.get, fault, 1.0)  # every GET fails until after the deadline
        deadline = int(record.created_at) + 14
        wait_for(lambda: time.time() > deadline + 3, timeout=20, interval=0.2)
        setattr(fake.state.faults.get, fault, 0.0)
        cancels = fake.state.record(rid).cancels
    finally:
        install.stop_daemon(daemon)
        kill_all(install)
    assert not [c for c in cancels if c.changed], f"a running response was cancelled for max_queued: {cancels}"


def test_a_late_completion_after_a_cancel_is_seen_even_when_the_confirmation_polls_fail(
    tmp_path: Path, fake: FakeServer
):
    install, daemon = started(
        tmp_path,
        fake,
        '[[policy]]\nname = "p"\nmax_runtime = "3s"\n',
        'first = "0.2s"\nmax_interval = "1s"\nconfirm_window = "2s"\n',
    )
    # Completed 1.5 s after the cancel: inside the outage, which outlasts the 2 s window.
    fake.state.faults = Faults(cancel_then_complete=1.0, cancel_then_complete_after=1.5)
    try:
        rid = tracked_running(install, fake)
        wait_for(lambda: fake.state.record(rid).cancels, timeout=20, what="the cancel")
        fake.state.faults.outage_for(4.0)  # every request fails for longer than the confirmation window
        wait_for(lambda: store_statuses(install.store)[rid] == "cancelled", timeout=30)
        # The server says `completed` from 1.5 s after the cancel; tether should come to say so too.
        wait_for(
            lambda: store_statuses(install.store)[rid] == "completed",
            timeout=20,
            what="tether to see the completion that followed the cancel",
        )
    finally:
        install.stop_daemon(daemon)
        kill_all(install)


def test_a_late_completion_after_a_cancel_is_seen_when_a_confirmation_poll_times_out_past_the_window(
    tmp_path: Path, fake: FakeServer
):
    # The first confirmation poll (window / 8 = 1 s after the cancel, window 8 s) hangs: its
    # read timeout (10 s) ends after the window. A failed poll extended the window only from the
    # instant it *began*, so the window was over when the timeout came back and the response
    # was dropped from scheduling without one answer after the cancel. (The chaos run showed
    # the same with polls that waited for a connection slot, and with a confirmation poll
    # merely late when a pickup of a CLI event re-checked the window.)
    install, daemon = started(
        tmp_path,
        fake,
        '[[policy]]\nname = "p"\nmax_runtime = "10s"\n',
        SPARSE_POLLING_LONG_CONFIRMATION,
        account_extra='request_timeout = "10s"',
    )
    fake.state.faults = Faults(cancel_then_complete=1.0, cancel_then_complete_after=0.5)
    try:
        rid = tracked_running(install, fake)
        # `tether track`'s look (through the daemon), then polls after 1 s and 1 s again; the
        # next is 10 s after that, past the deadline, so the next GET is the first confirmation
        # poll: the hang is set ahead of it, not raced against it.
        wait_for(lambda: len(daemon_calls(fake, rid, "get")) >= 3, timeout=30, what="the look and two polls")
        fake.state.faults.force("get", "hang")
        wait_for(lambda: fake.state.record(rid).cancels, timeout=30, what="the cancel")
        cancelled_at = fake.state.record(rid).cancels[0].at
        assert daemon_calls(fake, rid, "get")[2]["at"] < cancelled_at, "the machine is too slow for this timing"
        hung = wait_for(
            lambda: [c for c in daemon_calls(fake, rid, "get") if c["fault"] == "hang" and c["status"] is not None],
            timeout=30,
            what="the confirmation poll to time out",
        )
        assert hung[0]["at"] > cancelled_at, "the poll that hung was not a confirmation poll"
        # The server says `completed` from 0.5 s after the cancel; tether should come to say so too.
        wait_for(
            lambda: store_statuses(install.store)[rid] == "completed",
            timeout=30,
            what="tether to see the completion that followed the cancel",
        )
    finally:
        install.stop_daemon(daemon)
        kill_all(install)


def test_a_late_completion_after_a_cancel_is_seen_when_the_window_ends_while_the_daemon_is_down(
    tmp_path: Path, fake: FakeServer
):
    install, daemon = started(
        tmp_path, fake, '[[policy]]\nname = "p"\nmax_runtime = "4s"\n', SPARSE_POLLING_LONG_CONFIRMATION
    )
    fake.state.faults = Faults(cancel_then_complete=1.0, cancel_then_complete_after=0.5)
    try:
        rid = tracked_running(install, fake)
        wait_for(lambda: store_statuses(install.store)[rid] == "cancelled", timeout=20, what="the cancel's answer")
        # Killed before its first confirmation poll (window / 8 = 1 s after the cancel), down until
        # the window is over.
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
        assert not [c for c in daemon_calls(fake, rid, "get") if c["at"] > fake.state.record(rid).cancels[0].at]
        confirm_until = read_store(install.store)[0][rid]["confirm_until"]
        wait_for(lambda: time.time() > confirm_until + 0.5, timeout=20, interval=0.1, what="the window to end")
        daemon = install.start_daemon()
        wait_for(
            lambda: store_statuses(install.store)[rid] == "completed",
            timeout=30,
            what="tether to see the completion that followed the cancel",
        )
    finally:
        install.stop_daemon(daemon)
        kill_all(install)
