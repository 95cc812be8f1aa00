"""Traffic at tether's front door, at fixed rates, from its own process (loopback only).

    python -m bench.front_traffic --proxy http://127.0.0.1:P/v1 --create-rate 200 \
        --socket /path/tether.sock --ls-rate 20 --seconds 60
    python -m bench.front_traffic --proxy http://127.0.0.1:P/v1 --direct http://127.0.0.1:S/v1 \
        --create-rate 200 --seconds 20       # overhead: creates alternate between the two

Background creates (`POST /v1/responses`, a response that finishes within a second) and
`GET /api/responses?limit=100` (what `tether ls` asks) on the control API's Unix socket. Each
request is sent at its scheduled instant whether or not earlier ones were answered (an open
loop, so a slow server does not lower the rate it is offered); at most `--seconds` of sending.
Prints one JSON object on stdout: latency summaries per target, counts and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.procs import cpu_seconds, summary
from bench.stand import API_KEY

CREATE = {"model": "o3-pro", "background": True, "input": "Say hello.", "metadata": {"fake_run": "0.5"}}
LS_PATH = "/api/responses?limit=100"
MAX_IN_FLIGHT = 1000  # past this a scheduled request is counted as skipped, not sent


def loopback(url: str) -> str:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit(f"{url}: front_traffic sends to loopback addresses only")
    return url


class Target:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.skipped = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def result(self) -> dict[str, Any]:
        return {"latency": summary(self.latencies), "errors": self.errors, "skipped": self.skipped}


async def timed(target: Target, request: Any, expect: int) -> None:
    start = time.perf_counter()
    try:
        async with request() as reply:
            await reply.read()
            if reply.status != expect:
                target.error(str(reply.status))
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        target.error(type(exc).__name__)
        return
    target.latencies.append(time.perf_counter() - start)


async def paced(rate: float, seconds: float, send: Any) -> None:
    """Call send(i) at t0 + i / rate for `seconds`; wait for the requests still in flight."""
    tasks: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        task = send(i, len(tasks) >= MAX_IN_FLIGHT)
        if task is not None:
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    body = json.dumps(CREATE).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=30)
    targets = {"proxy": Target("proxy")}
    bases = {"proxy": loopback(args.proxy)}
    if args.direct:
        targets["direct"] = Target("direct")
        bases["direct"] = loopback(args.direct)
    order = list(targets)
    ls = Target("ls")
    cpu0 = cpu_seconds()
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:

        def create(i: int, full: bool) -> asyncio.Task | None:
            name = order[i % len(order)]
            if full:
                targets[name].skipped += 1
                return None
            url = bases[name] + "/responses"
            return asyncio.create_task(timed(targets[name], lambda: http.post(url, data=body, headers=headers), 200))

        jobs = [paced(args.create_rate, args.seconds, create)]
        if args.socket and args.ls_rate:
            unix = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.UnixConnector(path=args.socket))

            def listing(i: int, full: bool) -> asyncio.Task | None:
                if full:
                    ls.skipped += 1
                    return None
                return asyncio.create_task(timed(ls, lambda: unix.get("http://tether" + LS_PATH), 200))

            jobs.append(paced(args.ls_rate, args.seconds, listing))
        try:
            await asyncio.gather(*jobs)
        finally:
            if args.socket and args.ls_rate:
                await unix.close()
    out: dict[str, Any] = {name: target.result() for name, target in targets.items()}
    if args.socket and args.ls_rate:
        out["ls"] = ls.result()
    out["cpu_seconds"] = cpu_seconds() - cpu0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.front_traffic")
    parser.add_argument("--proxy", required=True, help="tether's proxy base URL (…/v1)")
    parser.add_argument("--direct", help="the stand-in's base URL: creates alternate between it and the proxy")
    parser.add_argument("--create-rate", type=float, default=200.0)
    parser.add_argument("--socket", help="tether's control socket, for the `ls` requests")
    parser.add_argument("--ls-rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be within (0, 600]")
    print("ready", flush=True)
    print(json.dumps(asyncio.run(run(args)), default=float))


if __name__ == "__main__":
    main()
