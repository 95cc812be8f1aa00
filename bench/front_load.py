"""The front door under load: deadline precision with and without proxy and control-API traffic,
and what the proxy adds to a create.

    uv run python -m bench.front_load            # 10,000 active responses (about 6 minutes)
    uv run python -m bench.front_load --quick    # smaller and shorter: checks the harness works

1. The deadline scenario of bench.deadline (10,000 deadlines within 60 s) with the proxy and
   the TCP listener on, no traffic.
2. The same, while bench.front_traffic (its own process) sends 200 background creates per
   second through the proxy and `GET /api/responses?limit=100` 20 times per second on the
   control socket, from the daemon's start to the window's end.
3. Proxy overhead: 10,000 responses tracked (far deadlines), creates alternating between the
   stand-in directly and the proxy (100 per second each).

Results go to bench/results/front.json (the figures of docs/benchmarks.md, "The front door
under load", are copied from there by hand). Every process started here is stopped here.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bench.deadline import deadline
from bench.harness import ROOT, harness_parser, log, run_meta, save_results, stop_cleanly_on_signals
from bench.procs import free_port, loadavg, traffic_process
from bench.stand import Stand
from bench.tether_proc import Polling, Tether
from bench.tracking import FAR_POLICY

RESULTS = ROOT / "bench" / "results" / "front.json"

FRONT_CONFIG = """
[server]
socket = "{socket}"
listen = "127.0.0.1:{port}"

[proxy]
enabled = true
key = "client"
"""


def front_config(work: Path) -> tuple[str, str, int]:
    """The [server] and [proxy] tables, the socket path and the listener's port."""
    sock, port = str(work / "tether.sock"), free_port()
    return FRONT_CONFIG.format(socket=sock, port=port), sock, port


def traffic(args: list[str], seconds: float) -> AbstractContextManager[dict[str, Any]]:
    """bench.front_traffic for `seconds` from when it is ready; yields its result once it is done."""
    return traffic_process("bench.front_traffic", args, seconds)


def loaded(work: Path, active: int, spread: float, lead: float, create_rate: float, ls_rate: float) -> dict[str, Any]:
    config, sock, port = front_config(work)

    def during(stand: Stand, t: Tether, until: float) -> Any:
        return traffic(
            [
                "--proxy",
                f"http://127.0.0.1:{port}/v1",
                "--create-rate",
                str(create_rate),
                "--socket",
                sock,
                "--ls-rate",
                str(ls_rate),
            ],
            seconds=max(1.0, until - time.time() - 1),
        )

    result = deadline(work, active, spread, lead, config=config, during=during)
    result.pop("lags")
    return result


def quiet(work: Path, active: int, spread: float, lead: float) -> dict[str, Any]:
    config, _, _ = front_config(work)
    result = deadline(work, active, spread, lead, config=config)
    result.pop("lags")
    return result


def overhead(work: Path, active: int, rate: float, seconds: float) -> dict[str, Any]:
    """The same creates straight to the stand-in and through the proxy, alternating."""
    config, _, port = front_config(work)
    with Stand() as stand:
        records = stand.create(active)
        t = Tether(work / "overhead", stand.base_url, polling=Polling(), policies=FAR_POLICY + config)
        try:
            t.track(records)
            t.spread([r.id for r in records], start=time.time() + 3, interval=60.0)
            t.start()
            with traffic(
                ["--proxy", f"http://127.0.0.1:{port}/v1", "--direct", stand.base_url, "--create-rate", str(rate)],
                seconds=seconds,
            ) as out:
                pass
            t.stop()
        finally:
            t.kill()
    p, d = out["proxy"]["latency"], out["direct"]["latency"]
    out["added"] = {q: p[q] - d[q] for q in ("p50", "p99", "mean")}
    return out


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def table(results: dict[str, Any]) -> str:
    q, l_ = results["quiet"], results["loaded"]
    traffic_ = l_["during"]
    lines = [
        "| deadline run | p50 ms | p99 ms | max ms | missing | cancels | daemon CPU | others' CPU |",
        "|---|---|---|---|---|---|---|---|",
        (
            f"| no traffic | {ms(q['lag']['p50'])} | {ms(q['lag']['p99'])} | {ms(q['lag']['max'])} | {q['missing']} "
            f"| {q['cancels_seen_by_server']} | {q['cpu_share']:.2f} | {q['others_cores']:.2f} |"
        ),
        (
            f"| 200 creates/s + 20 ls/s | {ms(l_['lag']['p50'])} | {ms(l_['lag']['p99'])} | {ms(l_['lag']['max'])} "
            f"| {l_['missing']} | {l_['cancels_seen_by_server']} | {l_['cpu_share']:.2f} | {l_['others_cores']:.2f} |"
        ),
        (
            f"| ratio (target ≤ 2×) | {l_['lag']['p50'] / q['lag']['p50']:.2f}× | {results['p99_ratio']:.2f}× "
            f"| {l_['lag']['max'] / q['lag']['max']:.2f}× | | | | |"
        ),
        "",
        "| during the loaded run | n | p50 ms | p99 ms | max ms | errors | skipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("proxy", "ls"):
        s = traffic_[name]
        lines.append(
            f"| {name} | {s['latency']['n']} | {ms(s['latency']['p50'])} | {ms(s['latency']['p99'])} "
            f"| {ms(s['latency']['max'])} | {s['errors'] or 0} | {s['skipped']} |"
        )
    o = results["overhead"]
    lines += [
        "",
        "| create latency (quiet daemon) | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for name in ("direct", "proxy"):
        s = o[name]["latency"]
        lines.append(f"| {name} | {s['n']} | {ms(s['p50'])} | {ms(s['p99'])} | {ms(s['max'])} |")
    lines.append(f"| added by the proxy | | {ms(o['added']['p50'])} | {ms(o['added']['p99'])} | |")
    return "\n".join(lines)


def main() -> None:
    args = harness_parser("python -m bench.front_load", __doc__, RESULTS).parse_args()
    stop_cleanly_on_signals()
    q = args.quick
    active, spread, lead = (2_000, 20.0, 20.0) if q else (10_000, 60.0, 35.0)
    results: dict[str, Any] = {"meta": run_meta(q)}
    log(f"front door: load average before {results['meta']['load_before']}")
    work = Path(tempfile.mkdtemp(prefix="tether-front-"))
    try:
        log("front door: deadline run without traffic")
        results["quiet"] = quiet(work, active, spread, lead)
        results["meta"]["load_between"] = loadavg()
        log("front door: deadline run with 200 creates/s through the proxy and 20 ls/s")
        results["loaded"] = loaded(work, active, spread, lead, create_rate=200.0, ls_rate=20.0)
        results["p99_ratio"] = results["loaded"]["lag"]["p99"] / results["quiet"]["lag"]["p99"]
        log("front door: proxy overhead")
        results["overhead"] = overhead(work, active, rate=200.0, seconds=8.0 if q else 20.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_results(results, args.results)
    print(table(results))


if __name__ == "__main__":
    main()
