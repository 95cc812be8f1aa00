"""The throughput scenario: tether saturated, then the official SDK in a plain asyncio loop
and the stand-in's ceiling (a plain load generator) on the same responses.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, log
from bench.procs import Others
from bench.stand import Stand
from bench.tether_proc import Polling, Tether
from bench.tracking import FAR_POLICY, churning, steady_window


def throughput(work: Path, active: int, warmup: float, window: float) -> dict[str, Any]:
    """tether saturated (a 1 s interval over `active` responses), then the SDK loop and the plain
    load generator on the same responses, one after the other in this one run."""
    rng = random.Random(7)
    now = time.time()
    out: dict[str, Any] = {"active": active}
    with Stand() as stand:
        records = stand.create(active, created_at=lambda i: now - rng.uniform(0, 300), metadata=lambda i: churning(rng))
        ids_file = work / "ids.txt"
        ids_file.write_text("\n".join(r.id for r in records))
        t = Tether(
            work / "throughput", stand.base_url, polling=Polling.fixed(1.0), policies=FAR_POLICY, stats_interval=window
        )
        try:
            t.track(records)
            t.spread([r.id for r in records], start=time.time() + 3, interval=1.0)
            log(f"throughput: tether run, {active} responses every 1 s")
            t.start()
            _, _, out["tether"] = steady_window(t, stand, warmup, window)
            t.stop()
        finally:
            t.kill()
        log("throughput: SDK loop (AsyncOpenAI.responses.retrieve, 16 concurrent)")
        fake0, others = stand.cpu(), Others()
        sdk = run_json(
            [
                sys.executable,
                "-m",
                "bench.sdk_loop",
                "--base-url",
                stand.base_url,
                "--ids",
                str(ids_file),
                "--mode",
                "saturate",
                "--concurrency",
                "16",
                "--warmup",
                str(min(warmup, 5)),
                "--seconds",
                str(window),
            ]
        )
        sdk["stand_cpu_share"] = (stand.cpu() - fake0) / (window + min(warmup, 5))
        sdk["others_cores"] = others.cores()
        out["sdk"] = sdk
        log("throughput: plain load generator (the stand-in's ceiling)")
        fake0, w0, others = stand.cpu(), time.time(), Others()
        gen = run_json(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--port",
                str(stand.server.port),
                "--ids",
                str(ids_file),
                "--connections",
                "32",
                "--seconds",
                str(min(window, 15)),
            ]
        )
        gen["stand_cpu_share"] = (stand.cpu() - fake0) / (time.time() - w0)
        gen["others_cores"] = others.cores()
        out["ceiling"] = gen
    return out


def run_json(cmd: list[str], timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2]} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
