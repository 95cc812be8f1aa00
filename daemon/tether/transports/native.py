"""httpx2's own transport, for a CLI command: see tether/transports/__init__.py."""

from __future__ import annotations

import ssl
import urllib.request
from typing import Any, TypeVar

import httpx2

from tether.transports import Failure, Transport, delivered

E = TypeVar("E", bound=BaseException)


def client(**options: Any) -> httpx2.AsyncClient:
    """httpx2 would look up a proxy URL with no host as a host named ""; refused here as aiohttp
    refuses it, so the request fails saying what to set."""
    if options.get("trust_env", True):
        for scheme, url in urllib.request.getproxies().items():
            if scheme != "no" and "://" in url and not httpx2.URL(url).host:
                raise httpx2.InvalidURL("a proxy URL names no host")
    return httpx2.AsyncClient(**options)


def failure(exc: BaseException) -> Failure:
    """httpx2 raises ConnectError, ConnectTimeout and ProxyError only before a request is sent."""
    if isinstance(exc, httpx2.ProxyError):
        return Failure(False, "", f"the proxy refused to connect: HTTP {exc}")
    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
        untrusted = cause_of_type(exc, ssl.SSLCertVerificationError)
        if untrusted is not None:
            host = exc.request.url.host
            return Failure(False, "", f"the certificate of {host} is not trusted: {untrusted.verify_message}")
        return Failure(False, "", str(exc) or type(exc).__name__)
    return delivered(exc)


def cause_of_type(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of `kind` behind exc: httpx2's wraps httpcore2's, raised while
    handling the one from the OS or the ssl module."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, kind):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


TRANSPORT = Transport(client, (httpx2.RequestError,), failure)
