"""The proxy (`tether.proxy`) on a real loopback aiohttp server, in front of the stand-in, with
the official `openai` SDK as the caller and a small fake front recording what the proxy asks of
the daemon."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from conftest import API_KEY
from tether.config import parse_config
from tether.fakeapi import FakeServer
from tether.proxy import Proxy

TOKEN = "tether-server-token-0123456789"
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def config_for(base_url: str, **proxy: Any) -> Any:
    return parse_config(
        {
            "accounts": {"default": {"base_url": base_url, "api_key_env": "PROXY_TEST_KEY"}},
            "policy": [{"name": "short", "max_runtime": "2s"}, {"name": "long", "max_runtime": "1h"}],
            "proxy": {"enabled": True, **proxy},
            "server": {"listen": "127.0.0.1:8787", "token_env": "PROXY_TEST_TOKEN"},  # needed, not used here
        },
        environ={},
    )


class FakeFront:
    """Records the calls the proxy makes, each with the instant it returned."""

    def __init__(self, config: Any, refuse: str | None = None) -> None:
        self.config = config
        self.refuse = refuse
        self.calls: list[tuple[str, dict[str, Any], float]] = []

    async def track_created(self, response: dict, *, account: str, policy: str | None, labels: dict) -> dict:
        self.calls.append(
            (
                "track_created",
                {"response": response, "account": account, "policy": policy, "labels": labels},
                time.monotonic(),
            )
        )
        return {"id": response["id"]}

    async def record_manual_cancel(self, rid: str, answer: dict | None) -> None:
        self.calls.append(("record_manual_cancel", {"rid": rid, "answer": answer}, time.monotonic()))

    def budget_refusal(self, **create: Any) -> str | None:
        self.calls.append(("budget_refusal", create, time.monotonic()))
        return self.refuse

    def named(self, name: str) -> list[dict[str, Any]]:
        return [args for called, args, _ in self.calls if called == name]


@asynccontextmanager
async def serving(front: FakeFront, token: str | None = None) -> AsyncIterator[str]:
    """The proxy's routes on a loopback port: yields its OPENAI_BASE_URL."""
    proxy = Proxy(front, front.config, token)
    app = web.Application()
    app.add_routes(proxy.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()
        await proxy.close()


@pytest.fixture
def stand_in():
    with FakeServer(api_key=API_KEY, run=30) as server:
        yield server


def sdk(base_url: str, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)


async def test_a_background_create_is_tracked_before_the_sdk_gets_its_reply(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    async with serving(front) as base_url, sdk(base_url) as client:
        created = await client.responses.create(
            model="o3-pro",
            input="hi",
            background=True,
            metadata={"team": "search"},
            max_output_tokens=500,
            extra_headers={"X-Tether-Policy": "short", "X-Tether-Label": "run=nightly"},
        )
        replied = time.monotonic()
    (tracked,) = front.named("track_created")
    assert tracked["response"]["id"] == created.id and tracked["response"]["status"] == "in_progress"
    assert (tracked["account"], tracked["policy"], tracked["labels"]) == ("default", "short", {"run": "nightly"})
    assert front.calls[-1][2] <= replied
    (asked,) = front.named("budget_refusal")
    assert asked == {
        "account": "default",
        "model": "o3-pro",
        "metadata": {"team": "search"},
        "labels": {"run": "nightly"},
        "policy": "short",
        "max_output_tokens": 500,
    }
    assert stand_in.state.snapshot()["responses"][created.id]["background"] is True


async def test_the_policy_comes_from_metadata_without_a_header_and_labels_repeat(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    async with serving(front) as base_url:
        async with httpx.AsyncClient() as http:
            reply = await http.post(
                f"{base_url}/responses",
                json={"model": "o3-pro", "background": True, "metadata": {"tether_policy": "long"}},
                headers=[
                    ("Authorization", f"Bearer {API_KEY}"),
                    ("X-Tether-Label", "team=search"),
                    ("X-Tether-Label", "run = nightly"),
                ],
            )
    assert reply.status_code == 200, reply.text
    (tracked,) = front.named("track_created")
    assert tracked["policy"] == "long" and tracked["labels"] == {"team": "search", "run": "nightly"}
    assert tracked["response"] == reply.json()  # the upstream's bytes, unchanged


async def test_a_synchronous_create_is_forwarded_but_not_tracked(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    async with serving(front) as base_url, sdk(base_url) as client:
        done = await client.responses.create(model="o3-pro", input="hi", metadata={"fake_run": "0"})
    assert done.status == "completed" and front.calls == []


async def test_an_unknown_policy_or_a_bad_label_is_400_and_nothing_reaches_the_upstream(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    async with serving(front) as base_url, sdk(base_url) as client:
        for headers in ({"X-Tether-Policy": "nope"}, {"X-Tether-Label": "no-equals-sign"}):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.create(model="o3-pro", input="hi", background=True, extra_headers=headers)
            assert caught.value.status_code == 400 and API_KEY not in str(caught.value)
    assert "nope" in str(caught.value) or "no-equals-sign" in str(caught.value)
    assert stand_in.state.requests.get("create", 0) == 0 and front.named("track_created") == []


async def test_a_create_a_budget_cannot_afford_is_a_rate_limit_error_naming_it_and_never_sent(stand_in):
    front = FakeFront(config_for(stand_in.base_url), refuse="monthly-cap")
    async with serving(front) as base_url, sdk(base_url) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.responses.create(model="o3-pro", input="hi", background=True)
    assert "budget monthly-cap" in caught.value.message
    assert caught.value.code == "tether_budget_exceeded" and caught.value.body["param"] is None
    assert stand_in.state.requests.get("create", 0) == 0 and front.named("track_created") == []


async def test_a_proxied_cancel_is_forwarded_then_recorded_as_manual(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    async with serving(front) as base_url, sdk(base_url) as client:
        created = await client.responses.create(model="o3-pro", input="hi", background=True)
        cancelled = await client.responses.cancel(created.id)
        fetched = await client.responses.retrieve(created.id)
    assert cancelled.id == created.id and cancelled.status == "cancelled" and fetched.status == "cancelled"
    (recorded,) = front.named("record_manual_cancel")
    assert recorded["rid"] == created.id and recorded["answer"]["status"] == "cancelled"
    assert stand_in.state.snapshot()["responses"][created.id]["cancel_changed"] is True


async def test_a_refused_cancel_passes_through_and_is_not_recorded(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    async with serving(front) as base_url, sdk(base_url) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.cancel("resp_unknown")
        with pytest.raises(openai.NotFoundError):  # an unknown route: the stand-in's 404
            await client.models.list()
    assert front.named("record_manual_cancel") == []


async def test_a_body_over_max_body_is_413_and_never_sent(stand_in):
    front = FakeFront(config_for(stand_in.base_url, max_body=1024))
    big = {"model": "o3-pro", "background": True, "input": "x" * 2000}
    async with serving(front) as base_url, sdk(base_url) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.responses.create(**big)
        assert caught.value.status_code == 413 and "max_body" in caught.value.message

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(4):
                yield b"y" * 512

        async with httpx.AsyncClient() as http:
            reply = await http.post(
                f"{base_url}/files", content=chunks(), headers={"Authorization": f"Bearer {API_KEY}"}
            )
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "body_too_large"
    assert stand_in.state.requests == {} and front.calls == []


async def test_with_key_account_callers_present_the_server_token_and_tether_sends_the_key(stand_in, monkeypatch):
    monkeypatch.setenv("PROXY_TEST_KEY", API_KEY)
    front = FakeFront(config_for(stand_in.base_url, key="account"))
    async with serving(front, token=TOKEN) as base_url:
        async with sdk(base_url, key=TOKEN) as client:
            created = await client.responses.create(model="o3-pro", input="hi", background=True)
        async with sdk(base_url, key=API_KEY) as client:  # the account's key is not the token
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.responses.retrieve(created.id)
    assert front.named("track_created")[0]["response"]["id"] == created.id
    assert API_KEY not in caught.value.message and TOKEN not in caught.value.message
    assert stand_in.state.requests == {"create": 1}


async def test_with_key_client_the_callers_key_passes_through(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    async with serving(front) as base_url, sdk(base_url, key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.responses.retrieve("resp_x")
    assert caught.value.code == "invalid_api_key" and stand_in.state.requests == {"get": 1}


async def test_a_streamed_background_create_is_relayed_unbuffered_and_tracked_from_its_first_event(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    arrivals: list[tuple[float, Any]] = []
    async with serving(front) as base_url, sdk(base_url) as client:
        stream = await client.responses.create(
            model="o3-pro",
            input="hi",
            background=True,
            stream=True,
            metadata={"fake_queue": "0.5", "fake_run": "3"},
            extra_headers={"X-Tether-Label": "kind=stream"},
        )
        async with stream:
            async for event in stream:
                if not arrivals:
                    rid = event.response.id
                    status_at_first = stand_in.state.record(rid).status(time.time())
                arrivals.append((time.time(), event))
                if len(arrivals) == 2:
                    tracked_by_second = list(front.named("track_created"))
    events = [STREAM_EVENT.validate_python(event.model_dump(mode="json")) for _, event in arrivals]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    # The first event came through long before the stand-in sent the last one.
    assert status_at_first in ("queued", "in_progress")
    assert arrivals[-1][0] >= stand_in.state.record(rid).finishes_at
    (tracked,) = tracked_by_second
    assert tracked["response"]["id"] == rid and tracked["labels"] == {"kind": "stream"}


async def test_a_resumed_stream_arrives_intact_through_the_proxy(stand_in):
    front = FakeFront(config_for(stand_in.base_url))
    async with serving(front) as base_url, sdk(base_url) as client:
        created = await client.responses.create(
            model="o3-pro", input="hi", background=True, metadata={"fake_run": "0.6"}
        )
        resumed = await client.responses.retrieve(created.id, stream=True, starting_after=1)
        async with resumed:
            events = [event async for event in resumed]
        direct = httpx.get(
            f"{stand_in.base_url}/responses/{created.id}",
            params={"stream": "true", "starting_after": "1"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert [e.sequence_number for e in events] == list(range(2, 2 + len(events)))
    assert events[-1].type == "response.completed" and events[-1].response.id == created.id
    direct_events = [json.loads(line[6:]) for line in direct.text.splitlines() if line.startswith("data: ")]
    assert [e.model_dump(mode="json") for e in events] == [
        STREAM_EVENT.validate_python(e).model_dump(mode="json") for e in direct_events
    ]


async def test_hop_by_hop_and_tether_headers_are_removed_both_ways_and_host_is_the_upstreams():
    seen: dict[str, Any] = {}

    async def echo(request: web.Request) -> web.Response:
        seen.update(headers=request.headers.copy(), path=request.raw_path, body=await request.read())
        return web.Response(
            text="{}",
            content_type="application/json",
            headers={
                "Connection": "X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Proxy-Thing": "1",
                "X-Kept": "yes",
                "Set-Cookie": "session=caller-a; Path=/",
            },
        )

    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(upstream, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        front = FakeFront(config_for(f"http://127.0.0.1:{port}/v1"))
        async with serving(front) as base_url, httpx.AsyncClient() as http:
            reply = await http.post(
                f"{base_url}/files?purpose=batch&x=a%26b&y=a%20b",
                content=b"payload",
                headers={
                    "Authorization": "Bearer sk-caller",
                    "Connection": "keep-alive, X-Hop",
                    "X-Hop": "1",
                    "Proxy-Authorization": "Basic abc",
                    "X-Tether-Label": "a=b",
                    "OpenAI-Beta": "x",
                },
            )
            first = dict(seen)
            await httpx.AsyncClient().get(f"{base_url}/models")  # another caller, no cookies of its own
            outside = await http.get(f"{base_url}/../admin")
            dotted = await http.get(f"{base_url}/responses/%2e%2e/x")
    finally:
        await runner.cleanup()
    assert "Cookie" not in seen["headers"] and reply.headers["Set-Cookie"] == "session=caller-a; Path=/"
    headers = first["headers"]
    assert seen["path"] == "/v1/models"
    assert first["path"] == "/v1/files?purpose=batch&x=a%26b&y=a%20b" and first["body"] == b"payload"
    assert headers["Host"] == f"127.0.0.1:{port}" and headers["Authorization"] == "Bearer sk-caller"
    assert headers["OpenAI-Beta"] == "x"
    for gone in ("X-Hop", "Proxy-Authorization", "X-Tether-Label"):
        assert gone not in headers
    assert (
        reply.headers["X-Kept"] == "yes" and "X-Secret-Hop" not in reply.headers and "Proxy-Thing" not in reply.headers
    )
    assert outside.status_code == 404  # normalised by the client to /admin: not a proxy route
    assert dotted.status_code == 400 and dotted.json()["error"]["code"] == "invalid_path"
