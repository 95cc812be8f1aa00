"""A small HTTP/1.1 server on asyncio streams and httptools (llhttp, the parser of Node.js).

Just what the fake needs: many keep-alive connections, replies with a body, and dropping a
connection without answering, which an ASGI app cannot ask of its server. The requests are
parsed by httptools; the replies, a status line, a few headers and a body of known length, are
written here.
"""

from __future__ import annotations

import asyncio
import http
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

READ_SIZE = 65536
log = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # names in lower case
    body: bytes
    client_gone: Callable[[], Awaitable[None]]  # returns once the client closes the connection
    keep_alive: bool = True


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


DROP = Reply(0, b"")  # close the connection without answering

Handler = Callable[[Request], Awaitable[Reply]]


async def serve(
    sock: socket.socket, handler: Handler, until: asyncio.Event, tls: ssl.SSLContext | None = None
) -> None:
    """Serve connections on the listening `sock` (over TLS with `tls`) until `until` is set,
    then close them all."""
    connections: set[asyncio.Task] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await _Connection(reader, writer, handler).serve()
        except asyncio.CancelledError:
            pass  # the server is stopping (below); asyncio would print the cancellation as an error
        except Exception:
            log.exception("the fake API failed on a request; its connection is closed")
        finally:
            connections.discard(task)

    server = await asyncio.start_server(connected, sock=sock, ssl=tls)
    try:
        await until.wait()
    finally:
        server.close()
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections)
        await server.wait_closed()


class _Connection:
    """One client connection: requests are parsed as their bytes arrive (several at once when
    the client pipelines them) and answered in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[Request] = deque()
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    async def serve(self) -> None:
        try:
            while (request := await self._next_request()) is not None:
                reply = await self.handler(request)
                if reply is DROP:
                    return
                await self._send(reply, request.keep_alive)
                if not request.keep_alive:
                    return
        except (ConnectionError, httptools.HttpParserError):
            return  # the client went away or spoke bad HTTP: nothing to answer
        finally:
            self.writer.close()

    async def _next_request(self) -> Request | None:
        while not self.ready:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return None  # the client closed the connection
            self.parser.feed_data(data)
        return self.ready.popleft()

    async def _client_gone(self) -> None:
        while data := await self.reader.read(READ_SIZE):
            self.parser.feed_data(data)  # a pipelined request: kept for after this one

    async def _send(self, reply: Reply, keep_alive: bool) -> None:
        head = [
            f"HTTP/1.1 {reply.status} {http.HTTPStatus(reply.status).phrase}",
            f"content-type: {reply.content_type}",
            f"content-length: {len(reply.body)}",
            *(f"{name}: {value}" for name, value in reply.headers.items()),
        ]
        if not keep_alive:
            head.append("connection: close")
        self.writer.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + reply.body)
        await self.writer.drain()

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.ready.append(
            Request(
                method=self.parser.get_method().decode(),
                path=self._path(),
                headers=self._headers,
                body=bytes(self._body),
                client_gone=self._client_gone,
                keep_alive=self.parser.should_keep_alive(),
            )
        )

    def _path(self) -> str:
        if not self._url.startswith(b"/"):  # absolute-form, as sent through a proxy (RFC 9112, 3.2.2)
            return (httptools.parse_url(self._url).path or b"/").decode("latin-1")
        return self._url.decode("latin-1").partition("?")[0]
