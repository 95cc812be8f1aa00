"""A faithful local stand-in of the OpenAI Responses API (background responses).

Serves `POST /v1/responses`, `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`.
Each response plays out from the clock: `queue` seconds `queued`, `run` seconds `in_progress`,
then its outcome; request metadata keys `fake_queue`, `fake_run`, `fake_outcome`,
`fake_input_tokens`, `fake_output_tokens`, `fake_reasoning_tokens` and `fake_cached_tokens`
override the server's defaults. `stream: true` answers a create with server-sent events
(`response.created`, `response.output_text.delta`, ..., `response.completed`, each when the
simulation reaches it); `GET /v1/responses/{id}?stream=true&starting_after=N` resumes a background
response's stream after event N. The server keeps its own record of every call for test oracles
(`FakeState`, `GET /_fake/state`; `FakeState.calls()`: the request log, faulted requests
included; `FakeState.stalls()`: its own event-loop stalls), injects faults on demand
(`FakeState.faults`, `POST /_fake/faults`; `Faults.force` for one-shot faults, `Faults.echo_key`
for a proxy that repeats the key in its errors, `Record.overrides` for hostile payloads) and can
backdate responses (`POST /_fake/responses` with `created_at`). docs/reliability.md lists the faults.
"""

from .app import FakeAPI
from .server import FakeServer
from .state import REMOVE, ApiError, Call, CancelCall, FakeState, Faults, Record, RouteFaults, Simulation

__all__ = [
    "REMOVE",
    "ApiError",
    "Call",
    "CancelCall",
    "FakeAPI",
    "FakeServer",
    "FakeState",
    "Faults",
    "Record",
    "RouteFaults",
    "Simulation",
]
