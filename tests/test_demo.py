"""`tether demo` runs to completion as a new user would run it: no key, no config."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_to_completion_and_leaves_nothing_running(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TETHER_"))}
    env.update(
        TMPDIR=str(tmp_path),
        HOME=str(tmp_path),
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "tether", "demo", "--keep"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Traceback" not in out + result.stderr

    summary = re.search(r"^summary (.*)$", out, re.MULTILINE)
    assert summary, out[-2000:]
    assert summary.group(1) == "2 cancelled, 4 completed, 1 failed, 1 incomplete"
    lateness = [float(x) for x in re.findall(r"cancelled by max_\w+ \(\w+\), ([+-][\d.]+)s from its deadline", out)]
    assert len(lateness) == 2 and all(0 <= late <= 1.0 for late in lateness), lateness
    assert "warned for max_runtime, not cancelled" in out
    assert "daemon stopped with exit code 0" in out
    assert re.search(r"^cost: \$[\d.,]+ for 8 responses at o3-pro prices \(2 estimated", out, re.MULTILINE), out[-800:]

    history = out[out.index("\nevent history\n") : out.index("\nsummary ")].strip().splitlines()[1:]
    stamps = [line.split()[0] for line in history]
    assert len(history) >= 8 * 3, history  # each response: tracked, a status or two, finished
    assert {len(s) for s in stamps} == {len("2026-01-01T00:00:00.000Z")}, stamps
    assert stamps == sorted(stamps), "the history is in time order"
    ids = set(re.findall(r"\bresp_\w+", out))
    assert len(ids) == 8 and {len(i) for i in ids} == {len("resp_") + 50}, ids  # whole, as the stand-in makes them

    folder = Path(re.search(r"kept the demo's files in (\S+)", out).group(1))
    lock = os.open(folder / "tether.db.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails if a daemon were still running
    finally:
        os.close(lock)
    daemon_log = (folder / "daemon.log").read_text()
    assert '"event": "daemon.stopping"' in daemon_log
