"""Several daemons on one PostgreSQL store (docs/cluster.md): polls per second and deadline
lateness with one, two and three daemons, then the measured takeover of a killed and of a
frozen daemon.

    uv run python -m bench.cluster                 # 3,000 responses, a 30 s window per size
    uv run python -m bench.cluster --quick         # 600 responses, a 10 s window
    uv run python -m bench.cluster --interval 10   # polled every 10 s instead of 2 s

Each size gets a fresh database on the PostgreSQL server of `--postgres` (created and dropped
here; the tests' `.ci/postgres` starts one). The stand-in runs in this process; each daemon
names itself with its own OpenAI-Project header, so the stand-in's call log says who sent what.
Results go to bench/results/cluster-latest.json (kept as cluster-COMMIT-CPU.json, figures in
docs/benchmarks.md). Every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.procs import cpu_seconds, loadavg, summary
from bench.stand import API_KEY, LONG_RUN, Stand

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "cluster-latest.json"
KEY_ENV = "TETHER_BENCH_KEY"
MAX_RUNTIME = 600.0  # every response's policy; the ones meant to fall due in the window were created that long ago
TAKEOVER = 10.0  # the default [cluster] takeover


def log(msg: str) -> None:
    print(f"[bench.cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config(root: Path, name: str, url: str, base_url: str, interval: float) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f"""
[store]
url = "{url}"

[log]
format = "json"
level = "info"
stats_interval = "0s"

[accounts.default]
base_url = "{base_url}"
api_key_env = "{KEY_ENV}"
project = "{name}"
max_concurrency = 32

[polling]
first = "{interval}s"
max_interval = "{interval}s"
backoff = 1.0
jitter = 0.1

[server]
socket = "{root / name / "tether.sock"}"

[cluster]
takeover = "{TAKEOVER:g}s"

[[policy]]
name = "all"
max_runtime = "{MAX_RUNTIME:g}s"
""")
    return path


class Database:
    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.name = f"tether_bench_{secrets.token_hex(4)}"

    def __enter__(self) -> str:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return make_url(self.admin).set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{self.name}" WITH (FORCE)')


def shards_by_pid(url: str) -> dict[int, int]:
    """Shards held per lock-session owner, from pg_locks (the truth, not a heartbeat's report)."""
    from tether.cluster import PG_SHARDS

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT d.pid, count(*) FROM pg_locks l JOIN daemons d ON d.lock_pid = l.pid"
            f" WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {PG_SHARDS} GROUP BY d.pid"
        ).fetchall()
    return dict(rows)


def wait(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def start_daemon(root: Path, name: str, cfg: Path) -> subprocess.Popen:
    log_file = (root / f"{name}.log").open("w")
    env = {**os.environ, KEY_ENV: API_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "--config", str(cfg), "run"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    wait(
        lambda: "daemon.started" in (root / f"{name}.log").read_text() or proc.poll() is not None, 60, f"{name} started"
    )
    if proc.poll() is not None:
        raise SystemExit((root / f"{name}.log").read_text())
    return proc


def run_size(
    admin: str, work: Path, daemons: int, active: int, interval: float, warmup: float, window: float
) -> dict[str, Any]:
    """`active` responses polled every `interval` by `daemons` daemons; a tenth fall due in the window."""
    root = work / f"size-{daemons}"
    root.mkdir(parents=True)
    due = active // 10
    with Stand() as stand, Database(admin) as url:
        now = time.time()
        # Before it, the daemons start, and each response is polled once: tracked unverified,
        # its created_at (so its deadline) is known from its first poll on.
        start = now + warmup + 10 * daemons + interval
        # Due ones were created MAX_RUNTIME before their deadline, spread over the window.
        records = stand.create(
            active,
            created_at=lambda i: start - MAX_RUNTIME + i * window / due if i < due else now,
            metadata=lambda i: {"fake_run": f"{LONG_RUN:g}"},
        )
        configs = [config(root, f"d{k + 1}", url, stand.base_url, interval) for k in range(daemons)]
        env = {**os.environ, KEY_ENV: API_KEY}
        tracked = subprocess.run(
            [
                sys.executable,
                "-m",
                "tether",
                "--config",
                str(configs[0]),
                "track",
                "--no-verify",
                *(r.id for r in records),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if tracked.returncode != 0:
            raise SystemExit(tracked.stderr)
        # Spread the first polls over one interval, as responses tracked at different times
        # would be: N polls due at once would queue the stand-in's cancels behind them.
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE responses SET next_poll_at = extract(epoch FROM now()) + random() * %s", (interval,))
        procs = [start_daemon(root, f"d{k + 1}", cfg) for k, cfg in enumerate(configs)]
        try:
            fair = math.ceil(64 / daemons)
            wait(
                lambda: sum(shards_by_pid(url).values()) == 64 and max(shards_by_pid(url).values()) <= fair,
                60,
                "the shards shared out",
                0.2,
            )
            balanced = time.time()
            wait(lambda: time.time() >= start, warmup + 30 + 10 * daemons, "the window")
            cpu0 = [cpu_seconds(p.pid) for p in procs]
            gets0 = stand.requests("get")
            time.sleep(window)
            gets = stand.requests("get") - gets0
            cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
            time.sleep(2)  # the last deadlines' cancels
            late: list[float] = []
            senders: dict[str, int] = {}
            for record in records[:due]:
                deadline = math.floor(record.created_at) + MAX_RUNTIME
                if record.cancels:
                    late.append(record.cancels[0].at - deadline)
            for call in stand.state.calls():
                if call["route"] == "cancel":
                    senders[call["project"]] = senders.get(call["project"], 0) + 1
            result = {
                "daemons": daemons,
                "active": active,
                "interval": interval,
                "offered_polls_per_second": active / interval,
                "polls_per_second": gets / window,
                "deadlines": due,
                "cancelled": len(late),
                "cancels_sent_by": senders,
                "deadline_overrun_seconds": summary(late),
                "daemon_cpu_cores": [c / window for c in cpu],
                "load_average": loadavg(),
                "window_began_after_balance_seconds": start - balanced,
            }
            if daemons >= 2:
                result["takeover"] = takeovers(url, procs)
            return result
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)


def takeovers(url: str, procs: list[subprocess.Popen]) -> dict[str, float]:
    """Kill one daemon, then freeze another (if one is left beside a third): the time until the
    others hold all 64 shards again."""
    measured = {}
    killed = procs[-1]
    killed.send_signal(signal.SIGKILL)
    measured["killed_seconds"] = wait(
        lambda: sum(n for pid, n in shards_by_pid(url).items() if pid != killed.pid) == 64,
        60,
        "the killed daemon's shards",
        0.02,
    )
    killed.wait(timeout=10)
    if len(procs) >= 3:
        time.sleep(2)  # the shards balanced again between the two left
        frozen = procs[-2]
        frozen.send_signal(signal.SIGSTOP)
        measured["frozen_seconds"] = wait(
            lambda: shards_by_pid(url).get(procs[0].pid) == 64, 60, "the frozen daemon's shards", 0.02
        )
        frozen.send_signal(signal.SIGCONT)
        measured["frozen_exit_code"] = frozen.wait(timeout=30)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--postgres", default=os.environ.get("TETHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--interval", type=float, default=2.0, help="the fixed poll interval, seconds")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3], help="numbers of daemons to run")
    args = parser.parse_args()
    active, window = (600, 10.0) if args.quick else (3000, 30.0)
    results = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-cluster-") as tmp:
        for daemons in args.sizes:
            log(f"{daemons} daemon(s), {active} responses polled every {args.interval:g} s, {window:g} s window")
            result = run_size(args.postgres, Path(tmp), daemons, active, args.interval, 10.0, window)
            log(json.dumps(result))
            results.append(result)
    RESULTS.write_text(json.dumps({"at": time.time(), "sizes": results}, indent=2) + "\n")
    log(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
