"""The Responses API client (`tether.api`) against the stand-in server over real HTTP.

Every test talks to a real `FakeServer` on a local port. The server's own record
(`state.snapshot()`: request counts, fault counts, the headers it saw, the instants of GETs) is
the oracle for what reached the wire. Where a test needs to see requests from the client's side
(how many are in flight, which headers were sent) it passes `Observed`'s httpx2 event hooks to
the client: every request still goes over the network.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from openai.types.responses import Response

from conftest import API_KEY
from tether.api import (
    NO_RETRY,
    RETRY_AFTER_MAX,
    AccountError,
    AccountPaused,
    APIError,
    NotFound,
    RequestRejected,
    ResponsesClient,
    RetryPolicy,
    TransientError,
    retry_after,
)
from tether.config import AccountConfig, parse_config
from tether.fakeapi import FakeServer
from tether.ids import valid_id

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)
WRONG_KEY = "sk-wrong-fedcba9876543210-WRONG"
# A response that stays in progress for the whole test, and one that is finished at once.
RUNNING = {"model": "o3-pro", "input": "Write a long essay.", "background": True, "metadata": {"fake_run": "60"}}
FINISHED = {"model": "o3-pro", "input": "Say hi.", "background": True, "metadata": {"fake_run": "0"}}


# --- helpers -----------------------------------------------------------------------------------


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]


class Observed:
    """httpx2 event hooks on the client: the requests as sent (headers included), how many are
    in flight (from sending to the reply's head), and a hook after each reply's head
    (`after(request, status)`); `before(request)` runs as each request is about to be sent."""

    def __init__(self) -> None:
        self.after: Callable[[Sent, int], None] | None = None
        self.before: Callable[[Sent], None] | None = None
        self.requests: list[Sent] = []
        self.sent_at: list[float] = []
        self.answered_at: list[float] = []
        self.in_flight = 0
        self.peak = 0

    @property
    def hooks(self) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
        return {"request": [self._request], "response": [self._response]}

    async def _request(self, request: httpx2.Request) -> None:
        sent = Sent(request.method, str(request.url), {k.lower(): v for k, v in request.headers.items()})
        self.requests.append(sent)
        self.sent_at.append(time.monotonic())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.before is not None:
            self.before(sent)

    async def _response(self, response: httpx2.Response) -> None:
        self.in_flight -= 1
        self.answered_at.append(time.monotonic())
        if self.after is not None:
            self.after(self.requests[-1], response.status_code)


class FakeClock:
    """A monotonic clock the test moves by hand (the client's pause bookkeeping reads it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FixedJitter(random.Random):
    """An rng whose `uniform(a, b)` is always the point `fraction` of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def requests(fake: FakeServer, route: str) -> int:
    return fake.state.snapshot()["requests"].get(route, 0)


def faults(fake: FakeServer, kind: str) -> int:
    return fake.state.snapshot()["fault_counts"].get(kind, 0)


async def raised(call: Awaitable[Any]) -> APIError:
    """The APIError that awaiting `call` raises; fails the test if it returns instead."""
    try:
        value = await call
    except APIError as exc:
        return exc
    raise AssertionError(f"expected an APIError, got a result: {str(value)[:200]}")


MakeClient = Callable[..., ResponsesClient]


@pytest.fixture
async def make_client(fake: FakeServer) -> AsyncIterator[MakeClient]:
    """`make_client(key=..., retry=..., observed=..., clock=..., **AccountConfig fields)`."""
    clients: list[ResponsesClient] = []

    def make(
        *,
        key: str = API_KEY,
        retry: RetryPolicy = FAST,
        observed: Observed | None = None,
        clock: Callable[[], float] | None = None,
        brief: bool = False,
        **account: Any,
    ) -> ResponsesClient:
        config = AccountConfig(name="default", base_url=fake.base_url, **{"request_timeout": 5.0, **account})
        extra = {"clock": clock} if clock is not None else {}
        hooks = observed.hooks if observed is not None else None
        client = ResponsesClient(
            config, key, retry=retry, event_hooks=hooks, rng=random.Random(7), brief=brief, **extra
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(make_client: MakeClient) -> ResponsesClient:
    return make_client()


# --- round trips -------------------------------------------------------------------------------


async def test_create_returns_the_api_response_object_as_a_dict(fake: FakeServer, client: ResponsesClient) -> None:
    created = await client.create({**RUNNING, "metadata": {**RUNNING["metadata"], "team": "search"}})

    assert isinstance(created, dict)
    Response.model_validate(created)  # the official SDK's model of the response object
    assert created["object"] == "response"
    assert created["model"] == "o3-pro"
    assert created["background"] is True
    assert created["status"] in ("queued", "in_progress")
    assert created["metadata"]["team"] == "search"
    assert created["usage"] is None
    assert isinstance(created["created_at"], int)
    assert valid_id(created["id"])
    assert created["id"] in fake.state.snapshot()["responses"]
    assert requests(fake, "create") == 1


async def test_get_returns_the_current_object_of_the_response(fake: FakeServer, client: ResponsesClient) -> None:
    running = await client.create(RUNNING)
    finished = await client.create(FINISHED)

    got_running = await client.get(running["id"])
    got_finished = await client.get(finished["id"])

    Response.model_validate(got_running)
    Response.model_validate(got_finished)
    assert (got_running["id"], got_running["status"]) == (running["id"], "in_progress")
    assert (got_finished["id"], got_finished["status"]) == (finished["id"], "completed")
    usage = got_finished["usage"]
    assert usage["input_tokens"] == 1000 and usage["output_tokens"] == 500
    assert usage["total_tokens"] == 1500
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    record = fake.state.snapshot()["responses"]
    assert len(record[running["id"]]["gets"]) == 1
    assert len(record[finished["id"]]["gets"]) == 1


async def test_cancel_of_a_running_background_response_returns_it_cancelled(
    fake: FakeServer, client: ResponsesClient
) -> None:
    created = await client.create(RUNNING)

    cancelled = await client.cancel(created["id"])

    Response.model_validate(cancelled)
    assert cancelled["id"] == created["id"]
    assert cancelled["status"] == "cancelled"
    assert cancelled["usage"] is None
    server = fake.state.snapshot()["responses"][created["id"]]
    assert server["status"] == "cancelled"
    assert server["cancel_changed"] is True
    assert (await client.get(created["id"]))["status"] == "cancelled"


async def test_cancelling_an_already_cancelled_response_returns_it_again(
    fake: FakeServer, client: ResponsesClient
) -> None:
    created = await client.create(RUNNING)
    await client.cancel(created["id"])

    again = await client.cancel(created["id"])

    assert again["status"] == "cancelled"
    assert len(fake.state.snapshot()["responses"][created["id"]]["cancels"]) == 2


async def test_a_server_whose_ids_do_not_start_with_resp_works_end_to_end() -> None:
    with FakeServer(api_key=API_KEY, id_prefix="gen-") as other:
        account = parse_config({"accounts": {"default": {"base_url": other.base_url}}}).accounts["default"]
        client = ResponsesClient(account, API_KEY, retry=FAST)
        try:
            created = await client.create(RUNNING)
            got = await client.get(created["id"])
            cancelled = await client.cancel(created["id"])
        finally:
            await client.aclose()
    assert created["id"].startswith("gen-")
    assert got["id"] == created["id"]
    assert cancelled["status"] == "cancelled"


async def test_unknown_extra_fields_and_missing_optional_fields_are_returned_as_they_are(
    fake: FakeServer, client: ResponsesClient
) -> None:
    created = await client.create(RUNNING)
    fake.state.faults.get.extra_fields = 1.0
    extra = await client.get(created["id"])
    fake.state.faults.get.extra_fields = 0.0
    fake.state.faults.get.missing_fields = 1.0
    sparse = await client.get(created["id"])

    assert extra["vendor_extension"] == {"queue_position": 3, "region": "fake-1"}
    assert extra["status"] == "in_progress"
    assert "usage" not in sparse and "metadata" not in sparse
    assert sparse["status"] == "in_progress"


# --- transient errors: 5xx, outages, dropped connections, unreadable bodies, timeouts ------------


async def test_a_5xx_is_retried_up_to_the_attempts_then_raises_transient_error(
    fake: FakeServer, make_client: MakeClient
) -> None:
    client = make_client(retry=RetryPolicy(attempts=4, base=0.01, cap=0.05))
    created = await client.create(RUNNING)
    fake.state.faults.get.server_error = 1.0

    exc = await raised(client.get(created["id"]))

    assert type(exc) is TransientError
    assert exc.status in (500, 502, 503)
    assert requests(fake, "get") == 4
    assert faults(fake, "server_error") == 4


async def test_a_single_attempt_policy_sends_exactly_one_request_on_a_5xx(
    fake: FakeServer, client: ResponsesClient
) -> None:
    created = await client.create(RUNNING)
    fake.state.faults.cancel.server_error = 1.0

    exc = await raised(client.cancel(created["id"], retry=RetryPolicy(attempts=1)))

    assert type(exc) is TransientError
    assert requests(fake, "cancel") == 1


async def test_a_503_outage_shorter_than_the_retry_budget_is_ridden_out(
    fake: FakeServer, make_client: MakeClient
) -> None:
    # Delays are at least 0.005, 0.01, 0.02, then 0.025 each: 10 attempts wait >= 0.185 s in all.
    client = make_client(retry=RetryPolicy(attempts=10, base=0.01, cap=0.05))
    created = await client.create(RUNNING)
    fake.state.faults.outage_for(0.1)

    got = await client.get(created["id"])

    assert got["id"] == created["id"]
    outage = faults(fake, "outage")
    assert outage >= 1
    assert requests(fake, "get") == outage + 1


async def test_a_dropped_connection_is_a_transient_error_retried_up_to_the_attempts(
    fake: FakeServer, client: ResponsesClient
) -> None:
    created = await client.create(RUNNING)
    fake.state.faults.get.drop = 1.0

    exc = await raised(client.get(created["id"]))

    assert type(exc) is TransientError
    assert exc.status is None
    assert requests(fake, "get") == FAST.attempts
    assert faults(fake, "drop") == FAST.attempts


async def test_a_dropped_connection_once_is_recovered_by_the_retry(fake: FakeServer, make_client: MakeClient) -> None:
    gets: list[Sent] = []

    def heal_at_the_retry(request: Sent) -> None:
        gets.append(request)
        if len(gets) == 2:
            fake.state.faults.get.drop = 0.0

    observed = Observed()
    client = make_client(observed=observed)
    created = await client.create(RUNNING)
    observed.before = heal_at_the_retry
    fake.state.faults.get.drop = 1.0

    got = await client.get(created["id"])

    assert got["status"] == "in_progress"
    assert faults(fake, "drop") == 1
    assert requests(fake, "get") == 2


@pytest.mark.parametrize("fault", ["malformed_json", "wrong_content_type"])
async def test_an_unreadable_200_body_is_a_transient_error_not_a_crash(
    fault: str, fake: FakeServer, client: ResponsesClient
) -> None:
    created = await client.create(RUNNING)
    setattr(fake.state.faults.get, fault, 1.0)

    exc = await raised(client.get(created["id"]))

    assert type(exc) is TransientError
    assert exc.status == 200
    assert requests(fake, "get") == FAST.attempts
    assert faults(fake, fault) == FAST.attempts


async def test_a_request_that_outlives_the_request_timeout_is_a_transient_error(
    fake: FakeServer, make_client: MakeClient
) -> None:
    created = await make_client().create(RUNNING)
    client = make_client(request_timeout=0.2, retry=RetryPolicy(attempts=2, base=0.01, cap=0.05))
    fake.state.faults.hang_seconds = 30.0
    fake.state.faults.get.hang = 1.0

    started = time.monotonic()
    exc = await raised(client.get(created["id"]))
    elapsed = time.monotonic() - started

    assert type(exc) is TransientError
    assert "timeout" in str(exc)
    assert requests(fake, "get") == 2
    assert 0.4 <= elapsed < 20.0  # cut at the timeout (a busy machine may be late to notice), not the 30 s hang


# --- 429 rate limits and Retry-After -----------------------------------------------------------


async def test_a_rate_limit_429_is_a_transient_error_carrying_retry_after_from_the_header(
    fake: FakeServer, client: ResponsesClient
) -> None:
    created = await client.create(RUNNING)
    fake.state.faults.retry_after = 7.5
    fake.state.faults.get.rate_limit = 1.0

    exc = await raised(client.get(created["id"], retry=RetryPolicy(attempts=1)))

    assert type(exc) is TransientError
    assert exc.status == 429
    assert exc.code == "rate_limit_exceeded"
    assert exc.retry_after == 7.5
    assert requests(fake, "get") == 1


async def test_the_retry_after_a_rate_limit_waits_at_least_retry_after(
    fake: FakeServer, make_client: MakeClient
) -> None:
    def lift_after_first(request: Sent, status: int) -> None:
        fake.state.faults.get.rate_limit = 0.0

    observed = Observed()
    client = make_client(observed=observed)  # backoff alone would wait at most cap = 0.05 s
    created = await client.create(RUNNING)
    observed.after = lift_after_first
    fake.state.faults.retry_after = 0.2
    fake.state.faults.get.rate_limit = 1.0

    got = await client.get(created["id"])

    assert got["id"] == created["id"]
    assert faults(fake, "rate_limit") == 1
    assert requests(fake, "get") == 2
    # observed.* index 0 is the create; 1 is the rate-limited GET; 2 is the retry.
    waited = observed.sent_at[2] - observed.answered_at[1]
    assert waited >= 0.2 - 0.005
    assert waited < 2.0


async def test_rate_limits_that_persist_exhaust_the_attempts(fake: FakeServer, client: ResponsesClient) -> None:
    created = await client.create(RUNNING)
    fake.state.faults.retry_after = 0.01
    fake.state.faults.get.rate_limit = 1.0

    exc = await raised(client.get(created["id"]))

    assert type(exc) is TransientError and exc.status == 429
    assert requests(fake, "get") == FAST.attempts


@pytest.mark.parametrize(
    ("policy", "attempt", "retry_after_s", "jitter", "expected"),
    [
        pytest.param(RetryPolicy(base=0.5, cap=30), 0, None, 1.0, 0.5, id="first-retry-full"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 0, None, 0.0, 0.25, id="first-retry-half"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 3, None, 1.0, 4.0, id="doubles-per-attempt"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 3, None, 0.0, 2.0, id="doubles-half"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 10, None, 1.0, 30.0, id="capped"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 10, None, 0.0, 15.0, id="capped-half"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 0, 10.0, 1.0, 10.0, id="retry-after-above-backoff"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 3, 1.0, 1.0, 4.0, id="retry-after-is-a-floor"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 0, 0.0, 1.0, 0.5, id="retry-after-zero"),
        pytest.param(RetryPolicy(base=0.5, cap=30), 0, 1000.0, 1.0, RETRY_AFTER_MAX, id="retry-after-capped"),
        pytest.param(RetryPolicy(base=0.01, cap=0.05), 2, 86400.0, 0.0, 300.0, id="retry-after-capped-300"),
    ],
)
def test_retry_delay_is_jittered_exponential_backoff_with_retry_after_as_a_capped_floor(
    policy: RetryPolicy, attempt: int, retry_after_s: float | None, jitter: float, expected: float
) -> None:
    assert policy.delay(attempt, retry_after_s, FixedJitter(jitter)) == pytest.approx(expected)


def test_retry_after_cap_is_300_seconds() -> None:
    assert RETRY_AFTER_MAX == 300.0


@pytest.mark.parametrize("attempt", range(12))
def test_retry_delay_stays_within_half_and_all_of_the_capped_backoff(attempt: int) -> None:
    policy = RetryPolicy(base=0.5, cap=30.0)
    rng = random.Random(attempt)
    ceiling = min(30.0, 0.5 * 2**attempt)
    delays = [policy.delay(attempt, None, rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 10  # it is jittered, not fixed


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"retry-after": "2"}, 2.0, id="seconds"),
        pytest.param({"retry-after": "0.2"}, 0.2, id="fractional"),
        pytest.param({"retry-after": "-3"}, 0.0, id="negative-is-zero"),
        pytest.param({"retry-after-ms": "1500"}, 1.5, id="milliseconds"),
        pytest.param({"retry-after-ms": "250", "retry-after": "9"}, 0.25, id="ms-wins"),
        pytest.param({"retry-after-ms": "soon", "retry-after": "9"}, 9.0, id="bad-ms-falls-back"),
        pytest.param({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None, id="http-date"),
        pytest.param({"retry-after": "soon"}, None, id="garbage"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_retry_after_is_parsed_from_the_headers(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after(headers) == expected


# --- account errors: quota and auth ------------------------------------------------------------


async def test_a_quota_429_is_an_account_error_sent_once_and_pauses_the_account(
    fake: FakeServer, make_client: MakeClient
) -> None:
    clock = FakeClock()
    client = make_client(retry=RetryPolicy(attempts=5, base=0.01, cap=0.05), clock=clock)
    created = await client.create(RUNNING)
    fake.state.faults.get.quota = 1.0

    exc = await raised(client.get(created["id"]))

    assert type(exc) is AccountError
    assert (exc.status, exc.code) == (429, "insufficient_quota")
    assert requests(fake, "get") == 1  # not retried
    assert client.pause_remaining() == pytest.approx(30.0)

    paused = await raised(client.get(created["id"]))
    paused_create = await raised(client.create(RUNNING))

    assert type(paused) is AccountPaused and type(paused_create) is AccountPaused
    assert paused.retry_after == pytest.approx(30.0)
    assert requests(fake, "get") == 1 and requests(fake, "create") == 1  # nothing reached the server

    clock.advance(30.0)
    fake.state.faults.get.quota = 0.0
    assert (await client.get(created["id"]))["id"] == created["id"]
    assert requests(fake, "get") == 2


async def test_a_quota_429_on_create_is_not_retried(fake: FakeServer, make_client: MakeClient) -> None:
    client = make_client(retry=RetryPolicy(attempts=5, base=0.01, cap=0.05))
    fake.state.faults.create.quota = 1.0

    exc = await raised(client.create(RUNNING))

    assert type(exc) is AccountError
    assert requests(fake, "create") == 1
    assert fake.state.records() == []


async def test_a_wrong_key_is_an_account_error_and_the_pause_doubles_on_each_failure_up_to_15_minutes(
    fake: FakeServer, make_client: MakeClient
) -> None:
    clock = FakeClock()
    client = make_client(key=WRONG_KEY, retry=RetryPolicy(attempts=5, base=0.01, cap=0.05), clock=clock)

    for sent, expected_pause in enumerate([30, 60, 120, 240, 480, 900, 900], start=1):
        exc = await raised(client.get("resp_abc"))
        assert type(exc) is AccountError
        assert (exc.status, exc.code) == (401, "invalid_api_key")
        assert requests(fake, "get") == sent  # each failure is one request, not retried
        assert client.pause_remaining() == pytest.approx(expected_pause)

        clock.advance(expected_pause - 1)
        assert type(await raised(client.get("resp_abc"))) is AccountPaused
        assert requests(fake, "get") == sent
        clock.advance(1)


async def test_calls_queued_behind_max_concurrency_are_not_sent_once_the_account_is_paused(
    fake: FakeServer, make_client: MakeClient
) -> None:
    clock = FakeClock()
    client = make_client(key=WRONG_KEY, max_concurrency=1, clock=clock)

    results = await asyncio.gather(*(client.get("resp_abc") for _ in range(8)), return_exceptions=True)

    kinds = [type(r).__name__ for r in results]
    assert kinds.count("AccountError") == 1 and kinds.count("AccountPaused") == 7, kinds
    assert requests(fake, "get") == 1
    assert client.pause_remaining() == pytest.approx(30.0)


async def test_a_success_resets_the_account_pause_to_its_first_length(
    fake: FakeServer, make_client: MakeClient
) -> None:
    clock = FakeClock()
    client = make_client(clock=clock)
    created = await client.create(RUNNING)
    fake.state.api_key = "sk-rotated-key"  # the client's key stops working
    for pause in (30, 60):
        assert type(await raised(client.get(created["id"]))) is AccountError
        clock.advance(pause)

    fake.state.api_key = API_KEY  # and works again
    await client.get(created["id"])
    fake.state.api_key = "sk-rotated-key"
    assert type(await raised(client.get(created["id"]))) is AccountError

    assert client.pause_remaining() == pytest.approx(30.0)


# --- not found and rejected --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "cancel"])
async def test_an_unknown_id_is_not_found_and_not_retried(
    method: str, fake: FakeServer, client: ResponsesClient
) -> None:
    exc = await raised(getattr(client, method)("resp_doesnotexist"))

    assert type(exc) is NotFound
    assert exc.status == 404
    assert requests(fake, method) == 1


async def test_cancelling_a_completed_response_is_rejected_with_400_and_not_retried(
    fake: FakeServer, client: ResponsesClient
) -> None:
    finished = await client.create(FINISHED)

    exc = await raised(client.cancel(finished["id"]))

    assert type(exc) is RequestRejected
    assert exc.status == 400
    assert "completed" in str(exc)
    assert requests(fake, "cancel") == 1
    server = fake.state.snapshot()["responses"][finished["id"]]
    assert server["status"] == "completed" and server["cancel_changed"] is False


async def test_cancelling_a_completed_response_on_a_409_server_is_rejected() -> None:
    with FakeServer(api_key=API_KEY, cancel_finished_status=409) as other:
        account = AccountConfig(name="default", base_url=other.base_url)
        client = ResponsesClient(account, API_KEY, retry=FAST)
        try:
            finished = await client.create(FINISHED)
            exc = await raised(client.cancel(finished["id"]))
        finally:
            await client.aclose()
        assert type(exc) is RequestRejected and exc.status == 409
        assert other.state.snapshot()["requests"]["cancel"] == 1


async def test_cancelling_a_completed_response_on_a_200_server_returns_the_finished_object() -> None:
    with FakeServer(api_key=API_KEY, cancel_finished_status=200) as other:
        account = AccountConfig(name="default", base_url=other.base_url)
        client = ResponsesClient(account, API_KEY, retry=FAST)
        try:
            finished = await client.create(FINISHED)
            answer = await client.cancel(finished["id"])
        finally:
            await client.aclose()
    assert answer["status"] == "completed"


async def test_an_invalid_create_body_is_rejected_and_not_retried(fake: FakeServer, client: ResponsesClient) -> None:
    exc = await raised(client.create({"input": "no model", "background": True}))

    assert type(exc) is RequestRejected
    assert (exc.status, exc.code) == (400, "missing_required_parameter")
    assert requests(fake, "create") == 1


# --- organization and project headers -----------------------------------------------------------


async def test_organization_and_project_headers_are_sent_when_configured(
    fake: FakeServer, make_client: MakeClient
) -> None:
    observed = Observed()
    client = make_client(organization="org_abc", project="proj_xyz", observed=observed)

    created = await client.create(RUNNING)
    await client.get(created["id"])
    await client.cancel(created["id"])

    assert fake.state.snapshot()["client_headers"] == [{"organization": "org_abc", "project": "proj_xyz", "count": 3}]
    for request in observed.requests:
        assert request.headers["openai-organization"] == "org_abc"
        assert request.headers["openai-project"] == "proj_xyz"


async def test_only_the_configured_one_of_organization_and_project_is_sent(
    fake: FakeServer, make_client: MakeClient
) -> None:
    observed = Observed()
    client = make_client(project="proj_only", observed=observed)

    await client.create(RUNNING)

    assert fake.state.snapshot()["client_headers"] == [{"organization": None, "project": "proj_only", "count": 1}]
    assert "openai-organization" not in observed.requests[0].headers


async def test_no_organization_or_project_header_is_sent_when_not_configured(
    fake: FakeServer, make_client: MakeClient
) -> None:
    observed = Observed()
    client = make_client(observed=observed)

    created = await client.create(RUNNING)
    await client.get(created["id"])

    assert fake.state.snapshot()["client_headers"] == []
    for request in observed.requests:
        assert "openai-organization" not in request.headers
        assert "openai-project" not in request.headers
        assert request.headers["authorization"] == f"Bearer {API_KEY}"


# --- the API key never leaks into errors --------------------------------------------------------


def error_texts(exc: BaseException) -> list[str]:
    """str and repr of the error and of every exception chained to it, and its stored detail."""
    texts = []
    seen: BaseException | None = exc
    while seen is not None:
        texts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, APIError):
        texts.append(json.dumps(exc.as_detail()))
    return texts


def assert_key_absent(exc: BaseException, key: str) -> None:
    secret_part = key.split("-")[2]
    for text in error_texts(exc):
        assert key not in text
        assert secret_part not in text


async def _server_error(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.faults.get.server_error = 1.0
    return await raised(client.get(rid))


async def _rate_limited(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.faults.retry_after = 0.01
    fake.state.faults.get.rate_limit = 1.0
    return await raised(client.get(rid))


async def _dropped(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.faults.get.drop = 1.0
    return await raised(client.get(rid))


async def _malformed(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.faults.get.malformed_json = 1.0
    return await raised(client.get(rid))


async def _html(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.faults.get.wrong_content_type = 1.0
    return await raised(client.get(rid))


async def _timed_out(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.faults.hang_seconds = 30.0
    fake.state.faults.get.hang = 1.0
    return await raised(client.get(rid, retry=RetryPolicy(attempts=1)))


async def _quota(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.faults.get.quota = 1.0
    return await raised(client.get(rid))


async def _paused(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.faults.get.quota = 1.0
    await raised(client.get(rid))
    return await raised(client.get(rid))


async def _unauthorized(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    fake.state.api_key = "sk-rotated-key"
    return await raised(client.get(rid))


async def _not_found(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    return await raised(client.get("resp_doesnotexist"))


async def _rejected(fake: FakeServer, client: ResponsesClient, rid: str) -> APIError:
    finished = await client.create(FINISHED)
    return await raised(client.cancel(finished["id"]))


LEAK_CASES = {
    "server_error": (_server_error, TransientError),
    "rate_limit": (_rate_limited, TransientError),
    "dropped": (_dropped, TransientError),
    "malformed_json": (_malformed, TransientError),
    "wrong_content_type": (_html, TransientError),
    "timeout": (_timed_out, TransientError),
    "quota": (_quota, AccountError),
    "paused": (_paused, AccountPaused),
    "unauthorized": (_unauthorized, AccountError),
    "not_found": (_not_found, NotFound),
    "rejected": (_rejected, RequestRejected),
}


@pytest.mark.parametrize("case", LEAK_CASES)
async def test_the_api_key_never_appears_in_an_error(case: str, fake: FakeServer, make_client: MakeClient) -> None:
    provoke, error_type = LEAK_CASES[case]
    created = await make_client().create(RUNNING)
    # Only the hang needs a short timeout; elsewhere a busy machine must not turn the case into one.
    client = make_client(request_timeout=0.2 if case == "timeout" else 5.0, organization="org_abc")

    exc = await provoke(fake, client, created["id"])

    assert type(exc) is error_type
    assert_key_absent(exc, API_KEY)


async def test_a_wrong_key_never_appears_in_the_401_error(fake: FakeServer, make_client: MakeClient) -> None:
    client = make_client(key=WRONG_KEY)

    exc = await raised(client.get("resp_abc"))
    paused = await raised(client.get("resp_abc"))

    assert type(exc) is AccountError and exc.status == 401
    assert type(paused) is AccountPaused
    assert_key_absent(exc, WRONG_KEY)
    assert_key_absent(paused, WRONG_KEY)


async def test_the_key_is_redacted_even_when_the_server_echoes_it_in_a_401_message() -> None:
    async def echo_key(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A 401 with the presented key echoed in its message, as some proxies and self-hosted
        # servers answer.
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        presented = next(
            line.split(":", 1)[1].strip().removeprefix("Bearer ")
            for line in head.split("\r\n")
            if line.lower().startswith("authorization:")
        )
        body = json.dumps(
            {
                "error": {
                    "message": f"Incorrect API key provided: {presented}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        )
        writer.write(
            f"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n{body}".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo_key, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = ResponsesClient(
        AccountConfig(name="default", base_url=f"http://127.0.0.1:{port}/v1"), WRONG_KEY, retry=FAST
    )
    try:
        exc = await raised(client.get("resp_abc"))
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()

    assert type(exc) is AccountError and exc.status == 401
    assert "Incorrect API key provided: [redacted]" in exc.message  # the echo did reach the client
    assert_key_absent(exc, WRONG_KEY)


# --- max_concurrency ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_no_more_than_max_concurrency_requests_are_in_flight_at_once(
    limit: int, fake: FakeServer, make_client: MakeClient
) -> None:
    observed = Observed()
    client = make_client(max_concurrency=limit, observed=observed)
    created = await client.create(RUNNING)
    slow = 0.15
    fake.state.faults.slow_seconds = slow
    fake.state.faults.get.slow = 1.0
    calls = 8

    started = time.monotonic()
    replies = await asyncio.gather(*(client.get(created["id"]) for _ in range(calls)))
    elapsed = time.monotonic() - started

    assert [r["id"] for r in replies] == [created["id"]] * calls
    assert observed.peak == limit  # never more, and the limit is actually used
    assert elapsed >= (calls / limit) * slow - 0.02
    # The server's own record: any limit+1 consecutive GETs it served span a slow reply or more.
    gets = sorted(fake.state.snapshot()["responses"][created["id"]]["gets"])
    assert len(gets) == calls
    assert all(gets[i + limit] - gets[i] >= slow - 0.03 for i in range(calls - limit))


async def test_without_a_tight_limit_the_same_requests_overlap(fake: FakeServer, make_client: MakeClient) -> None:
    # The control for the test above: the measurement does see more than 2 in flight.
    observed = Observed()
    client = make_client(max_concurrency=16, observed=observed)
    created = await client.create(RUNNING)
    fake.state.faults.slow_seconds = 0.15
    fake.state.faults.get.slow = 1.0

    await asyncio.gather(*(client.get(created["id"]) for _ in range(8)))

    assert observed.peak == 8


async def test_deadline_looks_and_cancels_have_a_lane_of_their_own_as_wide_as_deadline_concurrency(
    fake: FakeServer, make_client: MakeClient
) -> None:
    observed = Observed()
    client = make_client(max_concurrency=1, deadline_concurrency=3, observed=observed)
    created = await client.create(RUNNING)
    fake.state.faults.slow_seconds = 0.15
    fake.state.faults.get.slow = 1.0

    polls = [asyncio.create_task(client.get(created["id"])) for _ in range(2)]
    await asyncio.gather(*(client.get(created["id"], priority=True) for _ in range(6)), *polls)

    assert observed.peak == 1 + 3  # one poll and three deadline looks at once, never more


# --- valid_id ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response_id",
    [
        "resp_abc",
        "resp_68af4030592c81938ec0a5fbab4a3e9f05438e46b5f69a3b",
        "abc-DEF_1",
        "chatcmpl-123",
        "0",
        "_",
        "a" * 256,
    ],
)
def test_valid_id_accepts_letters_digits_underscore_and_dash(response_id: str) -> None:
    assert valid_id(response_id) is True


@pytest.mark.parametrize(
    "response_id",
    [
        pytest.param("", id="empty"),
        pytest.param(" ", id="space"),
        pytest.param("resp abc", id="inner-space"),
        pytest.param(" resp_abc", id="leading-space"),
        pytest.param("resp/abc", id="slash"),
        pytest.param("../resp_abc", id="dotdot-slash"),
        pytest.param("..", id="dotdot"),
        pytest.param("resp.abc", id="dot"),
        pytest.param("resp_abc?x=1", id="query"),
        pytest.param("resp_abc#x", id="fragment"),
        pytest.param("resp_%2F", id="percent"),
        pytest.param("resp_é", id="unicode-letter"),
        pytest.param("resp_١٢٣", id="unicode-digits"),
        pytest.param("ｒｅｓｐ", id="fullwidth"),
        pytest.param("a" * 300, id="300-chars"),
        pytest.param("a" * 257, id="257-chars"),
        pytest.param("resp_abc\n", id="trailing-newline"),
        pytest.param("resp_abc\r", id="trailing-cr"),
        pytest.param("resp_abc\x00", id="nul"),
    ],
)
def test_valid_id_rejects_anything_else(response_id: str) -> None:
    assert valid_id(response_id) is False


@pytest.mark.parametrize("brief", [False, True], ids=["aiohttp", "native"])
@pytest.mark.parametrize("fault", ["malformed_json", "server_error", "drop", "hang"])
async def test_a_create_that_may_have_reached_the_server_is_not_sent_again(
    fake: FakeServer, make_client: MakeClient, fault: str, brief: bool
) -> None:
    setattr(fake.state.faults.create, fault, 1.0)
    fake.state.faults.hang_seconds = 1.0
    # Only the hang needs a timeout shorter than it; elsewhere a busy machine must not turn the case into one.
    timeout = 0.3 if fault == "hang" else 5.0
    client = make_client(retry=RetryPolicy(attempts=4, base=0.01, cap=0.05), request_timeout=timeout, brief=brief)
    with pytest.raises(TransientError):
        await client.create({"model": "o3-pro", "input": "x", "background": True})
    assert requests(fake, "create") == 1


async def test_a_rate_limited_create_is_retried_because_the_server_refused_it_unprocessed(
    fake: FakeServer, make_client: MakeClient
) -> None:
    fake.state.faults.create.rate_limit = 1.0
    fake.state.faults.retry_after = 0.01
    client = make_client(retry=RetryPolicy(attempts=3, base=0.01, cap=0.05))
    with pytest.raises(TransientError):
        await client.create({"model": "o3-pro", "input": "x", "background": True})
    assert requests(fake, "create") == 3


@pytest.mark.parametrize("brief", [False, True], ids=["aiohttp", "native"])
async def test_a_create_that_could_not_connect_is_retried(fake: FakeServer, unused_tcp_port: int, brief: bool) -> None:
    config = AccountConfig(name="default", base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", request_timeout=1.0)
    observed = Observed()
    client = ResponsesClient(
        config, API_KEY, retry=RetryPolicy(attempts=3, base=0.01, cap=0.02), event_hooks=observed.hooks, brief=brief
    )
    try:
        exc = await raised(client.create({"model": "o3-pro", "input": "x", "background": True}))
    finally:
        await client.aclose()
    assert type(exc) is TransientError and not exc.delivered
    assert "could not connect" in str(exc)
    assert len(observed.requests) == 3


# --- servers of a test's own: drops, over-long and stalled replies --------------------------------


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Scripted"], Awaitable[None]]


class Scripted:
    """A server on a local port whose every connection runs `serve(reader, writer, self)`; it
    keeps the request lines read with `read_request` and counts connections that ended."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.requests: list[str] = []
        self.ended = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def read_request(self, reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head.split(b"\r\n")[0].decode())
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
        )
        await reader.readexactly(length)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.serve(reader, writer, self)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.ended += 1

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def reply(body: bytes, *head: str) -> bytes:
    fields = "".join(f"{line}\r\n" for line in head) or f"Content-Length: {len(body)}\r\n"
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{fields}\r\n".encode() + body


@pytest.fixture(params=[False, True], ids=["aiohttp", "native"])
async def client_to(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., ResponsesClient]]:
    """A client on each transport: the daemon's (aiohttp) and a CLI command's (httpx2's own)."""
    clients: list[ResponsesClient] = []

    def make(
        url: str, retry: RetryPolicy = RetryPolicy(attempts=3, base=0.01, cap=0.02), **account: Any
    ) -> ResponsesClient:
        config = AccountConfig(name="default", base_url=url, **{"request_timeout": 5.0, **account})
        clients.append(ResponsesClient(config, API_KEY, retry=retry, brief=request.param))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def test_a_create_dropped_after_it_was_read_is_may_have_been_created_and_sent_once(client_to) -> None:
    # The first request (a GET) is answered and its connection kept alive; the create then
    # goes on that connection, is read, and the connection is closed without an answer.
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Scripted) -> None:
        await server.read_request(reader)
        writer.write(reply(b'{"id": "resp_1", "status": "queued"}'))
        await writer.drain()
        await server.read_request(reader)

    async with Scripted(serve) as server:
        client = client_to(server.url)
        assert (await client.get("resp_1"))["id"] == "resp_1"
        exc = await raised(client.create({"model": "o3-pro", "input": "x", "background": True}))
        await eventually(lambda: server.ended == 1)

    assert type(exc) is TransientError and exc.delivered  # `tether submit`: "may have created a response"
    assert "connection error on POST /responses" in str(exc)
    assert server.requests == ["GET /v1/responses/resp_1 HTTP/1.1", "POST /v1/responses HTTP/1.1"]


async def test_a_create_on_a_fresh_connection_dropped_after_it_was_read_is_sent_once(client_to) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Scripted) -> None:
        await server.read_request(reader)

    async with Scripted(serve) as server:
        exc = await raised(client_to(server.url).create({"model": "o3-pro", "input": "x", "background": True}))

    assert type(exc) is TransientError and exc.delivered
    assert server.requests == ["POST /v1/responses HTTP/1.1"]


async def test_a_cookie_a_server_sets_is_never_sent_back(client_to) -> None:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Scripted) -> None:
        while True:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(
                reply(b'{"id": "resp_1", "status": "queued"}', "Content-Length: 36", "Set-Cookie: lb=abc; Path=/")
            )
            await writer.drain()

    async with Scripted(serve) as server:
        client = client_to(server.url)
        await client.get("resp_1")
        await client.get("resp_1")

    assert len(heads) == 2
    assert b"cookie:" not in heads[1].lower(), heads[1]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_reply_longer_than_max_reply_bytes_is_a_transient_error_not_read_whole(client_to, framing: str) -> None:
    bound = 64 * 1024
    sent: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Scripted) -> None:
        await server.read_request(reader)
        piece = b"x" * 65536
        total = 1024 * len(piece)  # 64 MiB, unless the client hangs up first
        if framing == "chunked":
            writer.write(reply(b"", "Transfer-Encoding: chunked"))
            piece = b"%x\r\n%s\r\n" % (len(piece), piece)
        else:
            writer.write(reply(b"", f"Content-Length: {total}"))
        sent.append(0)
        for _ in range(1024):
            writer.write(piece)
            await writer.drain()
            sent[-1] += len(piece)

    async with Scripted(serve) as server:
        exc = await raised(client_to(server.url, max_reply_bytes=bound).get("resp_1"))
        await eventually(lambda: server.ended == 3)

    assert type(exc) is TransientError and exc.delivered and exc.status == 200
    assert "longer than max_reply_bytes (65536 bytes)" in str(exc)
    assert len(server.requests) == 3  # retried as any transient error of a GET
    assert max(sent) < 16 * 1024 * 1024  # the client hung up long before the 64 MiB were sent


async def test_a_reply_at_max_reply_bytes_is_read(client_to) -> None:
    body = json.dumps({"id": "resp_1", "pad": "x" * (4096 - 27)}).encode()
    assert len(body) == 4096

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Scripted) -> None:
        await server.read_request(reader)
        writer.write(reply(body))
        await writer.drain()

    async with Scripted(serve) as server:
        assert (await client_to(server.url, max_reply_bytes=4096).get("resp_1"))["id"] == "resp_1"


@pytest.mark.parametrize("pace", ["stalls", "trickles"])
async def test_a_reply_that_stalls_or_trickles_is_cut_at_the_request_timeout(client_to, pace: str) -> None:
    body = b'{"id": "resp_1"}' + b" " * 1000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Scripted) -> None:
        await server.read_request(reader)
        writer.write(reply(b"", f"Content-Length: {len(body)}") + body[:10])
        await writer.drain()
        for byte in body[10:] if pace == "trickles" else []:
            await asyncio.sleep(0.05)  # traffic shaping: a byte each 50 ms, well under the timeout
            writer.write(bytes([byte]))
            await writer.drain()
        await reader.read()  # stalls until the client hangs up

    async with Scripted(serve) as server:
        client = client_to(server.url, retry=NO_RETRY, request_timeout=0.5)
        started = time.monotonic()
        exc = await raised(client.get("resp_1"))
        elapsed = time.monotonic() - started

    assert type(exc) is TransientError and exc.delivered
    assert "timeout on GET /responses/resp_1" in str(exc)
    # Cut at the timeout (a busy machine may be late to notice), not left to hang (trickled, the
    # reply would take 50 s).
    assert 0.45 <= elapsed < 20.0


async def eventually(condition: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.005)
