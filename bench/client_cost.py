"""CPU per GET of httpx2 on its two transports against the stand-in, in one process.

    uv run python -m bench.client_cost            # httpx2's own transport, httpx2 over aiohttp, tether's client

The first two are a bare `httpx2.AsyncClient` on its default transport (httpcore2) and on
aiohttp (`httpx-aiohttp`); the third is tether's `ResponsesClient` (headers, limits, error
mapping, a bounded read) on the transport it uses.

The stand-in runs in a subprocess, so the CPU time measured here (`time.process_time`) is the
client's alone: 4,000 GETs over 100 responses, 16 at a time (tether's default max_concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from httpx_aiohttp.httpx2 import Httpx2AiohttpClient

from bench.procs import stand_in_process
from tether.api import ResponsesClient, RetryPolicy
from tether.config import AccountConfig

KEY = "sk-bench-client-cost"
CONCURRENCY = 16


async def create_ids(base: str, n: int) -> list[str]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as client:
        body = {"model": "o3-pro", "input": "x", "background": True, "metadata": {"fake_run": "86400"}}
        return [(await client.post(f"{base}/responses", json=body)).json()["id"] for _ in range(n)]


async def drive(get: Callable[[str], Awaitable[Any]], ids: list[str], total: int) -> float:
    """CPU milliseconds per GET."""
    queue = [ids[i % len(ids)] for i in range(total)]

    async def worker() -> None:
        while queue:
            await get(queue.pop())

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - cpu) / total * 1000


async def tether_client(base: str, ids: list[str], total: int) -> float:
    client = ResponsesClient(AccountConfig(name="default", base_url=base), KEY, retry=RetryPolicy(attempts=1))
    try:
        return await drive(client.get, ids, total)
    finally:
        await client.aclose()


async def plain(client: httpx2.AsyncClient, base: str, ids: list[str], total: int) -> float:
    async with client:

        async def get(rid: str) -> Any:
            return (await client.get(f"{base}/responses/{rid}")).json()

        return await drive(get, ids, total)


def options() -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {KEY}"}, "limits": httpx2.Limits(max_connections=CONCURRENCY)}


async def httpx2_default(base: str, ids: list[str], total: int) -> float:
    return await plain(httpx2.AsyncClient(**options()), base, ids, total)


async def httpx2_aiohttp(base: str, ids: list[str], total: int) -> float:
    return await plain(Httpx2AiohttpClient(**options()), base, ids, total)


CLIENTS = {"httpx2": httpx2_default, "httpx2+aiohttp": httpx2_aiohttp, "tether": tether_client}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    with stand_in_process("--api-key", KEY) as (port, _):
        base = f"http://127.0.0.1:{port}/v1"
        ids = asyncio.run(create_ids(base, 100))
        for name, client in CLIENTS.items():
            ms = asyncio.run(client(base, ids, args.requests))
            print(f"{name:15s} {ms:.3f} ms CPU per GET")


if __name__ == "__main__":
    main()
