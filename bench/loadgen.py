"""A plain load generator: keep-alive HTTP/1.1 GETs over raw asyncio streams (its own process).

    python -m bench.loadgen --host 127.0.0.1 --port P --ids FILE --connections 32 --seconds 15

No HTTP library: it writes the request line and headers, reads the head up to the blank line
and then exactly Content-Length bytes, so that it costs far less per request than the server it
measures (the stand-in's ceiling). Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import socket
import time

from bench.stand import API_KEY


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(host: str, port: int, ids: list[str], connections: int, warmup: float, seconds: float) -> dict:
    requests = [
        f"GET /v1/responses/{rid} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Accept: application/json\r\n\r\n".encode()
        for rid in ids
    ]
    counting = False
    done = errors = 0

    async def worker(seed: int) -> None:
        nonlocal done, errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                writer.write(rng.choice(requests))
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200"):
                    done += counting
                else:
                    errors += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker(i)) for i in range(connections)]
    await asyncio.sleep(warmup)
    counting, cpu0, t0 = True, cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    counting = False
    elapsed, used = time.monotonic() - t0, cpu() - cpu0
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return {
        "requests": done,
        "seconds": elapsed,
        "requests_per_second": done / elapsed,
        "cpu_seconds": used,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    with open(args.ids) as f:
        ids = [line.strip() for line in f if line.strip()]
    print(json.dumps(asyncio.run(run(args.host, args.port, ids, args.connections, args.warmup, args.seconds))))


if __name__ == "__main__":
    main()
