"""The crash suite: the daemon is killed with SIGKILL at random moments and restarted.

Responses of mixed durations and policies arrive in waves while the daemon is killed at least
ten times (`TETHER_CRASH_KILLS`), after random uptimes and downtimes. Some kills land while
cancel requests are in flight: the stand-in holds every cancel (`RouteFaults.hang`) until the
daemon has recorded `cancel_requested` and sent the request, then the daemon is killed before
the server has applied it.

At the end, against the stand-in's own record: no cancel intent is lost (each reaches the
server, unless the response ended first), no event is recorded twice, no deadline is missed by
more than the downtime around it (plus the usual allowances), statuses converge, no log line
tells of an event the store does not hold, and a SQLite store passes `PRAGMA integrity_check`.
It runs on a SQLite store and on a PostgreSQL one (the `suite_store` fixture).

Short form by default (10 kills). Long form:
`TETHER_CRASH_KILLS=30 uv run pytest tests/reliability/test_crash.py -n 0 -s`.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from reliability_kit import (
    DAEMON_PROJECT,
    Install,
    Limits,
    Timing,
    assert_clean,
    check_cancels,
    check_final_statuses,
    check_lines_are_committed,
    check_no_duplicate_events,
    check_no_tracebacks,
    check_secret_absent,
    dump_oracle,
    env_number,
    kill_all,
    machine_stalls,
    read_store,
    save_figures,
    summary,
    wait_converged,
)

from conftest import wait_for
from tether import logs
from tether.cli.tracking import store_tracked
from tether.config import load_config
from tether.fakeapi import FakeServer, Faults, RouteFaults
from tether.store import Store

KILLS = int(env_number("TETHER_CRASH_KILLS", 10))
SEED = int(env_number("TETHER_CRASH_SEED", time.time() * 1000 % 100000))
IN_FLIGHT_KILLS = max(3, KILLS // 3)  # kills while cancel requests are held by the server
WAVE = 12
REQUEST_TIMEOUT = 2.0
CONFIRM_WINDOW = 2.0
SLACK = env_number("TETHER_CHAOS_SLACK", 2.5)

POLICIES = """
[[policy]]
name = "stuck"
match = { metadata = { case = "stuck" } }
max_queued = "2s"

[[policy]]
name = "runaway"
match = { metadata = { case = "runaway" } }
max_runtime = "3s"

[[policy]]
name = "free"
match = { metadata = { case = "free" } }
"""
POLLING = f"""first = "0.3s"
max_interval = "1.5s"
backoff = 1.5
jitter = 0.1
confirm_window = "{CONFIRM_WINDOW:g}s"
"""
CASES = {
    "stuck": Limits(max_queued=2),
    "runaway": Limits(max_runtime=3),
    "late": Limits(max_runtime=3),
    "free": Limits(),
}
KNOWN_BUGS: dict[str, str] = {}


def plan(rng: random.Random) -> dict:
    case = rng.choices(["stuck", "runaway", "late", "free"], weights=[3, 4, 1, 2])[0]
    queue, run = {
        "stuck": (rng.uniform(0, 5), rng.uniform(0.5, 3)),
        "runaway": (rng.uniform(0, 1), rng.uniform(1, 8)),
        "late": (0.0, 40.0),
        "free": (rng.uniform(0, 2), rng.uniform(0.5, 6)),
    }[case]
    return {
        "case": case,
        "queue": round(queue, 3),
        "run": round(run, 3),
        "outcome": rng.choice(["completed", "failed", "incomplete"]),
    }


def started_at(proc) -> float:
    """The instant the daemon said it was ready (its `daemon.started` line, once written whole)."""

    def stamp() -> float | None:
        for line in proc.log_path.read_text().splitlines(keepends=True):
            if '"daemon.started"' in line and line.endswith("\n"):
                at = json.loads(line)["timestamp"]
                return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        return None

    return wait_for(stamp, timeout=10, what="a whole daemon.started line")


@pytest.mark.timeout(max(120, KILLS * 8))
def test_crash(tmp_path: Path, fake: FakeServer, suite_store: str | None):
    rng = random.Random(SEED)
    install = Install(root=tmp_path, base_url=fake.base_url, store_url=suite_store)
    install.write_configs(
        POLICIES, POLLING, account_extra=f'request_timeout = "{REQUEST_TIMEOUT:g}s"', stats_interval='"1s"'
    )
    fake.state.faults = Faults(seed=SEED, get=RouteFaults(server_error=0.02), hang_seconds=600)
    logs.configure("console", "error")  # as the CLI does: its event lines are the daemon's to log
    cli_config = load_config(str(install.cli_config_path))
    cli_store = Store(cli_config.store.url)
    sims: dict[str, dict] = {}

    def wave(n: int = WAVE) -> list[str]:
        """Create `n` responses and track them through the CLI's own code (the daemon may be down)."""
        ids = []
        for _ in range(n):
            p = plan(rng)
            metadata = {
                "case": "runaway" if p["case"] == "late" else p["case"],
                "fake_queue": str(p["queue"]),
                "fake_run": str(p["run"]),
                "fake_outcome": p["outcome"],
            }
            created_at = time.time() - 20 if p["case"] == "late" else None
            record = fake.state.create("o3-pro", background=True, metadata=metadata, created_at=created_at)
            sims[record.id] = p
            ids.append(record.id)
        store_tracked(cli_config, cli_store, [(rid, None) for rid in ids], account="default", policy=None, labels={})
        return ids

    downtimes: list[tuple[float, float]] = []
    in_flight_killed: set[str] = set()
    kinds: Counter = Counter()
    started = time.time()
    daemon = install.start_daemon()
    try:
        in_flight_turns = set(rng.sample(range(KILLS), IN_FLIGHT_KILLS))
        for turn in range(KILLS):
            wave()
            if turn in in_flight_turns:
                # Hold every cancel; make sure one is due now (a response tracked past its
                # deadline is acted on at once); kill once the server holds a cancel request.
                fake.state.faults.cancel.hang = 1.0
                due_now = fake.state.create(
                    "o3-pro",
                    background=True,
                    metadata={"case": "runaway", "fake_run": "60"},
                    created_at=time.time() - 10,
                )
                sims[due_now.id] = {"case": "late", "queue": 0.0, "run": 60.0, "outcome": "completed"}
                store_tracked(cli_config, cli_store, [(due_now.id, None)], account="default", policy=None, labels={})

                def held() -> list[str]:
                    return [
                        c["response_id"]
                        for c in fake.state.calls()
                        if c["route"] == "cancel" and c["status"] is None and c["project"] == DAEMON_PROJECT
                    ]

                wait_for(held, timeout=20, interval=0.05, what="a cancel request held by the server")
                time.sleep(rng.uniform(0, 0.3))  # a random moment while it is held
                holding = held()
                kill_at = time.time()
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(timeout=10)
                in_flight_killed.update(holding)
                fake.state.faults.cancel.hang = 0.0
                kinds["cancel in flight"] += 1
            else:
                time.sleep(rng.uniform(0.3, 2.5))  # a random moment: pacing, not waiting for anything
                kill_at = time.time()
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(timeout=10)
                kinds["random"] += 1
            time.sleep(rng.uniform(0, 1.0))  # downtime
            if rng.random() < 0.5:
                wave(WAVE // 2)  # tracked while no daemon runs
            daemon = install.start_daemon()
            downtimes.append((kill_at, started_at(daemon)))

        ids = list(sims)
        wait_converged(install, fake, ids, settle=CONFIRM_WINDOW + 1, timeout=90)
        alive = daemon.poll() is None
        snapshot = fake.state.snapshot()
        calls = fake.state.calls()
        fake_stalls = fake.state.stalls()
        exit_code = install.stop_daemon(daemon)
    finally:
        kill_all(install)
    elapsed = time.time() - started

    rows, events = read_store(install.store)
    dump_oracle(
        tmp_path,
        snapshot=snapshot,
        calls=calls,
        sims=sims,
        downtimes=downtimes,
        stored={"responses": rows, "events": events},
    )
    lines = install.all_log_lines()
    cancels = check_cancels(
        ids=ids,
        snapshot=snapshot,
        calls=calls,
        rows=rows,
        events=events,
        limits={rid: CASES[p["case"]] for rid, p in sims.items()},
        sims=sims,
        manual=set(),
        timing=Timing(slack=SLACK, request_timeout=REQUEST_TIMEOUT),
        downtimes=downtimes,
        stalls=machine_stalls(fake_stalls, lines),
    )
    intents = {ev["response_id"] for ev in events if ev["kind"] == "cancel_requested"}
    lost = []
    for rid in sorted(intents | in_flight_killed):
        record, sim = snapshot["responses"][rid], sims[rid]
        if record["cancels"]:
            continue
        ended = record["created_at"] + sim["queue"] + sim["run"]
        decided = min(
            (ev["at"] for ev in events if ev["response_id"] == rid and ev["kind"] == "cancel_requested"), default=None
        )
        # The intent may settle without a call only if the response ended before a cancel could
        # land: before the restart that followed a held (killed) request, else soon after the decision.
        could_land = (decided or 0) + 1.0 + SLACK
        if rid in in_flight_killed:
            could_land = (
                min((end for start, end in downtimes if end >= (decided or 0)), default=could_land) + 1.0 + SLACK
            )
        if ended > could_land:
            lost.append(
                f"{rid}: cancel intent recorded at {decided} never reached the server "
                f"(it ran until {ended:.3f}, a cancel could land by {could_land:.3f})"
            )
    logged_unstored = check_lines_are_committed(events, lines)
    statuses = check_final_statuses(rows, snapshot, ids)
    violations = {
        "no lost cancel intent (each reaches the server)": lost,
        "no cancel intent killed in flight is lost": [v for v in lost if v.split(":")[0] in in_flight_killed],
        "no duplicate events": check_no_duplicate_events(events, ids),
        "every cancel that was due left within its allowance": cancels.late,
        "every cancel that was due left and reached the server": cancels.missed,
        "no cancel without a justified reason recorded before it": cancels.unjustified,
        "final status equals the server's": statuses[0],
        "a completion after a cancel is seen (confirmation window)": statuses[1],
        "no log line for an event the store does not hold": logged_unstored,
        **({} if suite_store else {"the SQLite store passes integrity_check": sqlite_integrity(install.store_path)}),
        "every restart came up, the last stopped with 0": []
        if alive and exit_code == 0
        else [f"alive={alive} exit={exit_code}"],
        "no tracebacks": check_no_tracebacks([install.raw_logs(), *install.cli_outputs]),
        "the API key appears nowhere": check_secret_absent(install.root, install.cli_outputs),
    }
    save_figures(
        f"crash-{KILLS}" + ("-postgresql" if suite_store else ""),
        {
            "responses": len(ids),
            "seed": SEED,
            "kills": dict(kinds),
            "seconds": round(elapsed, 1),
            "downtime_s": summary([end - start for start, end in downtimes]),
            "cancel_requests_killed_in_flight": len(in_flight_killed),
            "cancel_intents": len(intents),
            "cancels_required": cancels.required,
            "cancel_lateness_s": summary(cancels.lateness),
            "cancel_decision_to_wire_s": summary(cancels.decision_to_wire),
            "stall_allowance_s": summary(cancels.stall_allowed),
            "faults_injected_by_kind": dict(sorted(snapshot["fault_counts"].items())),
            "events": len(events),
            "violations": {name: len(found) for name, found in violations.items()},
        },
    )
    assert_clean(violations, KNOWN_BUGS)


def sqlite_integrity(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return [] if result == "ok" else [result]
