"""What tether's API client takes from the environment, against real servers on loopback: the
CA to trust (SSL_CERT_FILE, with the stand-in serving HTTPS under a CA made for the test by
trustme) and the proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, through `Proxy`, a forwarding proxy
written here: CONNECT tunnels and absolute-form requests)."""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trustme

from conftest import API_KEY, https_stand_in
from tether.api import APIError, NotFound, ResponsesClient, RetryPolicy, TransientError
from tether.config import AccountConfig
from tether.fakeapi import FakeServer

RUNNING = {"model": "o3-pro", "input": "x", "background": True, "metadata": {"fake_run": "60"}}
PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def no_proxy_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=[False, True], ids=["aiohttp", "native"])
async def client_to(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str], ResponsesClient]]:
    """A client made after the test has set the environment: it is read when a client is made.
    On each transport: the daemon's (aiohttp) and a CLI command's (httpx2's own)."""
    clients: list[ResponsesClient] = []

    def make(url: str) -> ResponsesClient:
        config = AccountConfig(name="default", base_url=url, request_timeout=5.0)
        retry = RetryPolicy(attempts=2, base=0.01, cap=0.02)
        clients.append(ResponsesClient(config, API_KEY, retry=retry, rng=random.Random(7), brief=request.param))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def failure(call) -> APIError:
    try:
        await call
    except APIError as exc:
        return exc
    raise AssertionError("expected an APIError")


def gets(fake: FakeServer) -> int:
    return fake.state.snapshot()["requests"].get("get", 0)


@pytest.fixture
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


# --- trust -------------------------------------------------------------------------------------


async def test_https_to_a_server_whose_ca_is_named_by_ssl_cert_file(
    client_to, https_fake: FakeServer, trusted: None
) -> None:
    assert https_fake.base_url.startswith("https://")
    client = client_to(https_fake.base_url)
    created = await client.create(RUNNING)
    replies = [await client.get(created["id"]) for _ in range(3)]
    assert [r["id"] for r in replies] == [created["id"]] * 3
    assert gets(https_fake) == 3


async def test_https_to_a_server_whose_ca_is_not_trusted_is_refused_naming_the_host(
    client_to, https_fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust_only(trustme.CA(), tmp_path / "other-ca.pem", monkeypatch)
    exc = await failure(client_to(https_fake.base_url).get("resp_x"))
    assert type(exc) is TransientError and not exc.delivered
    assert "the certificate of 127.0.0.1 is not trusted" in str(exc)
    assert gets(https_fake) == 0


# --- proxies -----------------------------------------------------------------------------------


class Proxy:
    """A forwarding proxy: CONNECT opens a tunnel; a request in absolute-form is passed on, with
    the rest of its connection, to the host it names. Keeps the first head of each connection;
    with `refuse`, answers that to everything."""

    def __init__(self, refuse: bytes = b"") -> None:
        self.refuse = refuse
        self.heads: list[str] = []

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
        self.server.close()

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def test_https_through_https_proxy_tunnels_with_connect(
    client_to, https_fake: FakeServer, trusted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url("ops%40corp:s%3Acret@"))
        client = client_to(https_fake.base_url)
        for _ in range(2):
            assert type(await failure(client.get("resp_missing"))) is NotFound  # the stand-in answered
    assert len(proxy.heads) == 1  # one tunnel, kept alive
    host = https_fake.base_url.split("/")[2]
    assert proxy.heads[0].startswith(f"CONNECT {host} HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic b3BzQGNvcnA6czpjcmV0\r\n" in proxy.heads[0]  # ops@corp:s:cret
    assert API_KEY not in proxy.heads[0]  # the key travels only inside the tunnel
    assert gets(https_fake) == 2


async def test_http_through_http_proxy_sends_the_absolute_url(
    client_to, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url("ops:pw@"))
        assert type(await failure(client_to(fake.base_url).get("resp_missing"))) is NotFound
    assert proxy.heads[0].startswith(f"GET {fake.base_url}/responses/resp_missing HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic b3BzOnB3\r\n" in proxy.heads[0]
    assert gets(fake) == 1


async def test_a_host_in_no_proxy_is_reached_directly(
    client_to, https_fake: FakeServer, trusted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url())
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        assert type(await failure(client_to(https_fake.base_url).get("resp_missing"))) is NotFound
    assert proxy.heads == []
    assert gets(https_fake) == 1


async def test_a_proxy_that_refuses_the_tunnel_is_not_delivered(
    client_to, https_fake: FakeServer, trusted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy(refuse=b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url())
        exc = await failure(client_to(https_fake.base_url).create(RUNNING))
    assert type(exc) is TransientError and not exc.delivered
    assert "the proxy refused to connect: HTTP 407" in str(exc)
    assert len(proxy.heads) == 2  # a create that provably never left is retried
    assert https_fake.state.snapshot()["requests"].get("create", 0) == 0


@pytest.mark.parametrize(
    "proxy", ["http://ops:s3cret@proxy.corp:31x8", "http://ops:s3cret@:3128"], ids=["bad port", "no host"]
)
async def test_a_proxy_url_that_cannot_be_used_fails_each_request_with_what_to_do(
    client_to, fake: FakeServer, monkeypatch: pytest.MonkeyPatch, proxy: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    exc = await failure(client_to(fake.base_url).get("resp_x"))
    assert type(exc) is TransientError and not exc.delivered
    assert "set HTTPS_PROXY=http://HOST:PORT" in str(exc) and "s3cret" not in str(exc)
    assert gets(fake) == 0
