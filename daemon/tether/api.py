"""An async client for the Responses API: get, cancel, create.

Errors are typed by what the caller should do about them:

- `TransientError`: 5xx, 429 rate limits, timeouts, connection errors, unreadable
  bodies. Retried here with jittered exponential backoff honouring `Retry-After`.
- `AccountError`: 401/403 and quota 429s. Not retried; the account is paused
  (doubling from 30 s to 15 min) so nothing spins against a bad key or an empty wallet.
- `NotFound`: 404.
- `RequestRejected`: any other 4xx (on cancel: "not cancellable now").

The API key lives only in the request headers: it never enters an error message.

HTTP is tether's own (`tether.wire`; the stack named httpx: README, "How it is built", says why).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tether import __version__, wire
from tether.config import AccountConfig

QUOTA_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "spend_limit_reached", "usage_limit_reached"}
)
PRIORITY_MIN = 4  # the priority lane is max(PRIORITY_MIN, max_concurrency) wide
ACCOUNT_PAUSE_FIRST = 30.0
ACCOUNT_PAUSE_MAX = 900.0
RETRY_AFTER_MAX = 300.0


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
    """One account's connection pool, concurrency limit and pause state."""

    def __init__(
        self,
        account: AccountConfig,
        api_key: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        trace: wire.Trace | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.account = account
        self.retry = retry
        self._clock = clock
        self._rng = rng or random.Random()
        self._semaphore = asyncio.Semaphore(account.max_concurrency)
        # Deadline looks and cancels get a lane of their own, as wide as the polls' one:
        # they never queue behind polls, and a burst of deadlines goes out in parallel.
        priority_slots = max(PRIORITY_MIN, account.max_concurrency)
        self._priority = asyncio.Semaphore(priority_slots)
        self.paused_until = 0.0
        self._pause = ACCOUNT_PAUSE_FIRST
        self._key = api_key
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        if account.organization:
            headers["OpenAI-Organization"] = account.organization
        if account.project:
            headers["OpenAI-Project"] = account.project
        self._origin = wire.Origin(
            account.base_url,
            headers,
            timeout=account.request_timeout,
            proxy=proxy_for(account.base_url),
            trace=trace,
            user_agent=f"tether/{__version__}",
            max_idle=account.max_concurrency + priority_slots,
        )

    async def get(
        self, response_id: str, *, retry: RetryPolicy | None = None, priority: bool = False
    ) -> dict[str, Any]:
        return await self._call("GET", f"responses/{response_id}", None, retry, priority=priority)

    async def cancel(self, response_id: str, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        return await self._call("POST", f"responses/{response_id}/cancel", None, retry, priority=True)

    async def create(self, body: dict[str, Any], *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """Not idempotent: retried only when the request never reached the server or
        was refused unprocessed (429), so a retry cannot start a second response."""
        return await self._call("POST", "responses", body, retry, idempotent=False)

    def pause_remaining(self) -> float:
        return max(0.0, self.paused_until - self._clock())

    async def aclose(self) -> None:
        self._origin.close()

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        retry: RetryPolicy | None,
        *,
        idempotent: bool = True,
        priority: bool = False,
    ) -> dict[str, Any]:
        policy = retry or self.retry
        attempt = 0
        while True:
            try:
                return await self._once(method, path, body, self._priority if priority else self._semaphore)
            except TransientError as exc:
                attempt += 1
                if attempt >= policy.attempts or (exc.delivered and not idempotent):
                    raise
                await asyncio.sleep(policy.delay(attempt - 1, exc.retry_after, self._rng))

    async def _once(
        self, method: str, path: str, body: dict[str, Any] | None, lane: asyncio.Semaphore
    ) -> dict[str, Any]:
        async with lane:
            # Checked once a slot is free: calls queued behind a 401 must not follow it.
            remaining = self.pause_remaining()
            if remaining > 0:
                raise AccountPaused(
                    f"account {self.account.name!r} is paused for {remaining:.0f}s after an auth or quota error",
                    retry_after=remaining,
                )
            data = json.dumps(body).encode() if body is not None else None
            try:
                reply = await self._origin.request(method, path, data)
            except wire.CannotConnect as exc:  # never sent
                raise TransientError(f"could not connect for {method} /{path}: {exc}", delivered=False) from None
            except wire.ReplyTimeout as exc:
                raise TransientError(f"timeout on {method} /{path}: {exc}") from None
            except wire.Broken as exc:  # dropped, reset or garbled after it was sent
                raise TransientError(f"connection error on {method} /{path}: {exc}") from None
        if 200 <= reply.status < 300:
            self._pause = ACCOUNT_PAUSE_FIRST
            return self._parse(reply.body, reply.status, reply.headers, method, path)
        raise self._error(reply.body, reply.status, reply.headers, reply.reason, method, path)

    def _parse(
        self, content: bytes, status: int, headers: Mapping[str, str], method: str, path: str
    ) -> dict[str, Any]:
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
        fields = dict(status=status, code=code, type_=err.get("type"), retry_after=retry_after(headers))
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


def proxy_for(base_url: str) -> str | None:
    """HTTP(S)_PROXY / NO_PROXY from the environment, looked up once per account."""
    url = urllib.parse.urlsplit(base_url)
    if urllib.request.proxy_bypass(url.hostname or ""):
        return None
    return urllib.request.getproxies().get(url.scheme)


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
