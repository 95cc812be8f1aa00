"""The fake Responses API: routes, auth, validation, response objects and fault injection.

`FakeAPI` is the request handler of an aiohttp low-level server (`server.py`), which runs it
with handler cancellation: a client that goes away cancels its request's handler, which is how
a held request (a hang, a synchronous create) ends early.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .objects import ECHOED_DEFAULTS, response_object
from .state import ApiError, Call, FakeState, Faults, Record
from .streaming import event_stream

# Fields the SDK's `Response` model requires, plus status: all a "missing fields" reply keeps.
REQUIRED_FIELDS = (
    "id",
    "object",
    "created_at",
    "model",
    "output",
    "parallel_tool_calls",
    "tool_choice",
    "tools",
    "status",
)
MAX_METADATA_KEYS = 16
PROXY_PAGE = (
    b"<html><head><title>{status}</title></head><body><center><h1>{status}</h1></center>"
    b"<hr><center>nginx</center></body></html>"
)


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json", headers=headers
    )


def html_reply(status: int, title: str) -> web.Response:
    body = PROXY_PAGE.replace(b"{status}", title.encode())
    return web.Response(status=status, body=body, content_type="text/html", charset="utf-8")


class Dropped(Exception):
    """The connection is to be closed without an answer."""


class FakeAPI:
    """The request handler: `/v1/responses` routes, with faults, and the `/_fake/*` admin routes."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            reply = await self._handle(request)
        except ApiError as e:
            reply = json_reply(e.status, e.body, e.headers)
        except Dropped:
            # aiohttp finds the connection closed and writes nothing of the reply it is given.
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        if not reply.prepared:  # an event stream has its id already
            reply.headers["x-request-id"] = f"req_{secrets.token_hex(16)}"
        return reply

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.raw_path  # an absolute-form target (through a proxy) is made relative
        if path.startswith("/_fake/"):
            return await self._admin(request, path)
        route, response_id = _route(request.method, path)
        headers = request.headers
        self.state.count_request(route, headers.get("openai-organization"), headers.get("openai-project"))
        call = self.state.log_call(route, response_id, headers.get("openai-project"))
        try:
            reply = await self._api(route, response_id, request, call)
        except ApiError as e:
            reply = json_reply(e.status, e.body, e.headers)
        except (Dropped, asyncio.CancelledError):  # dropped, or the client left a held request
            self.state.end_call(call, 0)
            raise
        if reply.status >= 400 and self.state.faults.echo_key and isinstance(reply, web.Response):
            _echo_key(reply, headers.get("authorization", ""))
        self.state.end_call(call, reply.status)
        return reply

    async def _api(self, route: str, response_id: str, request: web.BaseRequest, call: Call) -> web.StreamResponse:
        forced = self.state.faults.take_forced(route)
        fault = await self._injected_fault(route, call, forced)
        if fault is not None:
            return fault
        self._authorize(request.headers)
        if route == "create":
            fields = _json_object(await request.read())
            stream = _stream_flag(fields.get("stream"))
            record = await self._create(fields, hold=not stream)
            if stream:
                return await event_stream(request, record, after=-1)
        elif route == "get":
            record = self.state.get(response_id)
            if request.rel_url.query.get("stream") == "true":
                if not record.background:
                    raise ApiError(400, "Only background responses can be streamed again.", param="stream")
                return await event_stream(request, record, after=_starting_after(request.rel_url.query))
        else:
            record = self.state.cancel(response_id)
        return self._garbled(route, response_object(record, time.time()), call, forced)

    async def _admin(self, request: web.BaseRequest, path: str) -> web.Response:
        method, body = request.method, await request.read()
        if (method, path) == ("GET", "/_fake/state"):
            return json_reply(200, self.state.snapshot())
        if (method, path) == ("POST", "/_fake/faults"):
            try:
                self.state.faults = Faults.from_json(_json_object(body))
            except (TypeError, ValueError) as e:
                raise ApiError(400, f"Invalid faults: {e}") from None
            return json_reply(200, self.state.faults.as_json())
        if (method, path) == ("POST", "/_fake/responses"):
            fields = _json_object(body)
            created_at = fields.get("created_at")
            if not isinstance(created_at, (int, float)) or isinstance(created_at, bool):
                raise ApiError(400, "Missing or invalid 'created_at' (unix seconds).", param="created_at")
            record = await self._create(fields, created_at=float(created_at))
            return json_reply(200, response_object(record, time.time()))
        raise ApiError(404, f"Invalid URL ({method} {path})")

    async def _injected_fault(self, route: str, call: Call, forced: str | None) -> web.Response | None:
        """The reply of the first fault that strikes (None if none does); raises `Dropped`
        for a connection closed without an answer."""
        faults = self.state.faults

        def count(kind: str) -> None:
            self.state.count_fault(kind)
            call.fault = kind if call.fault is None else f"{call.fault}+{kind}"

        def strikes(kind: str) -> bool:  # the random draw always happens: a seed replays the same
            return faults.strikes(getattr(odds, kind)) or forced == kind

        if faults.in_outage():
            count("outage")
            return json_reply(503, _error("The server is overloaded or not ready yet.", "server_error"))
        odds = getattr(faults, route)
        if strikes("slow"):
            count("slow")
            await asyncio.sleep(faults.slow_seconds)
        if strikes("hang"):
            count("hang")
            await asyncio.sleep(faults.hang_seconds)  # or less: the client leaving cancels the handler
            raise Dropped
        if strikes("drop"):
            count("drop")
            raise Dropped
        if strikes("server_error"):
            count("server_error")
            return faults.rng.choice(
                [
                    json_reply(
                        500,
                        _error(
                            "The server had an error while processing your request. Sorry about that!", "server_error"
                        ),
                    ),
                    html_reply(502, "502 Bad Gateway"),
                    json_reply(
                        503, _error("The engine is currently overloaded, please try again later.", "server_error")
                    ),
                ]
            )
        if strikes("rate_limit"):
            count("rate_limit")
            wait = f"{faults.retry_after:g}"
            return json_reply(
                429,
                _error(
                    f"Rate limit reached for requests. Please try again in {wait}s.", "requests", "rate_limit_exceeded"
                ),
                {
                    "retry-after": wait,
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{wait}s",
                    "x-ratelimit-limit-tokens": "30000",
                    "x-ratelimit-remaining-tokens": "30000",
                    "x-ratelimit-reset-tokens": "0s",
                },
            )
        if strikes("quota"):
            count("quota")
            return json_reply(
                429,
                _error(
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    "insufficient_quota",
                ),
            )
        return None

    def _garbled(self, route: str, obj: dict[str, Any], call: Call, forced: str | None) -> web.Response:
        """The 200 reply carrying `obj`, garbled by whichever body faults strike."""
        faults = self.state.faults
        odds = getattr(faults, route)

        def count(kind: str) -> None:
            self.state.count_fault(kind)
            call.fault = kind if call.fault is None else f"{call.fault}+{kind}"

        def strikes(kind: str) -> bool:
            return faults.strikes(getattr(odds, kind)) or forced == kind

        if strikes("unknown_status"):
            count("unknown_status")
            obj["status"] = faults.unknown_status_value
        if strikes("extra_fields"):
            count("extra_fields")
            obj["vendor_extension"] = {"queue_position": 3, "region": "fake-1"}
            obj["x_trace_id"] = secrets.token_hex(8)
        if strikes("missing_fields"):
            count("missing_fields")
            obj = {k: obj[k] for k in REQUIRED_FIELDS}
        payload: Any = obj
        if strikes("odd_shape"):
            count("odd_shape")
            payload = _odd_shape(obj, faults.rng)
        body = json.dumps(payload).encode()
        if strikes("malformed_json"):
            count("malformed_json")
            return web.Response(body=body[: len(body) // 2], content_type="application/json")
        if strikes("wrong_content_type"):
            count("wrong_content_type")
            return html_reply(200, "Service status")
        return web.Response(body=body, content_type="application/json")

    def _authorize(self, headers: Mapping[str, str]) -> None:
        key = self.state.api_key
        if key is not None and headers.get("authorization") != f"Bearer {key}":
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def _create(self, fields: dict[str, Any], created_at: float | None = None, hold: bool = True) -> Record:
        model = fields.get("model")
        if model is None:
            raise ApiError(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        if not isinstance(model, str):
            raise _invalid_type("model", "a string")
        background = fields.get("background") or False
        if not isinstance(background, bool):
            raise _invalid_type("background", "a boolean")
        record = self.state.create(
            model,
            background=background,
            metadata=_metadata(fields.get("metadata")),
            created_at=created_at,
            echoed={k: fields[k] for k in ECHOED_DEFAULTS if fields.get(k) is not None}
            | _service_tier(fields.get("service_tier")),
        )
        if hold and not background and created_at is None:
            # Answered when it finishes, or not at all: the client leaving cancels the handler.
            await asyncio.sleep(max(0.0, record.finishes_at - time.time()))
        return record


def _stream_flag(value: Any) -> bool:
    if value is not None and not isinstance(value, bool):
        raise _invalid_type("stream", "a boolean")
    return bool(value)


def _starting_after(query: Mapping[str, str]) -> int:
    text = query.get("starting_after", "-1")
    try:
        return max(-1, int(text))
    except ValueError:
        raise _invalid_type("starting_after", "an integer") from None


def _route(method: str, path: str) -> tuple[str, str]:
    """(route, response id) of an API request; raises the API's 404 for anything else."""
    parts = path.rstrip("/").split("/")
    if parts[:3] == ["", "v1", "responses"]:
        if len(parts) == 3 and method == "POST":
            return "create", ""
        if len(parts) == 4 and method == "GET":
            return "get", parts[3]
        if len(parts) == 5 and parts[4] == "cancel" and method == "POST":
            return "cancel", parts[3]
    raise ApiError(404, f"Invalid URL ({method} {path})")


# Fields of the response object with a value of the wrong JSON type, as a buggy or hostile
# server might send them. The status keeps its meaning when it is a string; else it is lost.
ODD_VALUES: dict[str, tuple[Any, ...]] = {
    "status": (None, 7, ["in_progress"], {"value": "in_progress"}),
    "created_at": ("yesterday", None, [1], {"seconds": 1}, True),
    "model": (None, 42, ["o3-pro"]),
    "metadata": (["team", "search"], "team=search", 3),
    "usage": ("n/a", [], {"input_tokens": "many", "output_tokens": None}, {"input_tokens_details": 5}),
    "error": ("boom", ["error"], {"code": 500, "message": {"text": "nested"}}),
    "incomplete_details": ("max_output_tokens", ["reason"]),
    "background": ("yes", 1),
    "max_output_tokens": ("lots", -1, 2.5),
    "service_tier": (1, ["default"]),
    "id": (None, 123),
}
NOT_OBJECTS: tuple[Any, ...] = (None, "response", 42, [], ["resp_1"], True)


def _odd_shape(obj: dict[str, Any], rng: random.Random) -> Any:
    """`obj` with one to three fields of the wrong type, or (one time in five) no object at all."""
    if rng.random() < 0.2:
        return rng.choice(NOT_OBJECTS)
    odd = dict(obj)
    for name in rng.sample(sorted(ODD_VALUES), rng.randint(1, 3)):
        odd[name] = rng.choice(ODD_VALUES[name])
    return odd


def _echo_key(reply: web.Response, authorization: str) -> None:
    """Repeat the presented bearer key in the error reply's message (`Faults.echo_key`)."""
    key = authorization.removeprefix("Bearer ").strip()
    note = f" (request made with key {key})"
    assert isinstance(reply.body, bytes)
    if reply.content_type == "application/json":
        try:
            body = json.loads(reply.body)
            body["error"]["message"] += note
            reply.body = json.dumps(body).encode()
            return
        except (ValueError, KeyError, TypeError):
            pass
    reply.body = reply.body + note.encode()


def _error(message: str, type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


def _invalid_type(param: str, expected: str) -> ApiError:
    return ApiError(400, f"Invalid type for '{param}': expected {expected}.", param=param, code="invalid_type")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.",
        )
    return request


def _metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _invalid_type("metadata", "an object")
    if len(metadata) > MAX_METADATA_KEYS:
        raise ApiError(
            400,
            f"Invalid 'metadata': too many properties. Expected at most {MAX_METADATA_KEYS}.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _invalid_type(f"metadata.{key}", "a string")
    return metadata


def _service_tier(requested: Any) -> dict[str, Any]:
    """The tier the response reports: the API answers a request for "auto" with "default"."""
    if requested is None or requested == "auto":
        return {"service_tier": "default"}
    if requested not in ("default", "flex", "scale", "priority", "fast", "ultrafast"):
        raise ApiError(400, f"Invalid value for 'service_tier': {requested!r}.", param="service_tier")
    return {"service_tier": requested}
