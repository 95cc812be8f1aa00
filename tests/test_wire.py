"""tether's HTTP/1.1 client (`tether.wire`) against real servers on loopback.

Two kinds of server: scripted ones (`Scripted`: each connection gets the bytes a test writes,
to reach what the stand-in never sends: chunked or gzip bodies, interim replies, silence,
garbage), and the stand-in itself, over TLS with a CA made for the test (trustme) and behind a
forwarding proxy written here (`Proxy`: CONNECT tunnels and absolute-form requests).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trustme

from conftest import API_KEY, https_stand_in
from tether import wire
from tether.fakeapi import FakeServer

REFUSED = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
RUNNING = {"model": "o3-pro", "input": "x", "background": True, "metadata": {"fake_run": "60"}}
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A server on a local port whose every connection runs the script `make(server)` returns;
    it keeps the request heads the script read (`read_head`) and counts connections."""

    def __init__(self, make: Callable[[Scripted], Script]) -> None:
        self.script = make(self)
        self.connections = 0
        self.heads: list[bytes] = []
        self.closed = asyncio.Event()  # set when a connection's script has ended
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.closed.set()

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks)


def replying(*replies: bytes) -> Callable[[Scripted], Script]:
    """A script that answers each request on a connection with the next of `replies` (the last
    one again when they run out) and leaves the connection open, unless the reply closes it."""

    def script(server: Scripted) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for turn in range(1000):
                await server.read_head(reader)
                writer.write(replies[min(turn, len(replies) - 1)])
                await writer.drain()

        return run

    return script


def answering_once(*chunks: bytes, gap: float = 0.0) -> Callable[[Scripted], Script]:
    """A script that answers one request with `chunks`, written one after another (`gap`
    seconds apart, so that they arrive as separate reads), and then closes the connection."""

    def script(server: Scripted) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_head(reader)
            for n, chunk in enumerate(chunks):
                if n and gap:
                    await asyncio.sleep(gap)  # traffic shaping, not a wait for a condition
                writer.write(chunk)
                await writer.drain()

        return run

    return script


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.005)


async def in_flight(origin: wire.Origin, server: Scripted) -> asyncio.Task[wire.Reply]:
    """A GET started and read by the server, whose reply is still to come."""
    task = asyncio.create_task(origin.request("GET", "x"))
    await eventually(lambda: len(server.heads) == 1)
    return task


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


@pytest.fixture
async def origin_to() -> AsyncIterator[Callable[..., wire.Origin]]:
    made: list[wire.Origin] = []

    def make(url: str, **options: object) -> wire.Origin:
        origin = wire.Origin(url, AUTH, **{"timeout": 5.0, **options})  # type: ignore[arg-type]
        made.append(origin)
        return origin

    yield make
    for origin in made:
        origin.close()


# --- replies -----------------------------------------------------------------------------------


async def test_kept_alive_connections_are_reused(origin_to) -> None:
    async with Scripted(replying(ok(b'{"n": 1}'))) as server:
        origin = origin_to(server.url)
        replies = [await origin.request("GET", "responses/resp_1") for _ in range(5)]
    assert [r.body for r in replies] == [b'{"n": 1}'] * 5
    assert replies[0].status == 200 and replies[0].reason == "OK"
    assert server.connections == 1


async def test_a_reply_that_closes_the_connection_is_not_reused(origin_to) -> None:
    async with Scripted(replying(ok(b"{}", "Connection: close"))) as server:
        origin = origin_to(server.url)
        for _ in range(3):
            assert (await origin.request("GET", "responses/resp_1")).body == b"{}"
    assert server.connections == 3


async def test_a_chunked_reply_is_read_whole(origin_to) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with Scripted(replying(chunked)) as server:
        origin = origin_to(server.url)
        bodies = [(await origin.request("GET", "x")).body for _ in range(2)]
    assert bodies == [b"hello world"] * 2
    assert server.connections == 1


async def test_a_reply_without_a_length_is_read_until_the_server_closes(origin_to) -> None:
    script = answering_once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", b'{"status": "completed"}')
    async with Scripted(script) as server:
        origin = origin_to(server.url)
        first = await origin.request("GET", "x")
        second = await origin.request("GET", "x")
    assert first.body == second.body == b'{"status": "completed"}'
    assert server.connections == 2


SPLIT_REPLY = ok(b'{"status": "completed"}', "Content-Type: application/json", "X-Request-Id: req_1")


@pytest.mark.parametrize("at", [1, 9, 12, 14, 17, 30, 31, 50, 62, 75, len(SPLIT_REPLY) - 4, len(SPLIT_REPLY) - 1])
async def test_a_reply_split_anywhere_across_reads_is_read_the_same(origin_to, at: int) -> None:
    # Within the status line, a header's name or value, between \r and \n, in the body.
    async with Scripted(answering_once(SPLIT_REPLY[:at], SPLIT_REPLY[at:], gap=0.02)) as server:
        reply = await origin_to(server.url).request("GET", "x")
    assert (reply.status, reply.reason, reply.headers["x-request-id"]) == (200, "OK", "req_1")
    assert reply.body == b'{"status": "completed"}'


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_is_decoded(origin_to, encoding: str) -> None:
    body = b'{"status": "in_progress"}' * 20
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    async with Scripted(replying(ok(packed, f"Content-Encoding: {encoding}"))) as server:
        reply = await origin_to(server.url).request("GET", "x")
    assert reply.body == body
    assert b"accept-encoding: gzip, deflate" in server.heads[0].lower()


async def test_a_body_in_an_encoding_not_asked_for_is_an_error(origin_to) -> None:
    async with Scripted(replying(ok(b"\x00\x01", "Content-Encoding: br"))) as server:
        with pytest.raises(wire.Broken, match="br"):
            await origin_to(server.url).request("GET", "x")


async def test_an_interim_reply_is_skipped(origin_to) -> None:
    async with Scripted(replying(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"{}"))) as server:
        reply = await origin_to(server.url).request("POST", "responses/resp_1/cancel")
    assert (reply.status, reply.body) == (200, b"{}")


async def test_error_statuses_are_replies_with_their_headers(origin_to) -> None:
    busy = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n{}"
    async with Scripted(replying(busy)) as server:
        reply = await origin_to(server.url).request("GET", "x")
    assert (reply.status, reply.reason, reply.headers["retry-after"]) == (429, "Too Many Requests", "3")


# --- what is sent ------------------------------------------------------------------------------


async def test_the_request_line_headers_and_length_are_as_http_asks(origin_to) -> None:
    async with Scripted(replying(ok(b"{}"))) as server:
        origin = origin_to(server.url, user_agent="tether/9")
        await origin.request("GET", "responses/resp_1")
        await origin.request("POST", "responses/resp_1/cancel")
        await origin.request("POST", "responses", b'{"a": 1}')
    get, cancel, create = (head.decode().lower() for head in server.heads)
    port = server.port
    assert get.startswith("get /v1/responses/resp_1 http/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n" in get and "user-agent: tether/9\r\n" in get
    assert f"authorization: bearer {API_KEY.lower()}\r\n" in get
    assert "content-length" not in get  # a GET without a body has none (RFC 9110, 8.6)
    assert cancel.startswith("post /v1/responses/resp_1/cancel ") and "content-length: 0\r\n" in cancel
    assert create.startswith("post /v1/responses ") and "content-length: 8\r\n" in create


async def test_a_post_body_reaches_the_stand_in(origin_to, fake: FakeServer) -> None:
    reply = await origin_to(fake.base_url).request("POST", "responses", json.dumps(RUNNING).encode())
    assert reply.status == 200
    rid = json.loads(reply.body)["id"]
    assert fake.state.snapshot()["responses"][rid]["status"] in ("queued", "in_progress")


# --- failures ----------------------------------------------------------------------------------


async def test_a_refused_connection_is_cannot_connect_and_not_sent(origin_to, unused_tcp_port: int) -> None:
    with pytest.raises(wire.CannotConnect) as caught:
        await origin_to(f"http://127.0.0.1:{unused_tcp_port}/v1").request("GET", "x")
    assert caught.value.sent is False
    assert f"127.0.0.1:{unused_tcp_port}" in str(caught.value)


async def test_a_reply_that_never_comes_times_out_and_its_connection_is_dropped(origin_to) -> None:
    silent_once = {"done": False}

    def script(server: Scripted) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_head(reader)
            if not silent_once["done"]:
                silent_once["done"] = True
                await reader.read()  # say nothing; returns when the client gives up
                return
            writer.write(ok(b"{}"))
            await writer.drain()

        return run

    async with Scripted(script) as server:
        origin = origin_to(server.url, timeout=0.2)
        started = asyncio.get_running_loop().time()
        with pytest.raises(wire.ReplyTimeout) as caught:
            await origin.request("GET", "x")
        waited = asyncio.get_running_loop().time() - started
        assert caught.value.sent is True
        assert 0.2 <= waited < 2.0
        assert (await origin.request("GET", "x")).body == b"{}"
    assert server.connections == 2


async def test_a_reply_that_keeps_trickling_in_is_not_timed_out(origin_to) -> None:
    # The timeout is on each wait for bytes (as aiohttp's sock_read was), not on the whole reply.
    def script(server: Scripted) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
            for byte in b'{"a": 1}':
                await asyncio.sleep(0.1)
                writer.write(bytes([byte]))
                await writer.drain()

        return run

    async with Scripted(script) as server:
        reply = await origin_to(server.url, timeout=0.4).request("GET", "x")
    assert reply.body == b'{"a": 1}'


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"cut\": "],
    ids=["not http", "cut short"],
)
async def test_garbage_or_a_reply_cut_short_is_broken_and_sent(origin_to, reply: bytes) -> None:
    async with Scripted(answering_once(reply)) as server:
        with pytest.raises(wire.Broken) as caught:
            await origin_to(server.url).request("GET", "x")
    assert caught.value.sent is True


async def test_an_idle_connection_the_server_closed_is_not_used(origin_to) -> None:
    async with Scripted(answering_once(ok(b"{}"))) as server:  # kept alive, then closed while idle
        origin = origin_to(server.url)
        await origin.request("GET", "x")
        await server.closed.wait()
        await eventually(lambda: not any(c.reusable() for c in origin._idle))
        assert (await origin.request("GET", "x")).body == b"{}"
    assert server.connections == 2


async def test_a_connection_idle_longer_than_keepalive_is_not_reused(origin_to, monkeypatch) -> None:
    monkeypatch.setattr(wire, "KEEPALIVE", 0.05)
    async with Scripted(replying(ok(b"{}"))) as server:
        origin = origin_to(server.url)
        await origin.request("GET", "x")
        idle_since = origin._idle[-1].idle_since
        await eventually(lambda: time.monotonic() > idle_since + 0.05)
        await origin.request("GET", "x")
    assert server.connections == 2


async def test_a_cancelled_request_closes_its_connection(origin_to) -> None:
    def script(server: Scripted) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_head(reader)
            if server.connections == 1:
                await reader.read()  # the client must hang up
                return
            writer.write(ok(b"{}"))
            await writer.drain()

        return run

    async with Scripted(script) as server:
        origin = origin_to(server.url)
        task = await in_flight(origin, server)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 5)  # the server saw the client hang up
        assert (await origin.request("GET", "x")).body == b"{}"
    assert server.connections == 2


# --- TLS and proxies ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def trust_only(ca: trustme.CA, pem: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ca` is the only CA trusted, through OpenSSL's SSL_CERT_FILE, as an operator with a
    private CA would set it."""
    ca.cert_pem.write_to_path(str(pem))
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture
def trusted(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trust_only(ca, tmp_path / "ca.pem", monkeypatch)


@pytest.fixture
def https_fake(ca: trustme.CA) -> Iterator[FakeServer]:
    with https_stand_in(ca) as server:
        yield server


async def test_https_to_a_server_whose_ca_is_trusted(origin_to, https_fake: FakeServer, trusted: None) -> None:
    assert https_fake.base_url.startswith("https://")
    origin = origin_to(https_fake.base_url)
    created = await origin.request("POST", "responses", json.dumps(RUNNING).encode())
    rid = json.loads(created.body)["id"]
    replies = [await origin.request("GET", f"responses/{rid}") for _ in range(3)]
    assert [r.status for r in replies] == [200] * 3
    assert https_fake.state.snapshot()["requests"]["get"] == 3


async def test_https_to_a_server_whose_ca_is_not_trusted_is_refused(
    origin_to, https_fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust_only(trustme.CA(), tmp_path / "other-ca.pem", monkeypatch)
    with pytest.raises(wire.CannotConnect, match="not trusted"):
        await origin_to(https_fake.base_url).request("GET", "responses/resp_x")
    assert https_fake.state.snapshot()["requests"].get("get", 0) == 0


class Proxy:
    """A forwarding proxy: CONNECT opens a tunnel; a request in absolute-form is passed on, with
    the rest of its connection, to the host it names. Keeps the first head of each connection;
    with `refuse`, answers that to everything."""

    def __init__(self, refuse: bytes = b"") -> None:
        self.refuse = refuse
        self.heads: list[str] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head.decode("latin-1"))
            method, target, _ = head.split(b"\r\n")[0].decode().split(" ")
            if self.refuse:
                writer.write(self.refuse)
                await writer.drain()
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urllib.parse.urlsplit(target)
                up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
                up_writer.write(head)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, credentials: str = "") -> str:
        assert self.server is not None
        return f"http://{credentials}127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def test_https_through_a_proxy_tunnels_with_connect(origin_to, https_fake: FakeServer, trusted: None) -> None:
    async with Proxy() as proxy:
        origin = origin_to(https_fake.base_url, proxy=proxy.url("ops%40corp:s%3Acret@"))
        replies = [await origin.request("GET", "responses/resp_missing") for _ in range(2)]
    assert [r.status for r in replies] == [404, 404]  # the stand-in answered, through the tunnel
    assert len(proxy.heads) == 1  # one tunnel, kept alive
    host = https_fake.base_url.split("/")[2]
    assert proxy.heads[0].startswith(f"CONNECT {host} HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic b3BzQGNvcnA6czpjcmV0\r\n" in proxy.heads[0]  # ops@corp:s:cret
    assert API_KEY not in proxy.heads[0]  # the key travels only inside the tunnel


async def test_http_through_a_proxy_sends_the_absolute_url(origin_to, fake: FakeServer) -> None:
    async with Proxy() as proxy:
        origin = origin_to(fake.base_url, proxy=proxy.url("ops:pw@"))
        reply = await origin.request("GET", "responses/resp_missing")
    assert reply.status == 404
    assert proxy.heads[0].startswith(f"GET {fake.base_url}/responses/resp_missing HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic b3BzOnB3\r\n" in proxy.heads[0]
    assert fake.state.snapshot()["requests"]["get"] == 1


async def test_a_proxy_that_refuses_the_tunnel_is_cannot_connect(
    origin_to, https_fake: FakeServer, trusted: None
) -> None:
    async with Proxy(refuse=REFUSED) as proxy:
        with pytest.raises(wire.CannotConnect, match="407") as caught:
            await origin_to(https_fake.base_url, proxy=proxy.url()).request("GET", "responses/resp_x")
    assert caught.value.sent is False
    assert https_fake.state.snapshot()["requests"].get("get", 0) == 0


async def test_connect_names_the_default_port(origin_to) -> None:
    # The proxy refuses, so nothing beyond it is needed: what matters is the CONNECT line.
    async with Proxy(refuse=REFUSED) as proxy:
        with pytest.raises(wire.CannotConnect):
            await origin_to("https://api.openai.com/v1", proxy=proxy.url()).request("GET", "responses/resp_x")
    assert proxy.heads[0].startswith("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n")


async def test_a_connection_in_use_when_the_origin_closes_is_closed_after_its_reply(origin_to) -> None:
    answer = asyncio.Event()

    def script(server: Scripted) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_head(reader)
            await answer.wait()
            writer.write(ok(b"{}"))
            await writer.drain()
            await reader.read()  # until the client hangs up

        return run

    async with Scripted(script) as server:
        origin = origin_to(server.url)
        task = await in_flight(origin, server)
        origin.close()
        answer.set()
        assert (await task).body == b"{}"
        await asyncio.wait_for(server.closed.wait(), 5)


async def test_a_refusal_with_a_body_is_still_a_refusal(origin_to, https_fake: FakeServer, trusted: None) -> None:
    page = b"<html>Access denied by policy</html>"
    refusal = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page)
    async with Proxy(refuse=refusal) as proxy:
        with pytest.raises(wire.CannotConnect, match="refused to connect to .*: HTTP 403"):
            await origin_to(https_fake.base_url, proxy=proxy.url()).request("GET", "responses/resp_x")


async def test_a_proxy_url_without_a_scheme_is_taken_as_http(origin_to, https_fake: FakeServer, trusted: None) -> None:
    async with Proxy() as proxy:
        origin = origin_to(https_fake.base_url, proxy=proxy.url().removeprefix("http://"))
        assert (await origin.request("GET", "responses/resp_missing")).status == 404
    assert proxy.heads[0].startswith("CONNECT ")


@pytest.mark.parametrize(
    "proxy, problem",
    [
        ("https://ops:s3cret@proxy.corp:443", "not an http:// URL"),
        ("http://ops:s3cret@proxy.corp:31x8", "port that is not a number"),
        ("http://ops:s3cret@:3128", "names no host"),
    ],
    ids=["tls to the proxy", "bad port", "no host"],
)
async def test_a_proxy_url_that_cannot_be_used_fails_each_request_with_what_to_do(
    origin_to, https_fake: FakeServer, proxy: str, problem: str
) -> None:
    origin = origin_to(https_fake.base_url, proxy=proxy)
    with pytest.raises(wire.CannotConnect, match="set HTTPS_PROXY=http://HOST:PORT") as caught:
        await origin.request("GET", "responses/resp_x")
    assert problem in str(caught.value) and "s3cret" not in str(caught.value)
