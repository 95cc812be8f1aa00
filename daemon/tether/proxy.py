"""The OpenAI-compatible proxy: `/v1/...` on the daemon's TCP listener, forwarded to one account.

Applications keep the official SDKs and set `OPENAI_BASE_URL=http://127.0.0.1:8787/v1`. Every
request goes to the configured account's base_url only (never to a URL taken from the request),
unchanged but for hop-by-hop headers, Host, and tether's own `X-Tether-*` headers. Replies come
back byte for byte, streamed as they arrive; ids are never rewritten. Three requests get more:

- `POST /v1/responses` with `"background": true` is tracked before its reply reaches the caller
  (a streamed one as soon as its `response.created` event names it), with the policy named by
  `X-Tether-Policy` (else metadata `tether_policy`, else the rules) and the labels of the
  repeatable `X-Tether-Label: k=v`. A create that a `cancel` budget cannot afford is refused
  with an OpenAI-shaped 429 (`tether_budget_exceeded`) before anything goes upstream.
- `POST /v1/responses/{id}/cancel`, once the upstream took it, is recorded as a manual cancel.

Keys: with `[proxy] key = "client"` the caller's Authorization passes through; with "account"
callers present the server token and tether sends the account's key. No key is logged or echoed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Protocol
from urllib.parse import unquote

import httpx2
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tether.api import CONNECT_TIMEOUT, trust_store
from tether.config import Config
from tether.logs import log
from tether.transports.on_aiohttp import HttpClient

# Hop-by-hop headers (RFC 9110 7.6.1), with those a Connection header names and any Proxy-*;
# Host and Content-Length are the sender's own to set.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
SET_BY_SENDER = frozenset({"host", "content-length"})
FIRST_EVENTS_MAX = 4 * 1024 * 1024  # a stream whose response object is not found in this many bytes goes untracked
POLICY_HEADER = "x-tether-policy"
LABEL_HEADER = "x-tether-label"
CHUNK = 64 * 1024
_CANCEL = re.compile(r"responses/([^/]+)/cancel")


class FrontLike(Protocol):
    """What the proxy needs of the daemon (tether.server.front.Front)."""

    @property
    def config(self) -> Config: ...

    async def track_created(
        self, response: dict[str, Any], *, account: str, policy: str | None, labels: dict[str, str]
    ) -> dict[str, Any]: ...

    async def record_manual_cancel(self, rid: str, answer: dict[str, Any] | None) -> None: ...

    def budget_refusal(
        self,
        *,
        account: str,
        model: str | None,
        metadata: dict[str, str],
        labels: dict[str, str],
        policy: str | None,
        max_output_tokens: int | None,
    ) -> str | None: ...


class Refused(Exception):
    """A request tether answers itself, with an OpenAI-shaped error, before anything goes upstream."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_

    def reply(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}
        return web.json_response(body, status=self.status)


def routes(front: FrontLike, config: Config, *, token: str | None = None) -> list[web.RouteDef]:
    """The proxy's routes (see `Proxy`); an app that stops should `close()` the Proxy instead."""
    return Proxy(front, config, token).routes()


class Proxy:
    """`token` is the server token callers present when `[proxy] key` is "account"; the
    account's key is then read here, once."""

    def __init__(self, front: FrontLike, config: Config, token: str | None) -> None:
        settings = config.proxy
        self.front = front
        self.account = config.accounts[settings.account]
        self.max_body = settings.max_body
        self.base = httpx2.URL(self.account.base_url.rstrip("/") + "/")
        self.token = token
        self.upstream_auth: dict[str, str] | None = None
        if settings.key == "account":
            if not token:
                raise ValueError('[proxy] key = "account" needs a server token')
            self.upstream_auth = {"Authorization": f"Bearer {self.account.read_api_key()}"}
            if self.account.organization:
                self.upstream_auth["OpenAI-Organization"] = self.account.organization
            if self.account.project:
                self.upstream_auth["OpenAI-Project"] = self.account.project
        # A reply may take minutes to start (a synchronous create): only connecting is timed.
        # No cookie jar: a cookie the upstream sets for one caller must never go out with another's request.
        self.http = HttpClient(
            timeout=httpx2.Timeout(None, connect=CONNECT_TIMEOUT),
            verify=trust_store(),
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/v1/{tail:.*}", self.handle)]

    async def close(self) -> None:
        await self.http.aclose()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except Refused as refusal:
            return refusal.reply()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request.headers)
        tail = request.rel_url.raw_path.removeprefix("/v1/")
        url = self._upstream_url(tail, request.rel_url.raw_query_string)
        headers = self._upstream_headers(request.headers)
        if request.content_length is not None and request.content_length > self.max_body:
            raise _too_large(self.max_body)
        if request.method == "POST" and tail.rstrip("/") == "responses":
            return await self._create(request, url, headers)
        if request.method == "POST" and (cancel := _CANCEL.fullmatch(tail.rstrip("/"))):
            return await self._cancel(request, url, headers, unquote(cancel[1]))
        body = LimitedBody(request, self.max_body) if request.body_exists else None
        upstream = await self._send(request.method, url, headers, body)
        return await _relay(request, upstream)

    def _authorize(self, headers: Mapping[str, str]) -> None:
        if self.upstream_auth is None:
            return
        presented = headers.get("authorization", "").encode()
        if not hmac.compare_digest(presented, f"Bearer {self.token}".encode()):
            raise Refused(
                401, "tether's proxy needs the server token: Authorization: Bearer <token>.", "invalid_api_key"
            )

    def _upstream_url(self, tail: str, query: str) -> httpx2.URL:
        """The account's base_url + the request's path tail and query; nothing can leave it."""
        if any(unquote(segment) in (".", "..") for segment in tail.split("/")):
            raise Refused(400, "Path segments . and .. are not forwarded.", "invalid_path")
        url = httpx2.URL(str(self.base) + tail + (f"?{query}" if query else ""))
        if (url.scheme, url.host, url.port) != (self.base.scheme, self.base.host, self.base.port):
            raise Refused(400, "The path does not stay on the upstream API.", "invalid_path")
        return url

    def _upstream_headers(self, given: CIMultiDictProxy[str]) -> CIMultiDict[str]:
        headers = _end_to_end(given)
        for name in list(headers):
            if name.lower().startswith("x-tether-"):
                headers.popall(name)
        if "content-length" in given:  # a streamed body keeps its length (else it goes chunked)
            headers["Content-Length"] = given["content-length"]
        if self.upstream_auth is not None:
            headers.update(self.upstream_auth)
        return headers

    async def _send(
        self, method: str, url: httpx2.URL, headers: Mapping[str, str], body: bytes | LimitedBody | None
    ) -> httpx2.Response:
        request = self.http.build_request(method, url, headers=list(headers.items()), content=body)
        try:
            return await self.http.send(request, stream=True)
        except (BodyTooLarge, httpx2.HTTPError) as exc:
            if isinstance(body, LimitedBody) and body.exceeded:  # raised bare or wrapped by the transport
                raise _too_large(self.max_body) from None
            log.warning("proxy.upstream_error", method=method, path=url.path, error=type(exc).__name__)
            raise Refused(
                502,
                f"tether could not reach the upstream API ({type(exc).__name__}).",
                "upstream_error",
                "server_error",
            ) from None

    async def _create(self, request: web.Request, url: httpx2.URL, headers: CIMultiDict[str]) -> web.StreamResponse:
        body = await _read_limited(request, self.max_body)
        fields = _json_object(body)
        if fields.get("background") is not True:
            return await _relay(request, await self._send("POST", url, headers, body))
        labels = _labels(request.headers.getall(LABEL_HEADER, []))
        given = fields.get("metadata")
        metadata: dict[str, Any] = given if isinstance(given, dict) else {}
        policy = request.headers.get(POLICY_HEADER)
        if policy is not None and self.front.config.policy_named(policy) is None:
            raise Refused(400, f"{POLICY_HEADER}: unknown policy {policy!r}.", "tether_unknown_policy")
        named = metadata.get("tether_policy")
        if policy is None and isinstance(named, str) and self.front.config.policy_named(named):
            policy = named  # an unknown name there is left to the rules, as in Config.select_policy
        budget = self.front.budget_refusal(
            account=self.account.name,
            model=fields.get("model") if isinstance(fields.get("model"), str) else None,
            metadata={k: v for k, v in metadata.items() if isinstance(v, str)},
            labels=labels,
            policy=policy,
            max_output_tokens=fields.get("max_output_tokens")
            if isinstance(fields.get("max_output_tokens"), int)
            else None,
        )
        if budget is not None:
            raise Refused(
                429,
                f"tether refused this create: budget {budget} cannot afford it (on_exceed = cancel).",
                "tether_budget_exceeded",
                "tether_budget_exceeded",
            )
        # The reply is read to be tracked, so it comes uncompressed.
        headers["Accept-Encoding"] = "identity"
        upstream = await self._send("POST", url, headers, body)

        async def track(response: Any) -> None:
            if not isinstance(response, dict) or not isinstance(response.get("id"), str):
                log.warning("proxy.untracked", reason="the reply is not a response object")
                return
            try:
                await self.front.track_created(response, account=self.account.name, policy=policy, labels=labels)
            except Exception as exc:  # the response exists upstream: the caller still gets its reply
                log.error("proxy.track_failed", response_id=response["id"], error=str(exc))

        if not upstream.is_success:
            return await _relay(request, upstream)
        if fields.get("stream") is True:
            return await _relay(request, upstream, on_event=track)
        reply = await _read(upstream)
        await track(_parsed(reply))
        return _whole(upstream, reply)

    async def _cancel(
        self, request: web.Request, url: httpx2.URL, headers: CIMultiDict[str], rid: str
    ) -> web.StreamResponse:
        body = await _read_limited(request, self.max_body)
        headers["Accept-Encoding"] = "identity"
        upstream = await self._send("POST", url, headers, body or None)
        reply = await _read(upstream)
        if upstream.is_success:
            answer = _parsed(reply)
            try:
                await self.front.record_manual_cancel(rid, answer if isinstance(answer, dict) else None)
            except Exception as exc:
                log.error("proxy.cancel_record_failed", response_id=rid, error=str(exc))
        return _whole(upstream, reply)


class BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> Refused:
    return Refused(
        413, f"The request body is larger than tether's limit ([proxy] max_body = {limit} bytes).", "body_too_large"
    )


async def _read_limited(request: web.Request, limit: int) -> bytes:
    parts, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


class LimitedBody:
    """A request body streamed upstream as it comes, cut off past `limit` bytes."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self.request, self.limit, self.exceeded = request, limit, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.request.content.iter_any():
            size += len(chunk)
            if size > self.limit:
                self.exceeded = True
                raise BodyTooLarge
            yield chunk


def _json_object(body: bytes) -> dict[str, Any]:
    """The create's fields; a body that is not a JSON object is the upstream's to refuse."""
    try:
        fields = json.loads(body)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _parsed(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise Refused(400, f"{LABEL_HEADER}: expected KEY=VALUE, got {value!r}.", "tether_invalid_label")
        labels[key.strip()] = text.strip()
    return labels


def _end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """The headers without hop-by-hop ones, Host and Content-Length."""
    named = {token.strip().lower() for value in headers.getall("connection", []) for token in value.split(",")}
    dropped = HOP_BY_HOP | SET_BY_SENDER | named
    return CIMultiDict(
        (name, value)
        for name, value in headers.items()
        if name.lower() not in dropped and not name.lower().startswith("proxy-")
    )


def _reply_headers(upstream: httpx2.Response) -> CIMultiDict[str]:
    headers = _end_to_end(CIMultiDict(upstream.headers.multi_items()))
    if "content-length" in upstream.headers:
        headers["Content-Length"] = upstream.headers["content-length"]
    return headers


async def _read(upstream: httpx2.Response) -> bytes:
    try:
        return await upstream.aread()
    finally:
        await upstream.aclose()


def _whole(upstream: httpx2.Response, body: bytes) -> web.Response:
    headers = _reply_headers(upstream)
    headers.pop("Content-Length", None)
    return web.Response(status=upstream.status_code, reason=upstream.reason_phrase or None, headers=headers, body=body)


async def _relay(
    request: web.Request, upstream: httpx2.Response, on_event: Callable[[Any], Coroutine[Any, Any, None]] | None = None
) -> web.StreamResponse:
    """Stream the upstream's reply to the caller chunk by chunk, as it arrives. With `on_event`,
    the server-sent events are read on the side and the first one carrying a response object is
    handed to it (run as a task, so no chunk waits for it)."""
    reply = web.StreamResponse(status=upstream.status_code, reason=upstream.reason_phrase or None)
    reply.headers.extend(_reply_headers(upstream))
    events = _FirstResponse() if on_event is not None else None
    pending: asyncio.Task[None] | None = None
    try:
        await reply.prepare(request)
        async for chunk in upstream.aiter_raw():
            await reply.write(chunk)
            if events is not None and on_event is not None:
                response = events.feed(chunk)
                if response is not None or len(events.buffer) > FIRST_EVENTS_MAX:
                    pending = asyncio.create_task(on_event(response))
                    events = None
        await reply.write_eof()
        if events is not None and on_event is not None:  # the stream ended without a response object
            await on_event(None)
    finally:
        await upstream.aclose()
        if pending is not None:
            await pending
    return reply


class _FirstResponse:
    """Finds the response object in the first server-sent events of a stream."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> dict[str, Any] | None:
        self.buffer += chunk
        while (end := re.search(rb"\r?\n\r?\n", self.buffer)) is not None:
            block, self.buffer = self.buffer[: end.start()], self.buffer[end.end() :]
            data = b"\n".join(line[5:].lstrip(b" ") for line in re.split(rb"\r?\n", block) if line.startswith(b"data:"))
            event = _parsed(data)
            if isinstance(event, dict) and isinstance(event.get("response"), dict):
                return event["response"]
        return None
