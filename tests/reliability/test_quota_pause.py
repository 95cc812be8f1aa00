"""A quota 429 (`insufficient_quota`) in the middle of a run: the account pauses (30 s), nothing
is sent meanwhile (no tight loop), one `api.error` line at level error says so, and deadlines
that fell in the pause are acted on as soon as it ends."""

from __future__ import annotations

from pathlib import Path

from reliability_kit import (
    DAEMON_PROJECT,
    Install,
    check_secret_absent,
    converged,
    env_number,
    kill_all,
    save_figures,
)

from conftest import wait_for
from tether.fakeapi import FakeServer

PAUSE = 30.0  # tether.api.ACCOUNT_PAUSE_FIRST
SLACK = env_number("TETHER_CHAOS_SLACK", 2.5)
POLICIES = """
[[policy]]
name = "runaway"
match = { metadata = { case = "runaway" } }
max_runtime = "6s"
"""
POLLING = 'first = "0.3s"\nmax_interval = "1s"\nconfirm_window = "1s"\n'


def test_a_quota_429_pauses_the_account_without_spinning_and_deadlines_in_the_pause_act_when_it_ends(
    tmp_path: Path, fake: FakeServer
):
    install = Install(root=tmp_path, base_url=fake.base_url)
    install.write_configs(POLICIES, POLLING)
    daemon = install.start_daemon()
    try:
        runaway = [
            fake.state.create("o3-pro", background=True, metadata={"case": "runaway", "fake_run": "60"}).id
            for _ in range(8)
        ]
        free = [fake.state.create("o3-pro", background=True, metadata={"fake_run": "15"}).id for _ in range(8)]
        assert install.cli("track", *runaway, *free).returncode == 0
        wait_for(
            lambda: all(fake.state.record(r).gets for r in runaway + free), timeout=30, what="every response polled"
        )
        fake.state.faults.force("get", "quota")
        wait_for(lambda: fake.state.fault_counts["quota"] == 1, timeout=30, what="the quota 429")
        ids = runaway + free
        wait_for(lambda: converged(install, fake, ids, settle=1.0), timeout=90, interval=1.0, what="convergence")
        calls = fake.state.calls()
        snapshot = fake.state.snapshot()
        assert install.stop_daemon(daemon) == 0
    finally:
        kill_all(install)

    [quota] = [c for c in calls if c["fault"] == "quota"]
    paused_from, paused_until = quota["ended"], quota["ended"] + PAUSE
    # Requests already on their way when the 429 came back may still arrive, the later the
    # busier the machine (1 s of grace; a daemon that spun would send some every second of 30).
    during = [c for c in calls if c["project"] == DAEMON_PROJECT and paused_from + 1.0 < c["at"] < paused_until - 0.5]
    after = [c for c in calls if c["project"] == DAEMON_PROJECT and c["at"] >= paused_until - 0.5]
    lines = install.all_log_lines()
    errors = [line for line in lines if line.get("event") == "api.error" and line.get("level") == "error"]
    lateness = {}
    for rid in runaway:
        record = snapshot["responses"][rid]
        deadline = int(record["created_at"]) + 6
        first_cancel = min(c["at"] for c in record["cancels"])
        lateness[rid] = first_cancel - max(deadline, paused_until)
    save_figures(
        "quota-pause",
        {
            "requests_during_pause": len(during),
            "requests_after_pause": len(after),
            "error_lines": len(errors),
            "cancel_after_pause_end_s": {
                "max": round(max(lateness.values()), 3),
                "min": round(min(lateness.values()), 3),
            },
        },
    )
    assert not during, f"{len(during)} requests sent while the account was paused: {during[:3]}"
    assert after, "nothing was sent after the pause"
    assert len(errors) == 1 and errors[0]["code"] == "insufficient_quota" and "hint" in errors[0], errors
    late = {rid: round(x, 3) for rid, x in lateness.items() if x > 1.0 + SLACK}
    assert not late, f"cancels due during the pause left late after it ended: {late}"
    assert all(snapshot["responses"][r]["status"] == "cancelled" for r in runaway)
    assert not check_secret_absent(install.root, install.cli_outputs)
