"""What the fake server knows: simulated responses, its own record of every call, fault switches.

Everything here is plain data touched from the server's event loop; tests read it from another
thread, so mutations and snapshots go through `FakeState.lock`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

ACTIVE = frozenset({"queued", "in_progress"})
OUTCOMES = ("completed", "failed", "incomplete")
ROUTES = ("create", "get", "cancel")
REMOVE = object()  # in `Record.overrides`: leave the field out of the object
CancelFinishedStatus = Literal[400, 409, 200]


class ApiError(Exception):
    """An error the fake API answers with an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers or {}


@dataclass(frozen=True)
class Simulation:
    """How one response plays out: `queue` s queued, then `run` s in progress, then `outcome`.

    Token counts are the `usage` fields as the API reports them: `output_tokens` includes
    `reasoning_tokens`, `input_tokens` includes `cached_tokens`.
    """

    queue: float = 0.0
    run: float = 1.0
    outcome: str = "completed"
    input_tokens: int = 1000
    output_tokens: int = 500
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        for name, _ in _METADATA_KEYS.values():
            if name != "outcome" and not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number, not negative")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens must not exceed output_tokens")
        if self.cached_tokens > self.input_tokens:
            raise ValueError("cached_tokens must not exceed input_tokens")

    def overridden_by(self, metadata: dict[str, str]) -> Simulation:
        """This simulation with the request's `fake_*` metadata keys applied."""
        changes: dict[str, Any] = {}
        for key, (name, convert) in _METADATA_KEYS.items():
            if key in metadata:
                try:
                    changes[name] = convert(metadata[key])
                except ValueError:
                    raise ApiError(400, f"Invalid value for metadata key '{key}'.", param=f"metadata.{key}") from None
        try:
            return dataclasses.replace(self, **changes)
        except ValueError as e:
            raise ApiError(400, f"Invalid fake_* metadata: {e}.", param="metadata") from None


# metadata key -> (Simulation field, its type); annotations are strings under `from __future__`
_METADATA_KEYS = {
    f"fake_{f.name}": (f.name, {"float": float, "int": int, "str": str}[str(f.type)])
    for f in dataclasses.fields(Simulation)
}


@dataclass
class CancelCall:
    at: float
    status: str  # the response's status when the cancel arrived
    changed: bool  # whether this call cancelled it


@dataclass
class Call:
    """One API request as the server saw it, faulted or not (the request log)."""

    at: float  # arrival
    route: str  # create | get | cancel
    response_id: str | None
    project: str | None  # the OpenAI-Project header: tells apart clients sharing a key
    fault: str | None = None  # the injected fault, if one struck (body faults: the last one)
    status: int | None = None  # HTTP status answered; 0 = connection dropped; None = in flight
    ended: float | None = None


@dataclass
class Record:
    """One response as the server knows it; its status is a function of the clock."""

    id: str
    model: str
    created_at: float
    background: bool
    metadata: dict[str, str]
    simulation: Simulation
    echoed: dict[str, Any]  # request fields the response object repeats
    message_id: str = field(default_factory=lambda: "msg_" + secrets.token_hex(25))
    gets: list[float] = field(default_factory=list)
    cancels: list[CancelCall] = field(default_factory=list)
    cancelled_at: float | None = None
    # The "cancel reported cancelled but later completed" fault: completed from this instant on.
    completes_after_cancel_at: float | None = None
    # Hostile payloads: fields laid over this response's object in every reply (a value of
    # `REMOVE` drops the field), e.g. {"created_at": "yesterday"} or {"status": 7}.
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def finishes_at(self) -> float:
        return self.created_at + self.simulation.queue + self.simulation.run

    @property
    def cancel_changed(self) -> bool:
        return any(call.changed for call in self.cancels)

    def status(self, now: float) -> str:
        if self.cancelled_at is not None:
            late = self.completes_after_cancel_at
            return "completed" if late is not None and now >= late else "cancelled"
        if now < self.created_at + self.simulation.queue:
            return "queued"
        if now < self.finishes_at:
            return "in_progress"
        return self.simulation.outcome

    def finished_at(self, now: float) -> float | None:
        status = self.status(now)
        if status in ACTIVE:
            return None
        if status == "cancelled":
            return self.cancelled_at
        return self.completes_after_cancel_at or self.finishes_at

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "background": self.background,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "gets": list(self.gets),
            "cancels": [dataclasses.asdict(call) for call in self.cancels],
            "status": self.status(now),
            "finished_at": self.finished_at(now),
            "cancel_changed": self.cancel_changed,
        }


@dataclass
class RouteFaults:
    """Probabilities (0 to 1) of each fault on one route; all off by default."""

    server_error: float = 0.0  # 500, 502 (an HTML proxy page) or 503
    rate_limit: float = 0.0  # 429 rate_limit_exceeded with Retry-After and x-ratelimit-* headers
    quota: float = 0.0  # 429 insufficient_quota, no Retry-After
    slow: float = 0.0  # answer only after Faults.slow_seconds
    hang: float = 0.0  # hold the request Faults.hang_seconds, then drop the connection
    drop: float = 0.0  # close the connection without answering
    malformed_json: float = 0.0  # 200 with a truncated JSON body
    wrong_content_type: float = 0.0  # 200 with an HTML page
    unknown_status: float = 0.0  # the object's status is Faults.unknown_status_value
    extra_fields: float = 0.0  # unknown fields in the object
    missing_fields: float = 0.0  # the object lacks its optional fields (usage, metadata, ...)
    odd_shape: float = 0.0  # 200 with a body of unexpected shape: wrong-typed fields, or not an object

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            _check_number(name, value, most=1)


@dataclass
class Faults:
    """Fault switches. Error, slow, hang and drop faults strike before the request takes effect;
    the body faults (malformed JSON, wrong content type, unknown status, extra and missing
    fields) garble the answer of a request that did take effect."""

    create: RouteFaults = field(default_factory=RouteFaults)
    get: RouteFaults = field(default_factory=RouteFaults)
    cancel: RouteFaults = field(default_factory=RouteFaults)
    cancel_then_complete: float = 0.0  # probability a successful cancel ends `completed` later
    cancel_then_complete_after: float = 0.5  # seconds after such a cancel
    retry_after: float = 1.0
    slow_seconds: float = 0.5
    hang_seconds: float = 300.0
    unknown_status_value: str = "paused"
    outage_until: float = 0.0  # unix time: every API request gets 503 until then
    # A hostile proxy: every error message repeats the bearer key the request presented.
    echo_key: bool = False
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)
    # Faults forced on the next requests of a route, before any drawn at random (see `force`).
    forced: dict[str, list[str]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        _check_number("cancel_then_complete", self.cancel_then_complete, most=1)
        for name in ("cancel_then_complete_after", "retry_after", "slow_seconds", "hang_seconds", "outage_until"):
            _check_number(name, getattr(self, name))
        if not isinstance(self.echo_key, bool):
            raise ValueError("echo_key must be true or false")
        self.rng = random.Random(self.seed)

    def outage_for(self, seconds: float) -> None:
        self.outage_until = time.time() + seconds

    def force(self, route: str, kind: str, times: int = 1) -> None:
        """Strike the next `times` requests on `route` with fault `kind` (a `RouteFaults` field
        name), whatever the probabilities say: a one-shot quota 429, a cancel that hangs once."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}")
        if kind not in {f.name for f in dataclasses.fields(RouteFaults)}:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.forced.setdefault(route, []).extend([kind] * times)

    def take_forced(self, route: str) -> str | None:
        queue = self.forced.get(route)
        return queue.pop(0) if queue else None

    def in_outage(self) -> bool:
        return time.time() < self.outage_until

    def strikes(self, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability

    def as_json(self) -> dict[str, Any]:
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        settings["forced"] = {route: list(kinds) for route, kinds in self.forced.items() if kinds}
        return {k: dataclasses.asdict(v) if isinstance(v, RouteFaults) else v for k, v in settings.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Faults:
        """Faults from the `POST /_fake/faults` body; `outage_for` (seconds) opens an outage."""
        data = dict(data)
        outage = data.pop("outage_for", None)
        routes: dict[str, Any] = {}
        for route in ROUTES:
            if route in data:
                if not isinstance(data[route], dict):
                    raise ValueError(f"{route}: expected a JSON object")
                routes[route] = RouteFaults(**data.pop(route))
        forced = data.pop("forced", None) or {}
        if not isinstance(forced, dict):
            raise ValueError("forced: expected a JSON object of route -> list of fault kinds")
        faults = cls(**routes, **data)  # unknown keys raise TypeError
        for route, kinds in forced.items():
            for kind in kinds if isinstance(kinds, list) else [kinds]:
                faults.force(route, kind)
        if outage is not None:
            faults.outage_for(float(outage))
        return faults


def _check_number(name: str, value: Any, most: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= most:
        raise ValueError(f"{name} must be a number from 0" + (f" to {most}" if most < math.inf else " up"))


class FakeState:
    """The fake server's state. Constructor keywords beyond the named ones are the server-wide
    `Simulation` defaults (queue, run, outcome, input_tokens, ...)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        id_prefix: str = "resp_",
        cancel_finished_status: CancelFinishedStatus = 400,
        **defaults: Any,
    ) -> None:
        if cancel_finished_status not in (400, 409, 200):
            raise ValueError("cancel_finished_status must be 400, 409 or 200")
        self.api_key = api_key
        self.id_prefix = id_prefix
        self.cancel_finished_status = cancel_finished_status
        self.defaults = Simulation(**defaults)
        self.faults = Faults()
        self.fault_counts: Counter[str] = Counter()  # injected faults by kind
        self.requests: Counter[str] = Counter()  # API requests by route
        self.client_headers: Counter[tuple[str | None, str | None]] = Counter()  # (organization, project)
        self.lock = threading.Lock()
        self._responses: dict[str, Record] = {}
        self._calls: list[Call] = []
        self._stalls: list[tuple[float, float]] = []  # (start, seconds) of the server's own loop stalls

    def record(self, response_id: str) -> Record:
        with self.lock:
            return self._responses[response_id]

    def records(self) -> list[Record]:
        with self.lock:
            return list(self._responses.values())

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.fault_counts[kind] += 1

    def count_request(self, route: str, organization: str | None, project: str | None) -> None:
        with self.lock:
            self.requests[route] += 1
            if organization or project:
                self.client_headers[organization, project] += 1

    def log_call(self, route: str, response_id: str | None, project: str | None) -> Call:
        call = Call(at=time.time(), route=route, response_id=response_id or None, project=project)
        with self.lock:
            self._calls.append(call)
        return call

    def end_call(self, call: Call, status: int) -> None:
        with self.lock:
            call.status = status
            call.ended = time.time()

    def note_stall(self, seconds: float) -> None:
        now = time.time()
        with self.lock:
            self._stalls.append((now - seconds, seconds))

    def stalls(self) -> list[tuple[float, float]]:
        """When the server itself could not answer: (start, seconds), for test oracles."""
        with self.lock:
            return list(self._stalls)

    def calls(self) -> list[dict[str, Any]]:
        """The request log: every API request, faulted or not, oldest first (for test oracles;
        not part of `snapshot()`, which stays small)."""
        with self.lock:
            return [dataclasses.asdict(call) for call in self._calls]

    def create(
        self,
        model: str,
        *,
        background: bool = False,
        metadata: dict[str, str] | None = None,
        created_at: float | None = None,
        echoed: dict[str, Any] | None = None,
    ) -> Record:
        record = Record(
            id=self.id_prefix + secrets.token_hex(25),
            model=model,
            created_at=time.time() if created_at is None else created_at,
            background=background,
            metadata=metadata or {},
            simulation=self.defaults.overridden_by(metadata or {}),
            echoed=echoed or {},
        )
        with self.lock:
            self._responses[record.id] = record
        return record

    def get(self, response_id: str) -> Record:
        now = time.time()
        with self.lock:
            record = self._found(response_id)
            record.gets.append(now)
        return record

    def cancel(self, response_id: str) -> Record:
        """Cancel as the API does; raises ApiError when the response cannot be cancelled now."""
        now = time.time()
        with self.lock:
            record = self._found(response_id)
            status = record.status(now)
            changed = record.background and status in ACTIVE
            record.cancels.append(CancelCall(at=now, status=status, changed=changed))
            if changed:
                record.cancelled_at = now
                if self.faults.strikes(self.faults.cancel_then_complete):
                    record.completes_after_cancel_at = now + self.faults.cancel_then_complete_after
                    self.fault_counts["cancel_then_complete"] += 1
        if changed or status == "cancelled" or self.cancel_finished_status == 200:
            return record
        message = "Cannot cancel a synchronous response." if status in ACTIVE else f"Cannot cancel a {status} response."
        raise ApiError(self.cancel_finished_status, message)

    def snapshot(self) -> dict[str, Any]:
        """The server's record as JSON, for test oracles (also `GET /_fake/state`)."""
        now = time.time()
        with self.lock:
            return {
                "now": now,
                "responses": {r.id: r.as_json(now) for r in self._responses.values()},
                "fault_counts": dict(self.fault_counts),
                "requests": dict(self.requests),
                "client_headers": [
                    {"organization": org, "project": proj, "count": n} for (org, proj), n in self.client_headers.items()
                ],
            }

    def _found(self, response_id: str) -> Record:
        try:
            return self._responses[response_id]
        except KeyError:
            raise ApiError(404, f"Response with id '{response_id}' not found.") from None
