"""CPU per request of the stand-in API, in its own process, against a client that costs little.

    uv run python -m bench.stand_cost            # 5,000 GETs, then 2,000 cancels, 16 connections

The stand-in runs as `python -m tether.fakeapi` in a subprocess; its CPU time is read from
/proc. The client writes raw HTTP/1.1 on kept-alive connections (as bench/loadgen.py does), so
the figure is the server's alone: it tells whether the stand-in can keep up with a burst of
cancels from tether.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

from bench.procs import cpu_seconds, stand_in_process

KEY = "sk-bench-stand-cost"


def request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Content-Type: application/json\r\n" if body else "") + "\r\n").encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> tuple[int, bytes]:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return int(head.split(b" ", 2)[1]), await reader.readexactly(length)


async def send_all(port: int, requests: list[bytes], connections: int) -> None:
    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while requests:
                status, body = await exchange(reader, writer, requests.pop())
                if status != 200:
                    raise RuntimeError(f"the stand-in answered {status}: {body[:200]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


async def create(port: int, count: int) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "o3-pro", "input": "x", "background": True}).encode()
    try:
        return [
            json.loads((await exchange(reader, writer, request("POST", "/v1/responses", body)))[1])["id"]
            for _ in range(count)
        ]
    finally:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gets", type=int, default=5000)
    parser.add_argument("--cancels", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with stand_in_process("--api-key", KEY, "--run", "86400") as (port, pid):
        ids = asyncio.run(create(port, 100 + args.cancels))
        rounds = {
            "GET": [request("GET", f"/v1/responses/{ids[i % 100]}") for i in range(args.gets)],
            "cancel": [request("POST", f"/v1/responses/{rid}/cancel") for rid in ids[100:]],
        }
        for name, requests in rounds.items():
            count, cpu = len(requests), cpu_seconds(pid)
            asyncio.run(send_all(port, requests, args.connections))
            print(f"{name:6s} {(cpu_seconds(pid) - cpu) / count * 1000:.3f} ms of stand-in CPU per request ({count})")


if __name__ == "__main__":
    main()
