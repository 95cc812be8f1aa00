"""`python -m tether.fakeapi`: serve the fake Responses API until SIGINT/SIGTERM.

The first line of stdout is the base URL to give clients.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

from .server import FakeServer
from .state import OUTCOMES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tether.fakeapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--api-key", help="the key clients must send (default: accept any)")
    parser.add_argument("--id-prefix", default="resp_")
    parser.add_argument(
        "--cancel-finished-status",
        type=int,
        choices=(400, 409, 200),
        default=400,
        help="the answer to cancelling a finished response",
    )
    defaults = parser.add_argument_group("simulation defaults (per request: metadata fake_<name>)")
    defaults.add_argument("--queue", type=float, default=0.0, help="seconds queued")
    defaults.add_argument("--run", type=float, default=1.0, help="seconds in progress")
    defaults.add_argument("--outcome", choices=OUTCOMES, default="completed")
    for name, default in (("input", 1000), ("output", 500), ("reasoning", 0), ("cached", 0)):
        defaults.add_argument(f"--{name}-tokens", type=int, default=default)
    args = vars(parser.parse_args(argv))

    server = FakeServer(**args)
    sock = server.bind()
    print(server.base_url, flush=True)
    asyncio.run(_serve_until_signalled(server, sock))


async def _serve_until_signalled(server: FakeServer, sock: socket.socket) -> None:
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    await server.serve(sock, stopping)


if __name__ == "__main__":
    main()
