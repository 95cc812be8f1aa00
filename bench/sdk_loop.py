"""The baseline: an asyncio loop over the official SDK, no persistence (run as its own process).

    python -m bench.sdk_loop --base-url URL --ids FILE --mode saturate --seconds 30
    python -m bench.sdk_loop --base-url URL --ids FILE --mode every --interval 2 --seconds 200

`saturate`: `--concurrency` workers call `AsyncOpenAI(...).responses.retrieve` on the ids
round robin as fast as they can (polls per CPU-second, the throughput baseline).
`every`: the documented fixed loop, each id polled every `--interval` seconds until it is
terminal (the API-economy baseline); prints per id the polls and when it saw it terminal.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time

from openai import AsyncOpenAI

from bench.stand import API_KEY

TERMINAL = {"completed", "failed", "cancelled", "incomplete"}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def saturate(client: AsyncOpenAI, ids: list[str], concurrency: int, warmup: float, seconds: float) -> dict:
    cycle = itertools.cycle(ids)
    counting = False
    polls = errors = 0

    async def worker() -> None:
        nonlocal polls, errors
        while True:
            try:
                await client.responses.retrieve(next(cycle))
                polls += counting
            except Exception:
                errors += 1

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    counting, cpu0, t0 = True, cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    counting = False
    elapsed, used = time.monotonic() - t0, cpu() - cpu0
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return {
        "polls": polls,
        "seconds": elapsed,
        "cpu_seconds": used,
        "polls_per_second": polls / elapsed,
        "polls_per_cpu_second": polls / used if used else None,
        "errors": errors,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def every(client: AsyncOpenAI, ids: list[str], concurrency: int, interval: float, seconds: float) -> dict:
    """while status not terminal: sleep(interval); retrieve()  — per id, as the docs show."""
    gate = asyncio.Semaphore(concurrency)
    out: dict[str, dict] = {}
    stop_at = time.monotonic() + seconds

    async def follow(rid: str) -> None:
        polls = 0
        while time.monotonic() < stop_at:
            await asyncio.sleep(interval)
            async with gate:
                response = await client.responses.retrieve(rid)
            polls += 1
            if response.status in TERMINAL:
                out[rid] = {"polls": polls, "seen_terminal_at": time.time()}
                return
        out[rid] = {"polls": polls, "seen_terminal_at": None}

    cpu0 = cpu()
    await asyncio.gather(*(follow(rid) for rid in ids))
    return {"responses": out, "cpu_seconds": cpu() - cpu0}


async def main_async(args: argparse.Namespace) -> dict:
    if args.ids == "-":  # the ids come once everything is imported: the loop starts on time
        print("ready", flush=True)
        ids = [line.strip() for line in sys.stdin if line.strip()]
    else:
        with open(args.ids) as f:
            ids = [line.strip() for line in f if line.strip()]
    client = AsyncOpenAI(api_key=API_KEY, base_url=args.base_url, max_retries=0, timeout=30.0)
    try:
        if args.mode == "saturate":
            return await saturate(client, ids, args.concurrency, args.warmup, args.seconds)
        return await every(client, ids, args.concurrency, args.interval, args.seconds)
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_loop")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--ids", required=True, help="a file of response ids, one a line; - reads them from stdin")
    parser.add_argument("--mode", choices=("saturate", "every"), default="saturate")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    print(json.dumps(asyncio.run(main_async(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
