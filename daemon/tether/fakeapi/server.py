"""Serving the fake API over HTTP/1.1 (aiohttp's low-level server): from a background thread
(tests, demo) or the foreground (CLI)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from typing import Any

from aiohttp import web

from .app import FakeAPI
from .state import FakeState

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
BACKLOG = 2048  # a burst of connections (the deadline benchmark's cancels) waits to be accepted
STOP_GRACE = 0.05  # seconds requests in flight get to finish on stop; held ones are then cut off


class FakeServer:
    """The fake Responses API on a local port.

    `with FakeServer(run=0.2) as srv:` serves from a background thread and gives
    `srv.base_url` ("http://127.0.0.1:PORT/v1") and `srv.state`. With `tls` (a server-side
    SSLContext) it serves HTTPS. Keywords beyond the named ones go to `FakeState` (simulation
    defaults, `id_prefix`, `cancel_finished_status`).
    """

    def __init__(
        self,
        api_key: str | None = "sk-fake",
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        **settings: Any,
    ) -> None:
        self.state = FakeState(api_key=api_key, **settings)
        self.host = host
        self.port = port
        self.tls = tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def bind(self) -> socket.socket:
        """A listening socket on host:port (port 0 picks one): clients can connect from now on."""
        # An explicit IPPROTO_TCP (socket.create_server leaves proto 0) is what makes asyncio set
        # TCP_NODELAY on accepted connections; without it, replies wait ~40 ms on delayed ACKs.
        family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        self.port = sock.getsockname()[1]
        return sock

    async def serve(self, sock: socket.socket, until: asyncio.Event) -> None:
        """Serve on the listening `sock` until `until` is set."""
        watch = asyncio.create_task(_watch_loop_lag(self.state, until))
        # Handler cancellation: a client that goes away ends its held request (app.py).
        server = web.Server(FakeAPI(self.state), handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=STOP_GRACE)
        await runner.setup()
        try:
            await web.SockSite(runner, sock, ssl_context=self.tls, backlog=BACKLOG).start()
            await until.wait()
        finally:
            await runner.cleanup()
            watch.cancel()

    def start(self) -> FakeServer:
        """Serve from a background thread; returns once the server accepts connections."""
        sock = self.bind()
        ready = threading.Event()

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            ready.set()
            await self.serve(sock, self._stopping)

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), name=f"fakeapi:{self.port}")
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("the fake API server did not start")
        return self

    def stop(self) -> None:
        """Stop serving: close every connection (held requests too) and join the thread."""
        if self._thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("the fake API server did not stop")
        self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


LAG_TICK = 0.05
LAG_NOTED = 0.05  # stalls longer than this are kept


async def _watch_loop_lag(state: FakeState, until: asyncio.Event) -> None:
    """Note when the server's own event loop stalls (a loaded machine, a busy test thread):
    `FakeState.stalls` lists (start, seconds), so tests can tell the server's slowness from
    the client's."""
    loop = asyncio.get_running_loop()
    while not until.is_set():
        before = loop.time()
        await asyncio.sleep(LAG_TICK)
        late = loop.time() - before - LAG_TICK
        if late > LAG_NOTED:
            state.note_stall(late)
