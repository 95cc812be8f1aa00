"""`POST /webhooks/openai`: OpenAI's webhook events, signed per Standard Webhooks.

A `response.*` event carries only the response's id: it makes the daemon look at that
response at once (a GET through its normal poll path), so the end of a response is seen
within a second of the event while the polls in between are few (`[webhooks] safety_poll`).

The signature (HMAC over `webhook-id.webhook-timestamp.body`, 5 minutes' tolerance) is
checked by the `standardwebhooks` package. A message is acted on once: a `webhook-id` seen
in the last `REMEMBER_FOR` seconds (a replay within the tolerance) is answered 400 and
ignored; a replay after that is stale and refused. OpenAI retries only deliveries that
failed, so a 400 to a message already received costs nothing.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tether.config import Config, ConfigError, WebhooksConfig
from tether.logs import log

PATH = "/webhooks/openai"
TOLERANCE = 300.0  # the Standard Webhooks tolerance, which `standardwebhooks` applies
# A message is accepted from TOLERANCE before its timestamp to TOLERANCE after it, and its
# timestamp is within TOLERANCE of when it was first seen: twice that covers every replay.
REMEMBER_FOR = 2 * TOLERANCE
REMEMBER_MAX = 100_000  # ids held at most; past that the oldest go (a replay then costs one GET)
MAX_BODY = 64 * 1024  # an event is a few hundred bytes
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class FrontLike(Protocol):
    """What this door needs of the daemon (tether.server.front.Front)."""

    @property
    def config(self) -> Config: ...

    async def poll_now(self, rid: str) -> bool: ...


def routes(front: FrontLike, config: Config) -> list[web.RouteDef]:
    """The webhook route: it answers 404 while `[webhooks]` is not configured, so a reload can
    turn webhooks on or off. Reads the signing secret now: a missing or malformed one is a
    ConfigError (the daemon does not start)."""
    return [web.post(PATH, Receiver(front, config.webhooks).handle)]


class RecentIds:
    """The `webhook-id`s seen in the last `keep` seconds, at most `limit` of them."""

    def __init__(self, keep: float, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep = keep
        self.limit = limit
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when first seen, oldest first

    def add(self, message_id: str) -> bool:
        """Remember the id; False if it was already there (a duplicate)."""
        now = self.clock()
        while self._seen and next(iter(self._seen.values())) < now - self.keep:
            self._seen.popitem(last=False)
        if message_id in self._seen:
            return False
        if len(self._seen) >= self.limit:
            self._seen.popitem(last=False)
        self._seen[message_id] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


class Receiver:
    def __init__(self, front: FrontLike, settings: WebhooksConfig | None) -> None:
        self.front = front
        self.seen = RecentIds(REMEMBER_FOR, REMEMBER_MAX)
        self._settings = settings
        self._webhook = None if settings is None else Webhook(settings.read_secret())

    def _verifier(self) -> Webhook | None:
        """The verifier for the `[webhooks]` in force: a reload that changed the table reads
        the secret again (the reload itself checked that it can be read)."""
        settings = self.front.config.webhooks
        if settings is not None and settings != self._settings:
            self._webhook = Webhook(settings.read_secret())
            self._settings = settings
        return None if settings is None else self._webhook

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            webhook = self._verifier()
        except ConfigError as exc:
            log.error("webhook.error", error=str(exc), hint="the reloaded [webhooks] secret can no longer be read")
            return _answer(503, "the webhook secret cannot be read")
        if webhook is None:
            return _answer(404, "webhooks are not configured")
        body = await _body(request)
        if body is None:
            return _answer(413, f"the body is longer than {MAX_BODY} bytes")
        headers = {name: request.headers.get(name, "") for name in SIGNATURE_HEADERS}
        try:
            webhook.verify(body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:  # ValueError: garbled headers or body
            log.warning("webhook.rejected", webhook_id=headers["webhook-id"][:100] or None, error=str(exc))
            return _answer(400, f"invalid signature: {exc}")
        event = _event(body)
        if event is None:
            log.warning("webhook.rejected", webhook_id=headers["webhook-id"], error="not a JSON event object")
            return _answer(400, "the body is not a JSON event object")
        kind, rid = event
        if not self.seen.add(headers["webhook-id"]):
            log.debug("webhook.duplicate", webhook_id=headers["webhook-id"], type=kind)
            return _answer(400, "already received")
        log.info("webhook.received", webhook_id=headers["webhook-id"], type=kind, response_id=rid)
        reply = _answer(200, "ok")
        if rid is None:
            return reply
        # OpenAI counts a slow answer as a failed delivery: answer first, then look.
        await reply.prepare(request)
        await reply.write_eof()
        await self._look(rid)
        return reply

    async def _look(self, rid: str) -> None:
        try:
            tracked = await self.front.poll_now(rid)
        except Exception as exc:  # the event was acknowledged; the polls will still see the end
            log.error("webhook.error", response_id=rid, error=repr(exc))
            return
        if not tracked:
            log.debug("webhook.untracked", response_id=rid)


async def _body(request: web.Request) -> bytes | None:
    """The request's body, or None when it is longer than MAX_BODY."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


def _event(body: bytes) -> tuple[str, str | None] | None:
    """(type, the response's id for a `response.*` event else None), or None when the body
    is not an event: a JSON object with a string `type`, and `data.id` for `response.*`."""
    try:
        event: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(kind := event.get("type"), str):
        return None
    if not kind.startswith("response."):
        return kind, None
    data = event.get("data")
    rid = data.get("id") if isinstance(data, dict) else None
    if not isinstance(rid, str) or not rid:
        return None
    return kind, rid


def _answer(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "message": message}, status=status)
