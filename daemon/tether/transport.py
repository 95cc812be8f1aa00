"""An httpx transport that sends requests with aiohttp.

Why: with httpx's own transport, the saturated daemon spent most of its CPU in httpcore's
connection pool (it checks every idle connection on every request), not in tether; aiohttp's
pool costs a fraction of that (docs/benchmarks.md). The rest of tether keeps the httpx API:
`ResponsesClient` builds an `httpx.AsyncClient` on this transport, and its error handling sees
httpx exceptions with the meaning httpx gives them. Bodies here are small JSON documents, so a
response is read whole, never streamed.
"""

from __future__ import annotations

import asyncio
import urllib.request

import aiohttp
import httpx


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created on first use: a session belongs to the running event loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                auto_decompress=False,  # httpx decodes the body, as with its own transport
                skip_auto_headers=("User-Agent", "Accept-Encoding"),  # httpx sets its own
            )
            # aiohttp quietly sends an idempotent request again when a kept-alive connection
            # turns out closed. tether counts and logs its own attempts (RetryPolicy): one
            # attempt must be one request.
            self._session._retry_connection = False
        return self._session

    def _proxy(self, url: httpx.URL) -> str | None:
        """HTTP(S)_PROXY / NO_PROXY as httpx honours them, looked up once per host (aiohttp's
        own `trust_env` reads the environment and ~/.netrc again on every request)."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            bypass = urllib.request.proxy_bypass(url.host)
            self._proxies[key] = None if bypass else urllib.request.getproxies().get(url.scheme)
        return self._proxies[key]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        try:
            async with self._open().request(
                request.method,
                str(request.url),
                proxy=self._proxy(request.url),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            ) as reply:
                content = await reply.read()
                return httpx.Response(
                    reply.status,
                    headers=[(k, v) for k, v in reply.raw_headers],
                    content=content,
                    request=request,
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:  # never reached the server
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (aiohttp.SocketTimeoutError, asyncio.TimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError) as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(str(exc), request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
