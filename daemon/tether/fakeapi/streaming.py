"""The stand-in's server-sent events: a streamed response's events, each sent when the
simulation reaches it, resumable after any sequence number, ended by a cancel."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from typing import Any

from aiohttp import web

from .objects import response_object
from .state import Record

CANCEL_LOOK = 0.05  # how often a stream waiting for its next event looks for a cancel


def stream_events(record: Record) -> list[tuple[float, dict[str, Any]]]:
    """The server-sent events of a streamed response, each with the instant it is due: created
    at once; in progress when its queue time ends; the answer's words as `output_text` deltas
    spread over its run; the outcome event when it finishes. `sequence_number` counts from 0."""
    start, end = record.created_at + record.simulation.queue, record.finishes_at
    outcome = record.simulation.outcome
    timeline: list[tuple[float, str, dict[str, Any]]] = [
        (record.created_at, "response.created", {"response": response_object(record, record.created_at)}),
        (start, "response.in_progress", {"response": response_object(record, start)}),
    ]
    if outcome != "failed":
        done = response_object(record, end)
        item = done["output"][0]
        text = item["content"][0]["text"]
        at_item = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        words = re.findall(r"\S+\s*", text)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        timeline += [
            (
                start,
                "response.output_item.added",
                {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
            ),
            (start, "response.content_part.added", {**at_item, "part": part}),
        ]
        run = record.simulation.run
        timeline += [
            (
                start + run * (n + 1) / (len(words) + 1),
                "response.output_text.delta",
                {**at_item, "delta": word, "logprobs": []},
            )
            for n, word in enumerate(words)
        ]
        timeline += [
            (end, "response.output_text.done", {**at_item, "text": text, "logprobs": []}),
            (end, "response.content_part.done", {**at_item, "part": item["content"][0]}),
            (end, "response.output_item.done", {"output_index": 0, "item": item}),
        ]
    timeline.append((end, f"response.{outcome}", {"response": response_object(record, end)}))
    return [
        (at, {"type": kind, "sequence_number": number, **fields}) for number, (at, kind, fields) in enumerate(timeline)
    ]


async def event_stream(request: web.BaseRequest, record: Record, after: int) -> web.StreamResponse:
    """Stream the events after sequence number `after`, each when it is due; a cancel ends the
    stream. Events already due go out at once, so a resumed stream catches up first."""
    reply = web.StreamResponse(
        headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    )
    reply.headers["x-request-id"] = f"req_{secrets.token_hex(16)}"
    await reply.prepare(request)
    for at, event in stream_events(record)[after + 1 :]:
        while record.cancelled_at is None and (wait := at - time.time()) > 0:
            await asyncio.sleep(min(wait, CANCEL_LOOK))
        if record.cancelled_at is not None:
            break
        await reply.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    await reply.write_eof()
    return reply
