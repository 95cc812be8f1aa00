"""The daemon's HTTP listeners (aiohttp.web, on the daemon's own event loop; docs/api.md).

- The Unix socket `[server] socket`: the control API without a token; the socket's folder
  (0750) and file (0660) modes say who may use it.
- The TCP listener `[server] listen`: the control API only with the bearer token
  (`token_file`, `token_env` or `token_credential`); without one it is not served there.
  It also serves `POST /webhooks/openai` (tether.webhooks; signed, no token) and, with
  `[proxy] enabled`, the OpenAI-compatible proxy `/v1/*` (tether.proxy; its own auth).
Both answer `/healthz` (the loop runs), `/readyz` (the store answers, the lock is held) and
`/metrics` (Prometheus scrapes it; no token, like the probes). The TCP listener also serves the
dashboard's pages at `/` (tether.dashboard; its one action, cancel, only with the token).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from tether import __version__, dashboard, webhooks
from tether.metrics import METRICS, Metrics, metrics_handler
from tether.proxy import Proxy
from tether.server import control, openapi
from tether.server.front import Front

if TYPE_CHECKING:
    from tether.daemon import Daemon

READY_TIMEOUT = 5.0  # a store that does not answer within this is not ready
SHUTDOWN_TIMEOUT = 2.0  # requests still open at shutdown (followed event streams) are ended after this
SOCKET_MODE, FOLDER_MODE = 0o660, 0o750


class ServerError(Exception):
    """A listener cannot start; the message says why and what to do."""


def build_app(
    front: Front, *, control_api: bool, token: str | None = None, metrics: Metrics | None = None
) -> web.Application:
    """One listener's application: the probes, `metrics` at /metrics, and the control API when
    `control_api` (behind the bearer `token` when one is given)."""
    middlewares = [control.refusals]
    if token is not None:
        middlewares.insert(0, bearer(token))
    app = web.Application(middlewares=middlewares)
    app[control.FRONT] = front
    app[control.CLOSING] = asyncio.Event()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    if metrics is not None:
        app[METRICS] = metrics
        app.add_routes([web.get("/metrics", metrics_handler)])
    if control_api:
        app.add_routes([*control.routes(), web.get("/openapi.json", openapi_document)])
    return app


def bearer(token: str):
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler) -> web.StreamResponse:
        if request.path.startswith("/api/") or request.path == "/openapi.json":
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                answer = control.error_answer(
                    401, "a bearer token is required (Authorization: Bearer <token>)", "unauthorized"
                )
                answer.headers["WWW-Authenticate"] = "Bearer"
                return answer
        return await handler(request)

    return check


async def healthz(request: web.Request) -> web.Response:
    return control.answer({"alive": True})


async def readyz(request: web.Request) -> web.Response:
    front = request.app[control.FRONT]
    try:
        store = await asyncio.wait_for(asyncio.to_thread(front.store_answers), READY_TIMEOUT)
    except TimeoutError:
        store = False
    lock = front.holds_lock()
    return control.answer({"ready": store and lock, "store": store, "lock": lock}, 200 if store and lock else 503)


async def openapi_document(request: web.Request) -> web.Response:
    return control.answer(openapi.document(__version__))


class Server:
    """The listeners of one daemon: started once it has loaded, stopped first at shutdown."""

    def __init__(self, daemon: Daemon) -> None:
        self.front = Front(daemon)
        self.runners: list[web.AppRunner] = []
        self.proxy: Proxy | None = None
        self.socket_path: str | None = None
        self._socket_id: tuple[int, int] | None = None

    async def start(self) -> None:
        server = self.front.config.server
        try:
            if server.socket:
                try:
                    await self._listen_on_socket(server.socket)
                except OSError as exc:
                    raise ServerError(f"cannot listen on {server.socket}: {exc.strerror or exc}") from None
            if server.listen:
                token = server.read_token()
                host, port = server.listen
                app = build_app(
                    self.front, control_api=token is not None, token=token, metrics=self.front.state.metrics
                )
                app.add_routes(webhooks.routes(self.front, self.front.config))
                dashboard.add_routes(app, self.front, token)
                if self.front.config.proxy.enabled:
                    self.proxy = Proxy(self.front, self.front.config, token)
                    app.add_routes(self.proxy.routes())
                try:
                    await self._start(app, lambda runner: web.TCPSite(runner, host, port, reuse_address=True))
                except OSError as exc:
                    raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        except BaseException:
            await self.stop()
            raise

    async def _listen_on_socket(self, path: str) -> None:
        prepare_socket_path(path)
        app = build_app(self.front, control_api=True, metrics=self.front.state.metrics)
        await self._start(app, lambda runner: web.UnixSite(runner, path))
        os.chmod(path, SOCKET_MODE)  # after bind: the umask decided its mode
        info = os.stat(path)
        self.socket_path, self._socket_id = path, (info.st_dev, info.st_ino)

    async def _start(self, app: web.Application, site) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self.runners.append(runner)
        await site(runner).start()

    async def stop(self) -> None:
        for runner in self.runners:
            runner.app[control.CLOSING].set()  # followed event streams end
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None
        self.front.close()
        if self.socket_path is not None:
            try:
                info = os.stat(self.socket_path)
                if (info.st_dev, info.st_ino) == self._socket_id:  # still ours, not a successor's
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            self.socket_path = None


def prepare_socket_path(path: str) -> None:
    """Make the socket's folder (0750) if need be; refuse a socket a live daemon listens on,
    replace a stale one (left by a daemon that was killed)."""
    folder = Path(path).parent
    if not folder.is_dir():
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        os.chmod(folder, FOLDER_MODE)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ServerError(f"{path} exists and is not a socket; remove it or set [server] socket elsewhere")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ServerError(f"cannot check the socket {path}: {exc.strerror or exc}") from None
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise ServerError(
        f"{path} is in use: another tether daemon listens there; stop it, or give this one another [server] socket"
    )
