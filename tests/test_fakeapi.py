"""The fake Responses API, driven over real HTTP; every payload it returns is checked against the
official SDK's models so the fake cannot drift from the real schema."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.shared import ErrorObject
from pydantic import TypeAdapter

from tether.fakeapi import FakeServer, FakeState, Faults, RouteFaults

KEY = "sk-test-key"


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """The first truthy value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)
    return value


def error_of(call: Callable[..., Any], *args: Any) -> BaseException | None:
    try:
        call(*args, timeout=10)
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        return e
    return None


def valid_response(reply: httpx.Response) -> Response:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    return Response.model_validate(reply.json())


def valid_error(reply: httpx.Response, status: int) -> ErrorObject:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    return ErrorObject.model_validate(body["error"])


@pytest.fixture
def server():
    with FakeServer(api_key=KEY, run=30) as srv:  # tests that need a response to end say so
        yield srv


@pytest.fixture
def client(server: FakeServer):
    # A long timeout: on a busy machine a reply may be seconds late, which is not what is tested here.
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def create(client: httpx.Client, **body: Any) -> Response:
    return valid_response(client.post("/responses", json={"model": "o3-pro", "background": True, **body}))


def get(client: httpx.Client, response_id: str) -> Response:
    return valid_response(client.get(f"/responses/{response_id}"))


# --- the API's behaviour ---------------------------------------------------------------------


def test_a_background_response_is_queued_then_in_progress_then_completed_with_usage(client, server):
    metadata = {
        "team": "search",
        "fake_queue": "0.5",  # each status lasts long enough to be seen by a poll on a busy machine
        "fake_run": "1",
        "fake_input_tokens": "1200",
        "fake_cached_tokens": "200",
        "fake_output_tokens": "900",
        "fake_reasoning_tokens": "700",
    }
    created = create(client, metadata=metadata, max_output_tokens=4000)
    assert created.status == "queued" and created.background is True
    assert created.id.startswith("resp_") and created.object == "response"
    assert created.usage is None and created.output == []
    assert created.metadata == metadata and created.max_output_tokens == 4000
    assert abs(created.created_at - time.time()) < 2

    seen = [created.status]

    def completed() -> bool:
        seen.append(get(client, created.id).status)
        return seen[-1] == "completed"

    wait_until(completed)
    done = get(client, created.id)
    assert list(dict.fromkeys(seen)) == ["queued", "in_progress", "completed"]

    assert done.usage is not None
    assert done.usage.input_tokens == 1200 and done.usage.input_tokens_details.cached_tokens == 200
    assert done.usage.output_tokens == 900 and done.usage.output_tokens_details.reasoning_tokens == 700
    assert done.usage.total_tokens == 2100
    assert done.output_text == "Simulated answer from o3-pro."
    assert done.completed_at is not None and done.created_at <= done.completed_at
    assert done.metadata == metadata and done.service_tier == "default" and done.error is None


def test_a_background_response_without_queue_time_starts_in_progress(client):
    assert create(client).status == "in_progress"


def test_a_synchronous_create_returns_the_finished_object_after_the_simulated_time(client):
    started = time.monotonic()
    done = create(client, background=False, metadata={"fake_queue": "0.1", "fake_run": "0.1"})
    assert time.monotonic() - started >= 0.2
    assert done.status == "completed" and done.background is False and done.usage is not None


@pytest.mark.parametrize(
    ("outcome", "check"),
    [
        ("failed", lambda r: r.error is not None and r.error.code == "server_error" and r.error.message),
        (
            "incomplete",
            lambda r: r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens",
        ),
    ],
)
def test_failed_and_incomplete_outcomes_carry_their_details_and_usage(client, outcome, check):
    done = create(client, background=False, metadata={"fake_run": "0", "fake_outcome": outcome})
    assert done.status == outcome and check(done) and done.usage is not None


def test_server_defaults_apply_when_metadata_is_silent():
    with FakeServer(api_key=None, queue=0, run=0, outcome="failed", input_tokens=7, output_tokens=5) as srv:
        done = valid_response(httpx.post(f"{srv.base_url}/responses", json={"model": "m", "background": True}))
    assert done.status == "failed" and done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens) == (7, 5)


async def test_the_official_async_sdk_creates_retrieves_and_cancels(server):
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk:
        created = await sdk.responses.create(
            model="o3-pro", input="hi", background=True, service_tier="flex", metadata={"fake_run": "30"}
        )
        assert (await sdk.responses.retrieve(created.id)).status == "in_progress"
        cancelled = await sdk.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.usage is None and cancelled.service_tier == "flex"


STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def test_a_streamed_create_sends_sdk_valid_events_each_when_the_simulation_reaches_it(server):
    """The official SDK reads the stream; every event validates against its models, the deltas
    add up to the answer, and the first event arrives long before the response finishes."""
    sdk = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    arrivals: list[tuple[float, Any]] = []
    with sdk.responses.create(
        model="o3-pro", input="hi", background=True, stream=True, metadata={"fake_queue": "2", "fake_run": "0.6"}
    ) as stream:
        for event in stream:
            if not arrivals:  # the stand-in's own view when the first event is in the SDK's hands
                status_at_first = server.state.record(event.response.id).status(time.time())
            arrivals.append((time.time(), event))
    events = [STREAM_EVENT.validate_python(event.model_dump(mode="json")) for _, event in arrivals]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created, completed = events[0].response, events[-1].response
    assert created.status == "queued" and created.background and completed.status == "completed"
    assert completed.id == created.id and completed.usage is not None
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == completed.output_text == "Simulated answer from o3-pro."
    # Created at once (still queued when it arrived), completed when the simulation finished.
    assert status_at_first == "queued" and arrivals[-1][0] >= server.state.record(created.id).finishes_at
    assert (
        get(httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}), created.id).status
        == "completed"
    )


def test_a_background_stream_resumes_after_a_sequence_number_without_a_gap_or_a_repeat(server):
    sdk = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    with sdk.responses.create(
        model="o3-pro", input="hi", background=True, stream=True, metadata={"fake_run": "0.5"}
    ) as stream:
        first = [next(iter(stream)) for _ in range(3)]  # then the client leaves
    rid = first[0].response.id
    with sdk.responses.retrieve(rid, stream=True, starting_after=2) as resumed:
        rest = list(resumed)
    assert [e.sequence_number for e in first + rest] == list(range(len(first) + len(rest)))
    assert rest[-1].type == "response.completed" and rest[-1].response.id == rid
    for event in rest:
        STREAM_EVENT.validate_python(event.model_dump(mode="json"))
    with sdk.responses.retrieve(rid, stream=True) as again:  # from the start, all at once now
        assert [e.type for e in again] == [e.type for e in first + rest]


def test_a_cancel_ends_the_stream_and_a_synchronous_response_cannot_be_resumed(client, server):
    sdk = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    with sdk.responses.create(model="o3-pro", input="hi", background=True, stream=True) as stream:
        events = iter(stream)
        rid = next(events).response.id
        valid_response(client.post(f"/responses/{rid}/cancel"))
        assert all(e.type != "response.completed" for e in events)
    synchronous = create(client, background=False, metadata={"fake_run": "0"})
    valid_error(client.get(f"/responses/{synchronous.id}", params={"stream": "true"}), 400)
    valid_error(client.get(f"/responses/{rid}", params={"stream": "true", "starting_after": "x"}), 400)


def test_cancelling_an_active_response_cancels_it_for_good(client, server):
    created = create(client, metadata={"fake_run": "0.5"})
    cancelled = valid_response(client.post(f"/responses/{created.id}/cancel"))
    assert cancelled.status == "cancelled" and cancelled.usage is None

    record = server.state.record(created.id)
    wait_until(lambda: time.time() > record.finishes_at)
    assert get(client, created.id).status == "cancelled"
    assert [(c.status, c.changed) for c in record.cancels] == [("in_progress", True)]
    assert record.cancel_changed


def test_cancelling_a_cancelled_response_returns_it_again(client, server):
    created = create(client)
    first = valid_response(client.post(f"/responses/{created.id}/cancel"))
    again = valid_response(client.post(f"/responses/{created.id}/cancel"))
    assert first.status == again.status == "cancelled"
    calls = server.state.record(created.id).cancels
    assert [(c.status, c.changed) for c in calls] == [("in_progress", True), ("cancelled", False)]


@pytest.mark.parametrize("background", [True, False])
def test_cancelling_a_finished_response_is_refused_with_400(client, server, background):
    done = create(client, background=background, metadata={"fake_run": "0"})
    error = valid_error(client.post(f"/responses/{done.id}/cancel"), 400)
    assert (error.message, error.type, error.code, error.param) == (
        "Cannot cancel a completed response.",
        "invalid_request_error",
        None,
        None,
    )
    assert get(client, done.id).status == "completed"
    assert not server.state.record(done.id).cancel_changed


@pytest.mark.parametrize("answer", [409, 200])
def test_the_answer_to_cancelling_a_finished_response_is_configurable(answer):
    with (
        FakeServer(api_key=None, run=0, cancel_finished_status=answer) as srv,
        httpx.Client(base_url=srv.base_url) as c,
    ):
        done = create(c)
        reply = c.post(f"/responses/{done.id}/cancel")
        if answer == 200:
            assert valid_response(reply).status == "completed"
        else:
            assert valid_error(reply, 409).message == "Cannot cancel a completed response."


def test_a_synchronous_response_cannot_be_cancelled(client, server):
    record = server.state.create("o3-pro", background=False, metadata={"fake_run": "30"})
    error = valid_error(client.post(f"/responses/{record.id}/cancel"), 400)
    assert "synchronous" in error.message
    assert get(client, record.id).status == "in_progress"


@pytest.mark.parametrize("method,path", [("GET", "/responses/resp_nope"), ("POST", "/responses/resp_nope/cancel")])
def test_an_unknown_id_is_404_with_an_openai_error_body(client, method, path):
    error = valid_error(client.request(method, path), 404)
    assert (error.message, error.type, error.code) == (
        "Response with id 'resp_nope' not found.",
        "invalid_request_error",
        None,
    )


def test_an_unknown_route_is_404(client):
    assert valid_error(client.get("/models"), 404).message == "Invalid URL (GET /v1/models)"


@pytest.mark.parametrize(
    "body,param",
    [
        (b"not json", None),
        (b"[]", None),
        (b'{"background": true}', "model"),
        (b'{"model": 3}', "model"),
        (b'{"model": "m", "background": "yes"}', "background"),
        (b'{"model": "m", "metadata": {"n": 1}}', "metadata.n"),
        (b'{"model": "m", "metadata": {"fake_outcome": "exploded"}}', "metadata"),
        (b'{"model": "m", "metadata": {"fake_run": "soon"}}', "metadata.fake_run"),
        (b'{"model": "m", "metadata": {"fake_output_tokens": "5", "fake_reasoning_tokens": "9"}}', "metadata"),
        (json.dumps({"model": "m", "metadata": {f"k{i}": "v" for i in range(17)}}).encode(), "metadata"),
        (b'{"model": "m", "service_tier": "turbo"}', "service_tier"),
    ],
)
def test_an_invalid_create_body_is_400_and_creates_nothing(client, server, body, param):
    reply = client.post("/responses", content=body, headers={"content-type": "application/json"})
    error = valid_error(reply, 400)
    assert error.param == param and error.type == "invalid_request_error"
    assert server.state.records() == []


@pytest.mark.parametrize("authorization", [None, "Bearer sk-wrong", KEY])
def test_a_missing_or_wrong_key_is_401_invalid_api_key(server, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = httpx.get(f"{server.base_url}/responses/resp_x", headers=headers)
    error = valid_error(reply, 401)
    assert error.code == "invalid_api_key" and KEY not in error.message


def test_a_server_without_a_key_accepts_any():
    with FakeServer(api_key=None) as srv:
        reply = httpx.post(
            f"{srv.base_url}/responses", json={"model": "m", "background": True}, headers={"Authorization": "Bearer x"}
        )
        assert valid_response(reply).status == "in_progress"


def test_organization_and_project_headers_are_recorded(server):
    sdk = openai.OpenAI(base_url=server.base_url, api_key=KEY, organization="org_a", project="proj_b")
    Response.model_validate(sdk.responses.create(model="o3-pro", background=True).model_dump())
    assert server.state.client_headers == {("org_a", "proj_b"): 1}


def test_ids_can_use_another_prefix():
    with FakeServer(api_key=KEY, id_prefix="gen-") as srv:
        sdk = openai.OpenAI(base_url=srv.base_url, api_key=KEY)
        created = sdk.responses.create(model="qwen3", background=True)
        assert created.id.startswith("gen-") and sdk.responses.retrieve(created.id).id == created.id


def test_a_backdated_response_is_created_in_the_past_and_plays_out_from_then(client, server):
    an_hour_ago = time.time() - 3600
    request = {
        "model": "o3-pro",
        "created_at": an_hour_ago,
        "metadata": {"fake_queue": "600", "fake_run": "7200"},
        "background": True,
    }
    backdated = valid_response(httpx.post(f"{server.url}/_fake/responses", json=request))
    assert backdated.created_at == int(an_hour_ago) and backdated.status == "in_progress"
    assert get(client, backdated.id).created_at == int(an_hour_ago)
    assert server.state.record(backdated.id).created_at == an_hour_ago
    assert valid_error(httpx.post(f"{server.url}/_fake/responses", json={"model": "m"}), 400).param == "created_at"


def test_the_state_records_creation_every_get_and_every_cancel(client, server):
    created = create(client, metadata={"k": "v"})
    before_gets = time.time()
    get(client, created.id)
    get(client, created.id)
    client.post(f"/responses/{created.id}/cancel")
    client.post(f"/responses/{created.id}/cancel")

    snapshot = httpx.get(f"{server.url}/_fake/state").json()
    record = snapshot["responses"][created.id]
    assert abs(record["created_at"] - created.created_at) < 1
    assert len(record["gets"]) == 2 and all(before_gets <= t <= snapshot["now"] for t in record["gets"])
    assert [(c["status"], c["changed"]) for c in record["cancels"]] == [("in_progress", True), ("cancelled", False)]
    assert record["cancels"][0]["at"] <= record["cancels"][1]["at"]
    assert record["status"] == "cancelled" and record["cancel_changed"] is True
    assert record["finished_at"] == record["cancels"][0]["at"]
    assert record["metadata"] == {"k": "v"} and record["model"] == "o3-pro" and record["background"] is True
    assert snapshot["requests"] == {"create": 1, "get": 2, "cancel": 2}
    assert snapshot == server.state.snapshot() | {"now": snapshot["now"]}


def test_many_concurrent_keep_alive_connections_are_served(server):
    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, limits=limits
        ) as c:
            created = Response.model_validate(
                (await c.post("/responses", json={"model": "m", "background": True})).json()
            )
            replies = await asyncio.gather(*(c.get(f"/responses/{created.id}") for _ in range(300)))
        return [r.status_code for r in replies]

    assert asyncio.run(burst()) == [200] * 300
    assert server.state.requests["get"] == 300


def raw_exchange(server, data: bytes) -> bytes:
    """Send raw bytes on one connection and read until the server closes it."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    ids = [server.state.create("o3-pro", background=True).id for _ in range(3)]
    auth = f"Authorization: Bearer {KEY}\r\nHost: x\r\n"
    requests = [f"GET /v1/responses/{rid} HTTP/1.1\r\n{auth}\r\n" for rid in ids]
    requests.append(
        f"POST /v1/responses/{ids[0]}/cancel HTTP/1.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    received = raw_exchange(server, "".join(requests).encode())

    replies = received.split(b"HTTP/1.1 ")[1:]
    assert [reply.split(b" ", 1)[0] for reply in replies] == [b"200"] * 4
    bodies = [json.loads(reply.split(b"\r\n\r\n", 1)[1]) for reply in replies]
    assert [body["id"] for body in bodies] == [*ids, ids[0]]
    assert bodies[-1]["status"] == "cancelled"
    assert b"connection: close" in replies[-1].lower()  # and the server closed it: recv ended


def test_a_request_body_sent_in_chunks_is_read_whole(server):
    body = json.dumps({"model": "o3-pro", "background": True, "metadata": {"k": "v"}}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    head = f"POST /v1/responses HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    received = raw_exchange(server, head.encode() + chunked)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received[:200]
    created = Response.model_validate(json.loads(received.split(b"\r\n\r\n", 1)[1]))
    assert created.metadata == {"k": "v"}


def test_bytes_that_are_not_http_get_a_400_and_the_connection_closed_and_the_server_goes_on(server):
    received = raw_exchange(server, b"\x16\x03\x01 this is not HTTP\r\n\r\n")  # until the server closes
    assert received.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), received[:200]
    created = httpx.post(
        f"{server.base_url}/responses",
        json={"model": "m", "background": True},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert valid_response(created).id in server.state.snapshot()["responses"]


def test_stop_is_quick_and_leaves_no_thread_or_port_behind():
    before = set(threading.enumerate())
    srv = FakeServer().start()
    address = (srv.host, srv.port)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 3.0  # STOP_GRACE (0.05 s), and room for a busy machine
    assert set(threading.enumerate()) == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=1)


def test_the_command_line_prints_its_base_url_and_stops_on_sigterm_quietly():
    command = [
        sys.executable,
        "-m",
        "tether.fakeapi",
        "--port",
        "0",
        "--api-key",
        KEY,
        "--run",
        "0",
        "--id-prefix",
        "cli_",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as kept_alive:
                reply = kept_alive.post(f"{base_url}/responses", json={"model": "m", "background": True})
                assert valid_response(reply).id.startswith("cli_")
                proc.send_signal(signal.SIGTERM)  # with that connection still open
                assert proc.wait(timeout=5) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            proc.kill()


# --- faults ------------------------------------------------------------------------------------


def test_server_errors_are_500_502_or_503_and_take_no_effect(client, server):
    created = create(client, metadata={"fake_run": "30"})
    server.state.faults = Faults(seed=1, create=RouteFaults(server_error=1), cancel=RouteFaults(server_error=1))
    statuses = {client.post("/responses", json={"model": "m"}).status_code for _ in range(30)}
    assert statuses == {500, 502, 503}
    reply = client.post(f"/responses/{created.id}/cancel")
    assert reply.status_code >= 500
    if reply.headers["content-type"] == "application/json":
        valid_error(reply, reply.status_code)
    assert len(server.state.records()) == 1
    assert get(client, created.id).status == "in_progress"
    assert server.state.fault_counts["server_error"] == 31


def test_a_rate_limit_is_429_with_retry_after_and_ratelimit_headers(client, server):
    created = create(client)
    server.state.faults = Faults(get=RouteFaults(rate_limit=1), retry_after=0.25)
    reply = client.get(f"/responses/{created.id}")
    assert valid_error(reply, 429).code == "rate_limit_exceeded"
    assert float(reply.headers["retry-after"]) == 0.25
    assert reply.headers["x-ratelimit-remaining-requests"] == "0"
    assert {"x-ratelimit-limit-requests", "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens"} <= set(
        reply.headers
    )
    sdk = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        sdk.responses.retrieve(created.id)
    assert server.state.fault_counts["rate_limit"] == 2


def test_an_exhausted_quota_is_429_insufficient_quota_without_retry_after(client, server):
    server.state.faults.create.quota = 1
    reply = client.post("/responses", json={"model": "m"})
    assert valid_error(reply, 429).code == "insufficient_quota"
    assert "retry-after" not in reply.headers
    assert server.state.records() == [] and server.state.fault_counts["quota"] == 1


def test_a_dropped_connection_is_a_protocol_error_not_a_500(client, server):
    created = create(client)
    server.state.faults.get.drop = 1
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/responses/{created.id}")
    sdk = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        sdk.responses.retrieve(created.id)
    assert server.state.fault_counts["drop"] == 2
    server.state.faults.get.drop = 0
    assert get(client, created.id).id == created.id


def test_a_hung_request_outlasts_the_client_timeout_and_does_not_delay_stop():
    srv = FakeServer(api_key=None).start()
    try:
        created = valid_response(httpx.post(f"{srv.base_url}/responses", json={"model": "m", "background": True}))
        srv.state.faults.get.hang = 1
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{srv.base_url}/responses/{created.id}", timeout=0.2)
        outcome: list[BaseException] = []
        waiter = threading.Thread(
            target=lambda: outcome.append(error_of(httpx.get, f"{srv.base_url}/responses/{created.id}"))
        )
        waiter.start()
        wait_until(lambda: srv.state.fault_counts["hang"] == 2)
    finally:
        started = time.monotonic()
        srv.stop()
    assert time.monotonic() - started < 3.0  # not held up by the hung request (its client waits 10 s)
    waiter.join(30)
    assert isinstance(outcome[0], httpx.RemoteProtocolError)


def test_a_slow_reply_arrives_after_the_delay(client, server):
    created = create(client)
    server.state.faults = Faults(get=RouteFaults(slow=1), slow_seconds=0.2)
    started = time.monotonic()
    assert get(client, created.id).id == created.id
    assert time.monotonic() - started >= 0.2 and server.state.fault_counts["slow"] == 1


def test_a_malformed_json_body_is_a_truncated_200(client, server):
    created = create(client)
    server.state.faults.get.malformed_json = 1
    reply = client.get(f"/responses/{created.id}")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        reply.json()
    assert reply.text.startswith('{"id": ') and server.state.fault_counts["malformed_json"] == 1


def test_a_wrong_content_type_is_an_html_200(client, server):
    created = create(client)
    server.state.faults.get.wrong_content_type = 1
    reply = client.get(f"/responses/{created.id}")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert reply.text.startswith("<html>") and server.state.fault_counts["wrong_content_type"] == 1


def test_an_unknown_status_is_the_only_thing_off_schema(client, server):
    created = create(client)
    server.state.faults.get.unknown_status = 1
    body = client.get(f"/responses/{created.id}").json()
    assert body["status"] == "paused"
    with pytest.raises(ValueError):
        Response.model_validate(body)
    Response.model_validate(body | {"status": "in_progress"})


def test_extra_fields_are_tolerated_by_the_sdk_schema(client, server):
    created = create(client)
    server.state.faults.get.extra_fields = 1
    reply = client.get(f"/responses/{created.id}")
    assert {"vendor_extension", "x_trace_id"} <= set(reply.json())
    assert valid_response(reply).id == created.id


def test_missing_fields_leave_only_what_the_sdk_requires(client, server):
    done = create(client, background=False, metadata={"fake_run": "0"})
    server.state.faults.get.missing_fields = 1
    reply = client.get(f"/responses/{done.id}")
    response = valid_response(reply)
    assert response.status == "completed" and response.usage is None and response.metadata is None
    assert not {"usage", "metadata", "background", "error", "service_tier"} & set(reply.json())


def test_a_body_fault_on_cancel_garbles_the_reply_of_a_cancel_that_took_effect(client, server):
    created = create(client)
    server.state.faults.cancel.malformed_json = 1
    reply = client.post(f"/responses/{created.id}/cancel")
    with pytest.raises(json.JSONDecodeError):
        reply.json()
    assert get(client, created.id).status == "cancelled"


def test_an_outage_answers_everything_with_503_until_it_ends(client, server):
    created = create(client)
    server.state.faults.outage_for(2.0)  # long enough to be asked twice on a busy machine
    for reply in (client.get(f"/responses/{created.id}"), client.post("/responses", json={"model": "m"})):
        assert valid_error(reply, 503).type == "server_error"
    assert httpx.get(f"{server.url}/_fake/state").status_code == 200  # the admin routes stay up
    wait_until(lambda: client.get(f"/responses/{created.id}").status_code == 200)
    assert server.state.fault_counts["outage"] >= 2


def test_a_cancel_reported_cancelled_can_end_completed_with_usage(client, server):
    created = create(client, metadata={"fake_run": "30"})
    server.state.faults = Faults(cancel_then_complete=1, cancel_then_complete_after=0.1)
    cancelled = valid_response(client.post(f"/responses/{created.id}/cancel"))
    assert cancelled.status == "cancelled" and cancelled.usage is None
    done = wait_until(lambda: (r := get(client, created.id)).status == "completed" and r)
    assert done.usage is not None and done.usage.total_tokens == 1500
    record = server.state.record(created.id)
    assert record.cancel_changed and record.status(time.time()) == "completed"
    assert server.state.fault_counts["cancel_then_complete"] == 1


def test_faults_with_the_same_seed_strike_the_same_requests(client, server):
    created = create(client)

    def statuses(seed: int) -> list[int]:
        server.state.faults = Faults(seed=seed, get=RouteFaults(server_error=0.5))
        return [client.get(f"/responses/{created.id}").status_code for _ in range(20)]

    first = statuses(7)
    assert first == statuses(7) and len(set(first)) > 1 and 200 in first


def test_faults_can_be_set_over_http(client, server):
    created = create(client)
    settings = {"seed": 3, "get": {"quota": 1}, "retry_after": 2, "outage_for": 0}
    reply = httpx.post(f"{server.url}/_fake/faults", json=settings)
    assert reply.status_code == 200 and reply.json()["get"]["quota"] == 1 and reply.json()["seed"] == 3
    assert server.state.faults.get.quota == 1 and server.state.faults.retry_after == 2
    assert valid_error(client.get(f"/responses/{created.id}"), 429).code == "insufficient_quota"

    assert httpx.post(f"{server.url}/_fake/faults", json={"outage_for": 30}).status_code == 200
    assert client.get(f"/responses/{created.id}").status_code == 503
    assert httpx.post(f"{server.url}/_fake/faults", json={}).status_code == 200
    assert get(client, created.id).id == created.id

    for bad in ({"get": {"explode": 1}}, {"nonsense": 1}, {"get": 1}, {"get": {"drop": 2}}, {"retry_after": "soon"}):
        assert valid_error(httpx.post(f"{server.url}/_fake/faults", json=bad), 400).message.startswith("Invalid faults")


def test_a_state_can_be_used_in_process_without_a_server():
    state = FakeState(queue=0, run=0)
    record = state.create("m", background=True, metadata={"fake_outcome": "incomplete"})
    assert state.get(record.id).status(time.time()) == "incomplete"
    assert state.record(record.id).gets
