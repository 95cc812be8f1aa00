"""People looking at the dashboard, from a process of its own (loopback only).

    python -m bench.dashboard_traffic --base http://127.0.0.1:P --page-rate 4 --tails 4 --seconds 60

Two kinds of request, as open browser tabs make them: `--tails` live tails, each asking
`/events/rows?after=N` once a second as the page's script does (N from the last answer), and
whole pages at `--page-rate` a second (open loop, see bench.front_traffic), in turn: the
responses table's first, a middle and an active-filtered page, the overview, the events page.
Prints "ready", then one JSON object: latency summaries per page kind, counts and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from contextlib import AbstractContextManager
from typing import Any

import aiohttp

from bench.front_traffic import Target, loopback, paced, timed
from bench.procs import cpu_seconds, traffic_process

PAGES = {
    "responses": "/responses",
    "responses_page_100": "/responses?page=100",
    "responses_active_page_50": "/responses?status=active&page=50",
    "overview": "/",
    "events": "/events",
}
TAIL_EVERY = 1.0  # what dashboard.js waits between two asks


async def tail(http: aiohttp.ClientSession, base: str, target: Target, seconds: float) -> None:
    after, end = "0", time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        try:
            async with http.get(f"{base}/events/rows", params={"after": after}) as reply:
                await reply.read()
                if reply.status != 200:
                    target.error(str(reply.status))
                else:
                    after = reply.headers.get("X-Last-Event-Id", after)
                    target.latencies.append(time.perf_counter() - start)
        except (aiohttp.ClientError, TimeoutError) as exc:
            target.error(type(exc).__name__)
        await asyncio.sleep(TAIL_EVERY)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = loopback(args.base)
    targets = {name: Target(name) for name in PAGES}
    tails = Target("tail")
    names = list(PAGES)
    cpu0 = cpu_seconds()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:

        def load(i: int, full: bool) -> asyncio.Task | None:
            name = names[i % len(names)]
            if full:
                targets[name].skipped += 1
                return None
            return asyncio.create_task(timed(targets[name], lambda: http.get(base + PAGES[name]), 200))

        await asyncio.gather(
            paced(args.page_rate, args.seconds, load),
            *(tail(http, base, tails, args.seconds) for _ in range(args.tails)),
        )
    out: dict[str, Any] = {name: target.result() for name, target in targets.items()}
    out["tail"] = tails.result()
    out["cpu_seconds"] = cpu_seconds() - cpu0
    return out


def browsing(base: str, seconds: float, page_rate: float, tails: int) -> AbstractContextManager[dict[str, Any]]:
    """This module in a process of its own for `seconds` from when it is ready; yields its
    result, filled in once it is done."""
    args = ["--base", base, "--page-rate", str(page_rate), "--tails", str(tails)]
    return traffic_process("bench.dashboard_traffic", args, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_traffic")
    parser.add_argument("--base", required=True, help="the TCP listener's base URL")
    parser.add_argument("--page-rate", type=float, default=4.0)
    parser.add_argument("--tails", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be within (0, 600]")
    print("ready", flush=True)
    print(json.dumps(asyncio.run(run(args)), default=float))


if __name__ == "__main__":
    main()
