"""How long the `tether` command takes to start and answer: `--help`, `ls`, `track ID`.

Each command runs as a real subprocess of the `tether` entry point of an install as users get
it: the project installed with its runtime dependencies only, compiled, into a virtual
environment of its own (the development environment also holds the test tools). The store holds
1,000 responses tracked with tether's own code (bench.tether_proc) and `track` looks its id up
on the stand-in API over loopback HTTP. Then `ls` and `track ID` again with the daemon running,
as deployed: the commands ask it through its control socket and open no store. The targets are
wall-clock times on a quiet machine; the CPU time of each run (user + system) is printed too, as
it moves less when other work shares the machine.

    uv run python -m bench.cli_startup [--runs N] [--here]

`--here` times the development environment's entry point instead (no install).
`--instructions` also counts each command's instructions once under valgrind (cachegrind,
no cache simulation): unlike time, the count does not move with the machine's load or speed,
so it shows what a change saved on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tether
from bench.stand import API_KEY, Stand
from bench.tether_proc import KEY_ENV, Tether

STORED = 1_000
TARGETS = {"--help": 0.3, "ls": 0.5, "track ID": 0.6}  # seconds, met by the median run


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def instructions(argv: list[str], env: dict[str, str]) -> int:
    """Instructions executed by one run of `argv` (valgrind's I refs)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    python = Path(argv[0]).parent / "python"  # the entry point's interpreter, not its script's shebang
    result = subprocess.run(
        [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", str(python), *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"valgrind {' '.join(argv)} exited {result.returncode}: {result.stderr[-500:]}")
    return int(found[1].replace(",", ""))


def installed(venv: Path) -> Path:
    """The `tether` entry point of the project installed, without its development dependencies,
    into a new virtual environment at `venv` (by uv, from its cache when it can)."""
    uv = shutil.which("uv") or os.environ.get("UV")
    if uv is None:
        raise SystemExit("uv is needed to install tether for the measurement (or use --here)")
    project = Path(tether.__file__).resolve().parents[2]
    python = venv / "bin" / "python"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", str(python), str(project)], check=True
    )
    return venv / "bin" / "tether"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--here", action="store_true", help="time the development environment's entry point")
    parser.add_argument("--instructions", action="store_true", help="count each command's instructions (valgrind)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tether-cli-startup-") as tmp, Stand() as stand:
        if args.here:
            entry = Path(sys.executable).parent / "tether"
        else:
            entry = installed(Path(tmp) / "venv")
        install = Tether(Path(tmp) / "tether", stand.base_url)
        install.track(stand.create(STORED))
        fresh = iter([record.id for record in stand.create(2 * (args.runs + 1))])  # an untracked id per `track`
        env = {**os.environ, KEY_ENV: API_KEY}
        base = [str(entry), "--config", str(install.config_path)]
        commands = {
            "--help": lambda: [str(entry), "--help"],
            "ls": lambda: [*base, "ls"],
            "track ID": lambda: [*base, "track", next(fresh)],
        }
        timed(base + ["ls"], env)  # warm the page cache once, as a second invocation would find it
        print(
            f"tether CLI start-up ({'development environment' if args.here else 'an install of tether alone'}): "
            f"{args.runs} runs each, {STORED:,} stored responses, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'command':<24} {'median':>8} {'max':>8} {'cpu':>8} {'target':>8}  met"
            + ("  instructions" if args.instructions else "")
        )
        for name, argv in commands.items():
            report(name, argv, env, args, TARGETS[name])
        # As deployed, the commands ask the running daemon through its socket and open no store.
        with install.config_path.open("a") as config:
            config.write(f'\n[server]\nsocket = "{Path(tmp) / "tether.sock"}"\n')
        install.start()
        try:
            settled(install)
            for name in ("ls", "track ID"):
                report(f"{name}, daemon running", commands[name], env, args, TARGETS[name])
        finally:
            install.stop()


def settled(install: Tether, within: float = 120.0) -> None:
    """Returns once the daemon is idle (under 5 % of a CPU for a second): past its first polls."""
    deadline = time.monotonic() + within
    used = install.cpu()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        before, used = used, install.cpu()
        if used - before < 0.05:
            return
    raise SystemExit(f"the daemon was still busy {within:g} s after its start")


def report(
    name: str, argv: Callable[[], list[str]], env: dict[str, str], args: argparse.Namespace, target: float
) -> None:
    """One line of the table: `argv()` run `args.runs` times (and counted once)."""
    runs = [timed(argv(), env) for _ in range(args.runs)]
    walls = [wall for wall, _ in runs]
    median, worst, cpu = statistics.median(walls), max(walls), statistics.median(c for _, c in runs)
    counted = f"  {instructions(argv(), env) / 1e9:>10.3f} G" if args.instructions else ""
    print(
        f"{name:<24} {median:>7.3f}s {worst:>7.3f}s {cpu:>7.3f}s {target:>7.1f}s  "
        f"{'yes' if median <= target else 'no':<3}{counted}"
    )


if __name__ == "__main__":
    main()
