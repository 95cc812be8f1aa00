"""`POST /webhooks/openai` (tether.webhooks; docs/operations.md, "Webhooks") served by a real
aiohttp server on loopback, with a fake front that records the looks it is asked for.

The signatures are made here from the Standard Webhooks scheme itself (HMAC-SHA256 over
`id.timestamp.body`, base64), not with the package the product verifies them with.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tether import webhooks
from tether.config import Config, parse_config
from tether.webhooks import RecentIds

KEY = b"tether-test-webhook-key-0123456789"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER_KEY = b"someone-else-s-key-0123456789abcd"


def signed(body: bytes, *, key: bytes = KEY, message_id: str | None = None, at: float | None = None) -> dict[str, str]:
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(time.time() if at is None else at))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "content-type": "application/json",
    }


def event(kind: str = "response.completed", rid: str = "resp_1") -> bytes:
    shape = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "created_at": int(time.time()), "type": kind}
    return json.dumps({**shape, "data": {"id": rid}}).encode()


def config_with_secret(tmp_path: Path, secret: str = SECRET, name: str = "webhook.secret") -> Config:
    (tmp_path / name).write_text(secret + "\n")
    return parse_config(
        {"server": {"listen": "127.0.0.1:8787"}, "webhooks": {"secret_file": str(tmp_path / name)}}, environ={}
    )


@dataclass
class FakeFront:
    config: Config
    tracked: set[str] = field(default_factory=lambda: {"resp_1", "resp_2"})
    looks: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, a look waits for it

    async def poll_now(self, rid: str) -> bool:
        self.looks.append(rid)
        if self.gate is not None:
            await self.gate.wait()
        return rid in self.tracked


@pytest.fixture
async def served(tmp_path: Path):
    front = FakeFront(config_with_secret(tmp_path))
    app = web.Application()
    app.add_routes(webhooks.routes(front, front.config))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield front, client


async def until(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def post(client: TestClient, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    async with client.post(webhooks.PATH, data=body, headers=headers) as reply:
        return reply.status, await reply.json()


async def test_a_signed_response_event_looks_at_that_response_once(served):
    front, client = served
    body = event("response.completed", "resp_1")
    assert (await post(client, body, signed(body)))[0] == 200
    await until(lambda: front.looks, what="the look")
    await asyncio.sleep(0.1)  # room for a second look, which must not come
    assert front.looks == ["resp_1"]


@pytest.mark.parametrize("kind", ["response.failed", "response.cancelled", "response.incomplete", "response.queued"])
async def test_every_response_event_makes_a_look(served, kind):
    front, client = served
    body = event(kind, "resp_2")
    assert (await post(client, body, signed(body)))[0] == 200
    await until(lambda: front.looks == ["resp_2"], what="the look")


async def test_the_answer_does_not_wait_for_the_look(served):
    front, client = served
    front.gate = asyncio.Event()  # the look hangs until the test lets it go
    body = event()
    status, _ = await asyncio.wait_for(post(client, body, signed(body)), timeout=30)  # the look hangs for ever
    assert status == 200
    assert front.looks == ["resp_1"]
    front.gate.set()


async def test_an_event_for_an_untracked_response_is_acknowledged(served):
    front, client = served
    body = event("response.completed", "resp_unknown")
    assert (await post(client, body, signed(body)))[0] == 200
    await until(lambda: front.looks == ["resp_unknown"], what="the look")


async def test_other_event_types_are_acknowledged_and_ignored(served):
    front, client = served
    body = json.dumps({"type": "batch.completed", "data": {"id": "batch_1"}}).encode()
    assert (await post(client, body, signed(body)))[0] == 200
    body = event()  # a later response event is still acted on: the first changed nothing
    assert (await post(client, body, signed(body)))[0] == 200
    await until(lambda: front.looks, what="the look")
    assert front.looks == ["resp_1"]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda body: (body, signed(body, key=OTHER_KEY)), id="signed with another key"),
        pytest.param(lambda body: (body.replace(b"resp_1", b"resp_2"), signed(body)), id="a changed body"),
        pytest.param(lambda body: (body, {**signed(body), "webhook-id": "msg_other"}), id="another id than was signed"),
        pytest.param(
            lambda body: (body, {**signed(body), "webhook-timestamp": str(int(time.time()) - 1)}),
            id="another timestamp than was signed",
        ),
        pytest.param(lambda body: (body, signed(body, at=time.time() - 360)), id="stale: signed 6 minutes ago"),
        pytest.param(lambda body: (body, signed(body, at=time.time() + 360)), id="signed 6 minutes ahead"),
        pytest.param(lambda body: (body, {**signed(body), "webhook-signature": "v1,bm90IGl0"}), id="a wrong signature"),
        pytest.param(lambda body: (body, {**signed(body), "webhook-signature": "v1"}), id="a garbled signature"),
        pytest.param(
            lambda body: (body, {**signed(body), "webhook-signature": "v1,%%%not-base64"}), id="a signature not base64"
        ),
        pytest.param(
            lambda body: (body, {**signed(body), "webhook-timestamp": "soon"}), id="a timestamp that is no number"
        ),
        pytest.param(lambda body: (b"\xff" + body, signed(b"\xff" + body)), id="a body that is not UTF-8"),
    ],
)
async def test_a_bad_or_stale_signature_is_refused_with_400_and_changes_nothing(served, tamper):
    front, client = served
    body, headers = tamper(event())
    status, answer = await post(client, body, headers)
    assert status == 400, answer
    # The same event properly signed is then accepted: the refusal remembered nothing.
    good = event()
    message_id = headers.get("webhook-id", "msg_x")
    assert (await post(client, good, signed(good, message_id=message_id)))[0] == 200
    await until(lambda: front.looks, what="the look")
    assert front.looks == ["resp_1"]


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
async def test_a_request_without_a_signature_header_is_refused_with_400(served, missing):
    front, client = served
    body = event()
    headers = {name: value for name, value in signed(body).items() if name != missing}
    status, answer = await post(client, body, headers)
    assert status == 400
    assert "Missing required headers" in answer["message"]
    await asyncio.sleep(0.1)
    assert front.looks == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="malformed JSON"),
        pytest.param(b"[]", id="not an object"),
        pytest.param(b'{"data": {"id": "resp_1"}}', id="no type"),
        pytest.param(b'{"type": "response.completed", "data": {}}', id="a response event without an id"),
        pytest.param(b'{"type": "response.completed", "data": {"id": 7}}', id="an id that is not a string"),
    ],
)
async def test_a_signed_body_that_is_not_an_event_is_refused_with_400(served, body):
    front, client = served
    status, answer = await post(client, body, signed(body))
    assert (status, answer["message"]) == (400, "the body is not a JSON event object")
    await asyncio.sleep(0.1)
    assert front.looks == []


async def test_a_message_received_again_is_refused_with_400_without_a_second_look(served):
    """OpenAI retries only deliveries that failed: a repeat of one answered 200 is a replay."""
    front, client = served
    body = event()
    headers = signed(body, message_id="msg_once")
    assert (await post(client, body, headers))[0] == 200
    await until(lambda: front.looks, what="the first look")
    assert await post(client, body, headers) == (400, {"status": 400, "message": "already received"})
    again = signed(body, message_id="msg_once", at=time.time() + 2)  # new timestamp, same id
    assert (await post(client, body, again))[0] == 400
    other = signed(body, message_id="msg_twice")  # another message about the same response
    assert (await post(client, body, other))[0] == 200
    await until(lambda: len(front.looks) == 2, what="the other message's look")
    await asyncio.sleep(0.1)
    assert front.looks == ["resp_1", "resp_1"]


async def test_a_message_signed_with_any_of_several_signatures_is_accepted(served):
    """Standard Webhooks sends one signature per secret during a secret rotation."""
    front, client = served
    body = event()
    headers = signed(body)
    headers["webhook-signature"] = f"{signed(body, key=OTHER_KEY)['webhook-signature']} {headers['webhook-signature']}"
    assert (await post(client, body, headers))[0] == 200
    await until(lambda: front.looks == ["resp_1"], what="the look")


async def test_a_body_over_the_limit_is_refused_with_413(served):
    front, client = served
    body = json.dumps({"type": "response.completed", "data": {"id": "resp_1"}, "pad": "x" * webhooks.MAX_BODY}).encode()
    status, _ = await post(client, body, signed(body))
    assert status == 413
    assert front.looks == []


async def test_a_reload_with_a_new_secret_verifies_with_the_new_one(served, tmp_path):
    front, client = served
    new_key = b"the-rotated-webhook-key-0123456789"
    front.config = config_with_secret(tmp_path, "whsec_" + base64.b64encode(new_key).decode(), "rotated.secret")
    body = event()
    assert (await post(client, body, signed(body)))[0] == 400
    assert (await post(client, body, signed(body, key=new_key)))[0] == 200
    await until(lambda: front.looks == ["resp_1"], what="the look")


async def test_a_reload_that_removes_the_webhooks_table_turns_the_route_off(served):
    front, client = served
    front.config = replace(front.config, webhooks=None)
    body = event()
    assert (await post(client, body, signed(body)))[0] == 404
    assert front.looks == []


async def test_without_a_webhooks_table_the_route_answers_404_until_a_reload_turns_them_on(tmp_path):
    front = FakeFront(parse_config({}, environ={}))
    app = web.Application()
    app.add_routes(webhooks.routes(front, front.config))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        body = event()
        assert (await post(client, body, signed(body)))[0] == 404
        front.config = config_with_secret(tmp_path)
        assert (await post(client, body, signed(body)))[0] == 200
        await until(lambda: front.looks == ["resp_1"], what="the look")


def test_recent_ids_forget_an_id_after_their_time_and_hold_at_most_their_limit():
    now = [1000.0]
    recent = RecentIds(keep=600.0, limit=3, clock=lambda: now[0])
    assert recent.add("a") and not recent.add("a")
    now[0] += 599.0
    assert not recent.add("a")  # still remembered within its time
    now[0] += 2.0
    assert recent.add("a")  # forgotten after it, and remembered afresh
    for message_id in ("b", "c", "d"):
        assert recent.add(message_id)
    assert len(recent) == 3  # "a", the oldest, went to make room for "d"
    assert recent.add("a")
    assert not recent.add("d")
