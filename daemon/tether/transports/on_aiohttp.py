"""httpx2 on aiohttp's transport (httpx-aiohttp), for the daemon: see tether/transports/__init__.py."""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx2
from httpx_aiohttp.httpx2 import AiohttpTransport

from tether.transports import Failure, Transport, delivered


class OneAttemptTransport(AiohttpTransport):
    """aiohttp re-sends a GET whose kept-alive connection closed under it; here only the
    retry policy re-sends, so one attempt is one request."""

    def get_client(self) -> aiohttp.ClientSession:
        session = super().get_client()
        session._retry_connection = False
        return session


class HttpClient(httpx2.AsyncClient):
    """httpx2 on aiohttp (as httpx-aiohttp's Httpx2AiohttpClient), proxied or not."""

    # httpx2 calls these two with keyword arguments only, all passed through here.
    def _init_transport(self, transport: Any = None, **options: Any) -> httpx2.AsyncBaseTransport:  # type: ignore[override]
        return transport or OneAttemptTransport(**options)

    def _init_proxy_transport(self, proxy: httpx2.Proxy, **options: Any) -> httpx2.AsyncBaseTransport:  # type: ignore[override]
        return OneAttemptTransport(proxy=proxy, **options)


def failure(exc: BaseException) -> Failure:
    """httpx-aiohttp maps nearly every aiohttp connection error, a drop after sending included,
    to httpx2.ConnectTimeout: the aiohttp error it came from (its cause) tells what happened."""
    cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        reason = getattr(cause.certificate_error, "verify_message", None) or str(cause.certificate_error)
        return Failure(False, "", f"the certificate of {cause.host} is not trusted: {reason}")
    if isinstance(cause, aiohttp.ClientHttpProxyError):
        return Failure(False, "", f"the proxy refused to connect: HTTP {cause.status} {cause.message}")
    if isinstance(cause, aiohttp.InvalidURL):  # raised for a proxy URL with no host
        return Failure(False, "", "the proxy URL in the environment names no host; set HTTPS_PROXY=http://HOST:PORT")
    if isinstance(cause, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return Failure(False, "", str(cause))  # refused, DNS, unreachable, a proxy that cannot be reached
    return delivered(cause or exc)


TRANSPORT = Transport(HttpClient, (httpx2.RequestError, aiohttp.ClientError), failure)
