"""The OpenAPI 3.1 document of the control API, served at `/openapi.json` (docs/api.md)."""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": json_content(schema)}


def errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Bad input",
        404: "Not tracked",
        409: "Already finished: nothing to cancel",
        502: "The OpenAI API failed or refused",
        503: "The daemon cannot do it now",
    }
    return {str(s): ok(meaning[s], ref("Error")) for s in statuses}


def query(name: str, schema: dict[str, Any], description: str, *, many: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "array", "items": schema} if many else schema,
        **({"style": "form", "explode": True} if many else {}),
    }


RESPONSE_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
}
NULLABLE_STRING = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "code"],
                "properties": {"message": {"type": "string"}, "code": {"type": "string"}},
            }
        },
    },
    "Record": {
        "type": "object",
        "description": "A tracked response (docs/cli.md, JSON shapes).",
        "properties": {
            "id": {"type": "string"},
            "account": {"type": "string"},
            "status": NULLABLE_STRING,
            "model": NULLABLE_STRING,
            "policy": NULLABLE_STRING,
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "created_at": TIME,
            "tracked_at": TIME,
            "deadline_at": TIME,
            "last_polled_at": TIME,
            "polls": {"type": "integer"},
            "cancel_requested_at": TIME,
            "cancel_reason": NULLABLE_STRING,
            "finished_at": TIME,
            "error": {},
            "incomplete_reason": NULLABLE_STRING,
            "usage": {},
            "cost_usd": {"type": ["number", "null"]},
            "cost_estimated": {"type": "boolean"},
        },
    },
    "Event": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "at": TIME,
            "response_id": NULLABLE_STRING,
            "kind": {"type": "string"},
            "from": NULLABLE_STRING,
            "to": NULLABLE_STRING,
            "reason": NULLABLE_STRING,
            "detail": {"type": "object"},
        },
    },
    "RecordWithEvents": {
        "allOf": [ref("Record"), {"type": "object", "properties": {"events": {"type": "array", "items": ref("Event")}}}]
    },
    "Budget": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "window_start": TIME,
            "window_end": TIME,
            "limit_usd": {"type": "number"},
            "spent_usd": {"type": "number"},
            "committed_usd": {"type": "number"},
            "remaining_usd": {"type": "number"},
            "state": {"enum": ["ok", "warn", "exceeded"]},
            "active": {"type": "integer"},
        },
    },
    "Labels": {"type": "object", "additionalProperties": {"type": "string"}},
}

PATHS: dict[str, Any] = {
    "/api/responses": {
        "get": {
            "summary": "Tracked responses, newest first (tether ls)",
            "parameters": [
                query("status", {"type": "string"}, "Only this status (repeatable).", many=True),
                query("active", {"type": "boolean"}, "Only responses not yet finished."),
                query("policy", {"type": "string"}, "Only responses under this policy."),
                query("label", {"type": "string"}, "K=V: only responses with this label (repeatable).", many=True),
                query("limit", {"type": "integer", "minimum": 1, "default": 100}, "At most this many."),
            ],
            "responses": {"200": ok("The records", {"type": "array", "items": ref("Record")}), **errors(400)},
        },
        "post": {
            "summary": "Start tracking existing responses (tether track)",
            "requestBody": {
                "required": True,
                "content": json_content(
                    {
                        "type": "object",
                        "required": ["ids"],
                        "properties": {
                            "ids": {"type": "array", "items": {"type": "string"}},
                            "policy": NULLABLE_STRING,
                            "account": NULLABLE_STRING,
                            "labels": ref("Labels"),
                            "verify": {"type": "boolean", "default": True},
                        },
                    }
                ),
            },
            "responses": {
                "200": ok(
                    "Their records, and which of them were not tracked before",
                    {
                        "type": "object",
                        "properties": {
                            "responses": {"type": "array", "items": ref("Record")},
                            "new": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                ),
                **errors(400, 404, 502, 503),
            },
        },
    },
    "/api/responses/submit": {
        "post": {
            "summary": "Create a background response and track it (tether submit)",
            "requestBody": {
                "required": True,
                "content": json_content(
                    {
                        "type": "object",
                        "required": ["body"],
                        "properties": {
                            "body": {"type": "object", "description": "A request body for POST /v1/responses"},
                            "policy": NULLABLE_STRING,
                            "account": NULLABLE_STRING,
                            "labels": ref("Labels"),
                        },
                    }
                ),
            },
            "responses": {"201": ok("The new record", ref("Record")), **errors(400, 502, 503)},
        },
    },
    "/api/responses/{id}": {
        "get": {
            "summary": "One response with its events (tether show)",
            "parameters": [RESPONSE_ID],
            "responses": {"200": ok("The record and its events", ref("RecordWithEvents")), **errors(400, 404)},
        },
    },
    "/api/responses/{id}/cancel": {
        "post": {
            "summary": "Cancel a tracked response now (tether cancel)",
            "parameters": [RESPONSE_ID],
            "requestBody": {
                "required": False,
                "content": json_content({"type": "object", "properties": {"reason": NULLABLE_STRING}}),
            },
            "responses": {"200": ok("The record after the cancel", ref("Record")), **errors(400, 404, 409, 502, 503)},
        },
    },
    "/api/events": {
        "get": {
            "summary": "The event history, oldest first; followed as server-sent events (tether log)",
            "parameters": [
                query("response_id", {"type": "string"}, "Only this response's events."),
                query("since", {"type": "number"}, "Only events at or after this time (seconds since the epoch)."),
                query("after", {"type": "integer"}, "Only events after this event id (as Last-Event-ID)."),
                query("follow", {"type": "boolean"}, "Keep the answer open and send new events as they come."),
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer"}},
            ],
            "responses": {
                "200": {
                    "description": "The events",
                    "content": {
                        **json_content({"type": "array", "items": ref("Event")}),
                        "text/event-stream": {
                            "schema": {"type": "string", "description": "`id: N` and `data: <Event as JSON>` per event"}
                        },
                    },
                },
                **errors(400),
            },
        },
    },
    "/api/budgets": {
        "get": {
            "summary": "Budget windows as they stand (tether budget)",
            "responses": {"200": ok("Every budget", {"type": "array", "items": ref("Budget")})},
        },
    },
    "/api/health": {
        "get": {
            "summary": "What tether check says",
            "responses": {
                "200": ok(
                    "Health",
                    {
                        "type": "object",
                        "properties": {
                            "healthy": {"type": "boolean"},
                            "message": {"type": "string"},
                            "daemons": {
                                "description": "On a PostgreSQL store: every daemon on it (docs/cluster.md)",
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "instance": {"type": "string"},
                                        "host": {"type": "string"},
                                        "pid": {"type": "integer"},
                                        "shards": {"type": "integer"},
                                        "budgets": {"type": "boolean"},
                                        "heartbeat_age": {"type": "number"},
                                        "alive": {"type": "boolean"},
                                        "stopped_at": {"type": ["number", "null"]},
                                    },
                                },
                            },
                        },
                    },
                )
            },
        },
    },
    "/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": ok("OpenAPI 3.1", {"type": "object"})}},
    },
}


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tether control API",
            "version": version,
            "description": "On the daemon's Unix socket without a token; on its TCP listener with "
            "`Authorization: Bearer <token>` (docs/api.md).",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
