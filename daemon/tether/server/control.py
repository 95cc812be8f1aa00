"""The control API (docs/api.md): JSON routes for what the CLI does, over `Front`.

Answers use the JSON shapes of docs/cli.md; a refusal is `{"error": {"message", "code"}}`
with its HTTP status. `GET /api/events?follow=true` (or `Accept: text/event-stream`) keeps
the answer open as server-sent events: one `data:` line of JSON per event, its id as the
event's `id:`, so a client resumes with `Last-Event-ID` (or `?after=ID`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tether import actions, render
from tether.actions import Refused
from tether.server.front import Front

FRONT = web.AppKey("front", Front)
CLOSING = web.AppKey("closing", asyncio.Event)

FOLLOW_EVERY = 0.25  # a followed event stream looks for new events this often
KEEPALIVE_EVERY = 15.0  # a comment line this often on a quiet stream: a gone client is noticed


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/responses", list_responses),
        web.post("/api/responses", track),
        web.post("/api/responses/submit", submit),
        web.get("/api/responses/{id}", show),
        web.post("/api/responses/{id}/cancel", cancel),
        web.get("/api/events", events),
        web.get("/api/budgets", budgets),
        web.get("/api/health", health),
    ]


def answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=render.dumps(data), status=status, content_type="application/json")


async def read_answer(front: Front, reader: Callable[..., Any], *args: Any, **kwargs: Any) -> web.Response:
    """What a reader of `Front` returns, read and rendered as JSON on the daemon's reading
    threads (`Front.read`): neither is done on the event loop."""
    text = await front.read(lambda: render.dumps(reader(*args, **kwargs)))
    return web.Response(text=text, content_type="application/json")


def error_answer(status: int, message: str, code: str) -> web.Response:
    return answer({"error": {"message": message, "code": code}}, status)


@web.middleware
async def refusals(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as exc:
        return error_answer(exc.status, exc.message, exc.code)


# ---- reading the request ---------------------------------------------------------------


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise Refused(400, f"the request body is not valid JSON ({exc})", "invalid_json") from None
    if not isinstance(body, dict):
        raise Refused(400, "the request body must be a JSON object", "invalid_json")
    return body


def optional_string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise Refused(400, f"{key}: expected a string", "invalid_field")
    return value


def labels_of(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k.strip() and isinstance(v, str) for k, v in value.items()
    ):
        raise Refused(400, "labels: expected an object of non-empty names to strings", "invalid_field")
    return value


def label_params(values: list[str]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise Refused(400, f"--label {item!r}: expected KEY=VALUE", "invalid_label")
        labels[key.strip()] = value
    return labels


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise Refused(400, f"{name}: expected true or false", "invalid_parameter")
    return value in ("true", "1")


def number(request: web.Request, name: str, convert=float) -> Any:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return convert(value)
    except ValueError:
        raise Refused(400, f"{name}: expected a number, got {value!r}", "invalid_parameter") from None


# ---- routes ----------------------------------------------------------------------------------


async def list_responses(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    limit = number(request, "limit", int)
    return await read_answer(
        front,
        front.list,
        statuses=request.query.getall("status", []),
        active=flag(request, "active"),
        policy=request.query.get("policy"),
        labels=label_params(request.query.getall("label", [])),
        limit=100 if limit is None else limit,
    )


async def track(request: web.Request) -> web.Response:
    body = await json_body(request)
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise Refused(400, "ids: expected an array of response ids", "invalid_field")
    verify = body.get("verify", True)
    if not isinstance(verify, bool):
        raise Refused(400, "verify: expected true or false", "invalid_field")
    tracked = await request.app[FRONT].track_records(
        ids,
        policy=optional_string(body, "policy"),
        account=optional_string(body, "account"),
        labels=labels_of(body.get("labels")),
        verify=verify,
    )
    return answer(
        {
            "responses": [record for record, _ in tracked],
            "new": [record["id"] for record, created in tracked if created],
        }
    )


async def submit(request: web.Request) -> web.Response:
    body = await json_body(request)
    record = await request.app[FRONT].submit(
        actions.checked_body(body.get("body")),
        policy=optional_string(body, "policy"),
        account=optional_string(body, "account"),
        labels=labels_of(body.get("labels")),
    )
    return answer(record, 201)


async def show(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    return await read_answer(front, front.show, request.match_info["id"])


async def cancel(request: web.Request) -> web.Response:
    body = await json_body(request)
    return answer(await request.app[FRONT].cancel(request.match_info["id"], reason=optional_string(body, "reason")))


async def budgets(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    return await read_answer(front, front.budgets)


async def health(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    return await read_answer(front, front.health)


async def events(request: web.Request) -> web.StreamResponse:
    front = request.app[FRONT]
    rid = request.query.get("response_id")
    since = number(request, "since")
    after = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    if not after.isdigit():
        raise Refused(400, f"after: expected an event id, got {after!r}", "invalid_parameter")
    after_id = int(after)
    found = await front.read(front.events, rid=rid, since=since, after_id=after_id)
    if not (flag(request, "follow") or "text/event-stream" in request.headers.get("Accept", "")):
        return answer(found)
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await stream.prepare(request)
    closing = request.app[CLOSING]
    quiet = 0.0
    while not closing.is_set():
        for ev in found:
            after_id = max(after_id, ev["id"])
            await stream.write(f"id: {ev['id']}\ndata: {render.dumps(ev)}\n\n".encode())
        quiet = 0.0 if found else quiet + FOLLOW_EVERY
        if quiet >= KEEPALIVE_EVERY:
            await stream.write(b": keepalive\n\n")
            quiet = 0.0
        try:
            await asyncio.wait_for(closing.wait(), FOLLOW_EVERY)
        except TimeoutError:
            pass
        found = await front.read(front.events, rid=rid, since=since, after_id=after_id)
    return stream
