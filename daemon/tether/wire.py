"""HTTP/1.1 for tether's three calls (get, cancel, create), on asyncio and httptools.

A deadline is a burst: every response whose deadline falls in the same second is cancelled
at once, and the burst's last cancel leaves as late as the client's CPU per request makes it.
aiohttp spent two and a half times the CPU per request of this module (docs/benchmarks.md,
*9.* and *10.*), so tether speaks HTTP itself, for just what it needs:

- kept-alive connections to one origin, the most recently used first, closed after KEEPALIVE
  idle (before a server or load balancer would close them under a request);
- TLS with the system's trust store (OpenSSL's `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured);
- a proxy from the environment (`proxy_for` in api.py), spoken to in plain HTTP: CONNECT for
  https, absolute-form for http, Basic credentials taken from the proxy URL;
- replies of known length, chunked or read until close; gzip or deflate bodies;
- a connect timeout, and a timeout on the wait for each read of the reply.

Not: redirects, cookies, HTTP/2, request bodies of unknown length. A request is never sent
twice here: whoever calls decides, knowing whether it was sent (`WireError.sent`).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import urllib.parse
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httptools

KEEPALIVE = 15.0  # an idle connection older than this is closed rather than reused
# With both IPv6 and IPv4 addresses, the next one is tried after this long (RFC 8305), so a
# broken IPv6 route costs a quarter second rather than the whole connect timeout.
HAPPY_EYEBALLS = 0.25
TUNNEL_HEAD_MAX = 16384  # a proxy's answer to CONNECT, status line and headers


class WireError(Exception):
    """The exchange failed. `sent` is False only when the request provably never left."""

    sent = True


class CannotConnect(WireError):
    sent = False


class ReplyTimeout(WireError):
    pass


class Broken(WireError):
    """Closed, reset or garbled after the request was sent."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    reason: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes


class Trace(Protocol):
    """Sees each request as it is sent, and how it ended (its status; None when it failed)."""

    def started(self, method: str, url: str, headers: Mapping[str, str]) -> None: ...

    def ended(self, status: int | None) -> None: ...


class Origin:
    """Connections to one base URL, and the requests sent on them."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout: float,
        proxy: str | None = None,
        trace: Trace | None = None,
        user_agent: str = "tether",
        max_idle: int = 16,
    ) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        name = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal in brackets
        authority = name if url.port is None else f"{name}:{self.port}"
        self._tunnel_to = f"{name}:{self.port}"  # CONNECT always names the port
        self.timeout = timeout
        self._prefix = url.path.rstrip("/") + "/"
        self._target = self._prefix  # what precedes the path on the request line
        if proxy and "://" not in proxy:  # HTTPS_PROXY=proxy.corp:3128, as curl accepts it
            proxy = f"http://{proxy}"
        self._proxy = urllib.parse.urlsplit(proxy) if proxy else None
        self._proxy_problem = _proxy_problem(self._proxy)  # told at each request: nothing is sent
        # Where connections go: the proxy when there is one.
        self._peer = (self.host, self.port)
        if self._proxy is not None and self._proxy_problem is None:
            self._peer = (self._proxy.hostname or "", self._proxy.port or 80)
        fields = {"Host": authority, "User-Agent": user_agent, "Accept": "application/json",
                  "Accept-Encoding": "gzip, deflate", **headers}
        if self._proxy is not None and not self.tls:
            self._target = f"http://{authority}{self._prefix}"  # absolute-form, to the proxy
            fields.update(_proxy_credentials(self._proxy))
        self._fields = fields
        self._head = "".join(f"{key}: {value}\r\n" for key, value in fields.items()).encode("latin-1")
        self._trace = trace
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []
        self._max_idle = max_idle
        self._closed = False

    async def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        """Send `method prefix/path` and return the whole reply, whatever its status."""
        # A GET without a body has no Content-Length (RFC 9110, 8.6); a POST always has one.
        length = b"" if method == "GET" and not body else b"Content-Length: %d\r\n" % len(body or b"")
        data = b"%s %s%s HTTP/1.1\r\n%s%s\r\n%s" % (
            method.encode(), self._target.encode(), path.encode(), self._head, length, body or b"",
        )
        if self._trace is not None:
            self._trace.started(method, self._target + path, {k.lower(): v for k, v in self._fields.items()})
        try:
            connection = self._take() or await self._connect()
            reply = await connection.exchange(data, self.timeout)
        except BaseException:
            if self._trace is not None:
                self._trace.ended(None)
            raise
        if connection.reusable() and len(self._idle) < self._max_idle and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        if self._trace is not None:
            self._trace.ended(reply.status)
        return reply

    def close(self) -> None:
        """Close the idle connections now, and those in use as their exchanges end."""
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    def _take(self) -> _Connection | None:
        oldest = time.monotonic() - KEEPALIVE
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable() and connection.idle_since > oldest:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        """A new connection; its failures are CannotConnect: the request was not sent."""
        if self._proxy_problem is not None:
            raise CannotConnect(self._proxy_problem)
        host, port = self._peer
        try:
            return await self._open()
        except TimeoutError:
            raise CannotConnect(f"no connection to {host}:{port} within {self.timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise CannotConnect(f"the certificate of {self.host} is not trusted: {exc.verify_message}") from None
        except (OSError, ssl.SSLError) as exc:
            raise CannotConnect(f"cannot connect to {host}:{port}: {exc.strerror or type(exc).__name__}") from None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self.tls and self._proxy is None
        connection = _Connection(loop)
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_connection(
                    lambda: connection, *self._peer, ssl=self._context() if tls else None,
                    server_hostname=self.host if tls else None, happy_eyeballs_delay=HAPPY_EYEBALLS,
                )
                if self._proxy is not None and self.tls:
                    await self._tunnel(loop, connection)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, connection: _Connection) -> None:
        """CONNECT through the proxy, then TLS to the origin inside the tunnel."""
        assert self._proxy is not None
        fields = {"Host": self._tunnel_to, **_proxy_credentials(self._proxy)}
        head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        status = await connection.tunnel(f"CONNECT {self._tunnel_to} HTTP/1.1\r\n{head}\r\n".encode("latin-1"))
        if not 200 <= status < 300:
            raise CannotConnect(f"the proxy {self._proxy.hostname} refused to connect to {self._tunnel_to}: HTTP {status}")
        transport = await loop.start_tls(
            connection.transport, connection, self._context(), server_hostname=self.host
        )
        if transport is None:
            raise CannotConnect(f"the proxy {self._proxy.hostname} closed the tunnel to {self._tunnel_to}")
        connection.transport = transport

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:  # made once: loading the trust store costs milliseconds
            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl


def _proxy_problem(proxy: urllib.parse.SplitResult | None) -> str | None:
    """Why this proxy URL cannot be used, without its credentials; None when it can."""
    if proxy is None:
        return None
    shown = f"{proxy.scheme}://{proxy.hostname or ''}"
    if proxy.scheme != "http":
        return (
            f"the proxy {shown} is not an http:// URL: tether speaks to proxies in plain HTTP (CONNECT "
            "keeps the API's TLS end to end); set HTTPS_PROXY=http://HOST:PORT"
        )
    try:
        proxy.port  # parsed on access: raises on a port that is not a number
    except ValueError:
        return f"the proxy URL {shown}:… has a port that is not a number; set HTTPS_PROXY=http://HOST:PORT"
    if not proxy.hostname:
        return "the proxy URL names no host; set HTTPS_PROXY=http://HOST:PORT"
    return None


def _proxy_credentials(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    user = urllib.parse.unquote(proxy.username)
    password = urllib.parse.unquote(proxy.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {token}"}


class _Connection(asyncio.Protocol):
    """One connection: one exchange at a time, its reply parsed as the bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reply: asyncio.Future[Reply] | None = None
        self._tunnel: asyncio.Future[int] | None = None
        self._tunnel_head = b""
        self._closed = False
        self._keep_alive = False
        self._timeout = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._status = 0
        self._reason = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False

    def reusable(self) -> bool:
        return not self._closed and self._keep_alive and self._reply is None

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    async def tunnel(self, request: bytes) -> int:
        """Send CONNECT; returns the proxy's status once its head has arrived."""
        assert self.transport is not None
        self._tunnel = self._loop.create_future()
        self.transport.write(request)
        try:
            return await self._tunnel
        finally:
            self._tunnel = None

    async def exchange(self, data: bytes, timeout: float) -> Reply:
        assert self.transport is not None
        if self._closed:  # closed by the server since it was opened or last used
            raise CannotConnect("the connection was closed before the request could be sent")
        self._reply = reply = self._loop.create_future()
        self._keep_alive = False
        self._timeout = timeout
        self._last_read = self._loop.time()
        self._timer = self._loop.call_at(self._last_read + timeout, self._check_timeout)
        try:
            self.transport.write(data)
            return await reply
        finally:
            self._timer.cancel()
            self._reply = None
            if not reply.done() or reply.cancelled() or reply.exception() is not None:
                self.transport.abort()  # where the exchange stands is unknown: never reuse it
                self._closed = True

    def _check_timeout(self) -> None:
        due = self._last_read + self._timeout
        if self._loop.time() < due:  # bytes came meanwhile: wait from the last of them
            self._timer = self._loop.call_at(due, self._check_timeout)
        else:
            self._fail(ReplyTimeout(f"no reply for {self._timeout:g}s"))

    def _fail(self, exc: WireError) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel_received(data)
            return
        if self._reply is None:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._closed = True
            self._fail(Broken(f"an unreadable reply: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._reply is None or self._reply.done():
            if self._tunnel is not None and not self._tunnel.done():
                self._tunnel.set_exception(CannotConnect("the proxy closed the connection"))
            return
        if self._headers_done and self._read_until_close():
            self._complete()
        else:
            self._fail(Broken("the connection was " + ("reset" if exc else "closed") + " before the reply was complete"))

    def _tunnel_received(self, data: bytes) -> None:
        assert self._tunnel is not None
        if self._tunnel.done():  # answered already; tunnel() is about to return or raise
            return
        self._tunnel_head += data
        end = self._tunnel_head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._tunnel_head) > TUNNEL_HEAD_MAX:
                self._tunnel.set_exception(CannotConnect("the proxy's answer to CONNECT is not HTTP"))
            return
        parts = self._tunnel_head.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._tunnel.set_exception(CannotConnect("the proxy's answer to CONNECT is not HTTP"))
            return
        status = int(parts[1])
        if 200 <= status < 300 and end + 4 != len(self._tunnel_head):  # before our TLS hello?
            self._tunnel.set_exception(CannotConnect("the proxy sent more than an answer to CONNECT"))
            return
        self._tunnel.set_result(status)  # a refusal's body, if any, is not read

    def _read_until_close(self) -> bool:
        return "content-length" not in self._headers and "transfer-encoding" not in self._headers

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._status, self._reason, self._headers, self._body = 0, b"", {}, []
        self._headers_done = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:
            return  # an interim reply (100 Continue, 103 Early Hints): the real one follows
        self._keep_alive = self._parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        if self._reply is None or self._reply.done():
            return
        body = b"".join(self._body)
        encoding = self._headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate") and body:
            try:
                body = zlib.decompress(body, 47)  # 32 + 15: a gzip or zlib header, told apart
            except zlib.error:
                try:
                    body = zlib.decompress(body, -15)  # raw deflate, as some servers send it
                except zlib.error as exc:
                    self._fail(Broken(f"an unreadable {encoding} body: {exc}"))
                    return
        elif encoding != "identity":
            self._fail(Broken(f"a body in an encoding not asked for: {encoding}"))
            return
        self._reply.set_result(Reply(self._status, self._reason.decode("latin-1"), self._headers, body))
