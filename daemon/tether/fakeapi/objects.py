"""The stand-in's response objects: a record as the API shows it at an instant."""

from __future__ import annotations

from typing import Any

from .state import REMOVE, Record

# Request fields a response object repeats, with the value it shows when the request lacks them.
ECHOED_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "prompt_cache_key": None,
    "reasoning": {"effort": None, "summary": None},
    "safety_identifier": None,
    "service_tier": "default",
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "tool_choice": "auto",
    "tools": [],
    "top_logprobs": 0,
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}


def response_object(record: Record, now: float) -> dict[str, Any]:
    """The record as the API's response object at instant `now`."""
    status = record.status(now)
    sim = record.simulation
    finished_at = record.finished_at(now)
    output = []
    if status in ("completed", "incomplete"):
        text = {
            "type": "output_text",
            "text": f"Simulated answer from {record.model}.",
            "annotations": [],
            "logprobs": [],
        }
        output.append(
            {"type": "message", "id": record.message_id, "status": status, "role": "assistant", "content": [text]}
        )
    usage = None
    if finished_at is not None and status != "cancelled":
        usage = {
            "input_tokens": sim.input_tokens,
            "input_tokens_details": {"cached_tokens": sim.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": sim.output_tokens,
            "output_tokens_details": {"reasoning_tokens": sim.reasoning_tokens},
            "total_tokens": sim.input_tokens + sim.output_tokens,
        }
    obj = {
        "id": record.id,
        "object": "response",
        "created_at": int(record.created_at),
        "status": status,
        "background": record.background,
        "completed_at": int(finished_at) if status == "completed" else None,  # type: ignore[arg-type]
        "error": (
            {"code": "server_error", "message": "The model failed to generate a response."}
            if status == "failed"
            else None
        ),
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": record.model,
        "output": output,
        **ECHOED_DEFAULTS,
        **record.echoed,
        "usage": usage,
        "metadata": record.metadata,
    }
    for key, value in record.overrides.items():
        if value is REMOVE:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj
