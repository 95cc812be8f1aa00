"""An async client for the Responses API: get, cancel, create.

Errors are typed by what the caller should do about them:

- `TransientError`: 5xx, 429 rate limits, timeouts, connection errors, unreadable or
  over-long bodies. Retried here with jittered exponential backoff honouring `Retry-After`.
- `AccountError`: 401/403 and quota 429s. Not retried; the account is paused
  (doubling from 30 s to 15 min) so nothing spins against a bad key or an empty wallet.
- `NotFound`: 404.
- `RequestRejected`: any other 4xx (on cancel: "not cancellable now").

The API key lives only in the request headers: it never enters an error message.

HTTP is httpx2, on the transport chosen for the process (tether/transports/: aiohttp's for the
daemon, httpx2's own for a CLI command). From the environment, as httpx2 reads it: HTTPS_PROXY,
HTTP_PROXY and NO_PROXY, and SSL_CERT_FILE / SSL_CERT_DIR (else the system's trust store).
Connections are kept alive; redirects are not followed. A reply is read as it streams in, up
to the account's `max_reply_bytes`, and a whole request, reply included, has `request_timeout`.
Only a request that provably never left (no connection could be made) counts as not delivered;
no transport re-sends a request, so one attempt at a create is at most one create.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx2

from tether import __version__, transports
from tether.config import AccountConfig

QUOTA_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "spend_limit_reached", "usage_limit_reached"}
)
ACCOUNT_PAUSE_FIRST = 30.0
ACCOUNT_PAUSE_MAX = 900.0
RETRY_AFTER_MAX = 300.0
CONNECT_TIMEOUT = 10.0  # at most; never more than half of request_timeout
KEEPALIVE = 15.0  # an idle connection older than this is closed rather than reused

EventHooks = Mapping[str, Sequence[Callable[[Any], Awaitable[None]]]]
FailureHook = Callable[["APIError"], None]


class APIError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        type_: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type_
        self.retry_after = retry_after

    def as_detail(self) -> dict[str, Any]:
        return {"http_status": self.status, "code": self.code, "message": self.message}


class TransientError(APIError):
    """Worth retrying. `delivered` is False when the request provably never reached the
    server (connection refused, no pooled connection) or was refused unprocessed (429)."""

    def __init__(self, message: str, *, delivered: bool = True, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.delivered = delivered


class AccountError(APIError):
    pass


class AccountPaused(AccountError):
    """Raised without a request while the account is paused after an AccountError."""


class NotFound(APIError):
    pass


class RequestRejected(APIError):
    pass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # total tries, including the first
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Full jitter (between half and all of base·2^attempt); Retry-After is a floor."""
        backoff = min(self.cap, self.base * 2**attempt) * rng.uniform(0.5, 1.0)
        if retry_after is not None:
            return max(backoff, min(retry_after, RETRY_AFTER_MAX))
        return backoff


NO_RETRY = RetryPolicy(attempts=1)


class ResponsesClient:
    """One account's connection pool, concurrency limit and pause state. `brief`: for a process
    that sends a request or two (a CLI command), on the transport that is quicker to load."""

    def __init__(
        self,
        account: AccountConfig,
        api_key: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        event_hooks: EventHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        brief: bool = False,
    ) -> None:
        self.account = account
        self.retry = retry
        self._clock = clock
        self._rng = rng or random.Random()
        self._semaphore = asyncio.Semaphore(account.max_concurrency)
        # Deadline looks and cancels get a lane of their own: they never queue behind polls,
        # and a burst of deadlines goes out in parallel.
        self._priority = asyncio.Semaphore(account.deadline_concurrency)
        self.paused_until = 0.0
        self._pause = ACCOUNT_PAUSE_FIRST
        self._key = api_key
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": f"tether/{__version__}",
        }
        if account.organization:
            headers["OpenAI-Organization"] = account.organization
        if account.project:
            headers["OpenAI-Project"] = account.project
        connections = account.max_concurrency + account.deadline_concurrency
        # Requests name their whole URL: httpx2 joins a relative one to its base_url by parsing
        # two URLs (50 µs a request against 35 µs for one whole URL).
        self._base = account.base_url.rstrip("/") + "/"
        self._unusable: str | None = None
        self._transport = transports.load(brief)
        try:
            self._http = self._transport.client(
                headers=headers,
                timeout=httpx2.Timeout(
                    account.request_timeout, connect=min(CONNECT_TIMEOUT, account.request_timeout / 2)
                ),
                limits=httpx2.Limits(
                    max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=KEEPALIVE
                ),
                event_hooks={name: list(hooks) for name, hooks in (event_hooks or {}).items()},
                verify=trust_store(),
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # none kept: each request stands alone
            )
        except httpx2.InvalidURL as exc:  # a proxy URL from the environment (the base URL is checked in config)
            self._http = self._transport.client(trust_env=False)  # never used: each request fails with what to set
            self._unusable = (
                f"the proxy URL in the environment cannot be used ({exc}); set HTTPS_PROXY=http://HOST:PORT"
            )

    async def get(
        self,
        response_id: str,
        *,
        retry: RetryPolicy | None = None,
        priority: bool = False,
        on_failure: FailureHook | None = None,
    ) -> dict[str, Any]:
        return await self._call(
            "GET", f"responses/{response_id}", None, retry, priority=priority, on_failure=on_failure
        )

    async def cancel(
        self,
        response_id: str,
        *,
        retry: RetryPolicy | None = None,
        on_failure: FailureHook | None = None,
        fence: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """`fence` is called just before each attempt is sent, once a slot is free: it raises
        to keep the cancel from leaving (a daemon that may have been replaced, tether/cluster.py)."""
        return await self._call(
            "POST", f"responses/{response_id}/cancel", None, retry, priority=True, on_failure=on_failure, fence=fence
        )

    async def create(
        self, body: dict[str, Any], *, retry: RetryPolicy | None = None, on_failure: FailureHook | None = None
    ) -> dict[str, Any]:
        """Not idempotent: retried only when the request never reached the server or
        was refused unprocessed (429), so a retry cannot start a second response."""
        return await self._call("POST", "responses", body, retry, idempotent=False, on_failure=on_failure)

    def pause_remaining(self) -> float:
        return max(0.0, self.paused_until - self._clock())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        retry: RetryPolicy | None,
        *,
        idempotent: bool = True,
        priority: bool = False,
        on_failure: FailureHook | None = None,
        fence: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """`on_failure` hears of every attempt that failed, the retried ones included."""
        policy = retry or self.retry
        attempt = 0
        while True:
            try:
                return await self._once(method, path, body, self._priority if priority else self._semaphore, fence)
            except APIError as exc:
                if on_failure is not None:
                    on_failure(exc)
                if not isinstance(exc, TransientError):
                    raise
                attempt += 1
                if attempt >= policy.attempts or (exc.delivered and not idempotent):
                    raise
                await asyncio.sleep(policy.delay(attempt - 1, exc.retry_after, self._rng))

    async def _once(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        lane: asyncio.Semaphore,
        fence: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        async with lane:
            if fence is not None:
                fence()
            # Checked once a slot is free: calls queued behind a 401 must not follow it.
            remaining = self.pause_remaining()
            if remaining > 0:
                raise AccountPaused(
                    f"account {self.account.name!r} is paused for {remaining:.0f}s after an auth or quota error",
                    retry_after=remaining,
                )
            if self._unusable:
                raise TransientError(f"could not connect for {method} /{path}: {self._unusable}", delivered=False)
            try:
                async with asyncio.timeout(self.account.request_timeout):
                    status, headers, reason, content = await self._exchange(method, path, body)
            except TimeoutError:
                raise TransientError(
                    f"timeout on {method} /{path}: no whole reply within {self.account.request_timeout:g}s"
                ) from None
            except self._transport.errors as exc:
                raise self._failed(exc, method, path) from None
        if 200 <= status < 300:
            self._pause = ACCOUNT_PAUSE_FIRST
            return self._parse(content, status, headers, method, path)
        raise self._error(content, status, headers, reason, method, path)

    async def _exchange(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, httpx2.Headers, str, bytes]:
        """One request; its reply read up to max_reply_bytes (decoded), longer ones refused."""
        data = json.dumps(body).encode() if body is not None else None
        request = self._http.build_request(
            method,
            self._base + path,
            content=data,
            headers={"Content-Type": "application/json"} if data is not None else None,
        )
        response = await self._http.send(request, stream=True)
        try:
            limit = self.account.max_reply_bytes
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise TransientError(
                        f"reply to {method} /{path} is longer than max_reply_bytes ({limit} bytes); not read further",
                        status=response.status_code,
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        return response.status_code, response.headers, response.reason_phrase, b"".join(chunks)

    def _parse(self, content: bytes, status: int, headers: Mapping[str, str], method: str, path: str) -> dict[str, Any]:
        try:
            payload = json.loads(content)
        except ValueError:
            raise TransientError(
                f"unreadable body on {method} /{path} ({headers.get('content-type', 'no content type')})",
                status=status,
            ) from None
        if not isinstance(payload, dict):
            raise TransientError(f"unexpected body on {method} /{path}: not an object", status=status)
        return payload

    def _error(
        self, content: bytes, status: int, headers: Mapping[str, str], reason: str | None, method: str, path: str
    ) -> APIError:
        err = error_body(content)
        code = err.get("code") if isinstance(err.get("code"), str) else None
        # A server or proxy may echo the key back: it never enters our messages.
        message = str(err.get("message") or reason or "error")
        if self._key:
            message = message.replace(self._key, "[redacted]")
        message = message[:500]
        text = f"HTTP {status} on {method} /{path}: {message}"
        fields: dict[str, Any] = dict(status=status, code=code, type_=err.get("type"), retry_after=retry_after(headers))
        if status in (401, 403) or (status == 429 and is_quota(code, err.get("type"))):
            self._pause_account()
            return AccountError(text, **fields)
        if status == 429:
            return TransientError(text, delivered=False, **fields)
        if status >= 500:
            return TransientError(text, **fields)
        if status == 404:
            return NotFound(text, **fields)
        return RequestRejected(text, **fields)

    def _failed(self, exc: BaseException, method: str, path: str) -> TransientError:
        """The TransientError for a request that failed without a whole reply."""
        failure = self._transport.failure(exc)
        if failure.delivered:
            return TransientError(f"{failure.what} on {method} /{path}: {failure.detail}")
        return TransientError(f"could not connect for {method} /{path}: {failure.detail}", delivered=False)

    def _pause_account(self) -> None:
        self.paused_until = self._clock() + self._pause
        self._pause = min(self._pause * 2, ACCOUNT_PAUSE_MAX)


def error_body(content: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(content)
    except ValueError:
        return {}
    err = payload.get("error") if isinstance(payload, dict) else None
    return err if isinstance(err, dict) else {}


def is_quota(code: str | None, type_: Any) -> bool:
    text = f"{code or ''} {type_ or ''}"
    return any(q in text for q in QUOTA_CODES) or "quota" in text or "limit_reached" in text


def trust_store() -> ssl.SSLContext:
    """httpx2's: SSL_CERT_FILE or SSL_CERT_DIR, else the system's. A file or folder there that
    holds no certificate trusts nothing (as OpenSSL takes it): each connection then fails
    naming the host whose certificate is not trusted, rather than every client at its start."""
    try:
        return httpx2.create_ssl_context()
    except (ssl.SSLError, OSError):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for this API; fall back to our own backoff
