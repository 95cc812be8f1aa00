"""Reading a process's (or a thread's) CPU time and memory from /proc, small stats helpers, and
the stand-in API and the traffic generators as processes of their own."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int | str = "self", tid: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is the state (field 3 of stat(5)): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak resident set size) in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        one, five, fifteen = f.read().split()[:3]
    return float(one), float(five), float(fifteen)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (as tether.stats does)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan, "min": math.nan}
    return {
        "n": len(ordered),
        "min": ordered[0],
        "p50": percentile(ordered, 0.50),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


class Others:
    """CPU used by processes other than ours during a window: the noise on the measurement."""

    def __init__(self, *pids: int) -> None:
        import resource

        self._pids = pids
        self._resource = resource
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        ours = cpu_seconds("self") + sum(cpu_seconds(p) for p in self._pids)
        children = self._resource.getrusage(self._resource.RUSAGE_CHILDREN)
        import time

        return machine_busy(), ours + children.ru_utime + children.ru_stime, time.monotonic()

    def cores(self) -> float:
        """Average cores used by others since this object was made."""
        busy1, ours1, t1 = self._sample()
        busy0, ours0, t0 = self._start
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def traffic_process(module: str, args: list[str], seconds: float) -> Iterator[dict[str, Any]]:
    """`python -m MODULE ARGS --seconds S`, a traffic generator of bench/ that prints `ready`,
    runs for `seconds`, then prints its result as one JSON line; yields that result, filled in
    once the process is done."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args, "--seconds", f"{seconds:.1f}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{module} did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        yield out
        stdout, stderr = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"{module} failed: {stderr[-2000:]}")
        out.update(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@contextmanager
def stand_in_process(*args: str) -> Iterator[tuple[int, int]]:
    """`python -m tether.fakeapi ARGS` on a free port, once it accepts connections: (port, pid)."""
    port = free_port()
    stand = subprocess.Popen(
        [sys.executable, "-m", "tether.fakeapi", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the stand-in did not start") from None
                time.sleep(0.1)
        yield port, stand.pid
    finally:
        stand.terminate()
        stand.wait(timeout=10)
