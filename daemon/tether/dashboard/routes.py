"""The dashboard's routes on the TCP listener (docs/dashboard.md).

Every page is read from the store and rendered off the event loop (one thread hop each), so
looking at it never delays a poll or a deadline. The only write is the cancel, and its two
routes exist only when the listener has a token (tether.dashboard.access).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from tether import actions
from tether.actions import Refused
from tether.dashboard import queries, rendering
from tether.dashboard.access import Access
from tether.models import EventKind

if TYPE_CHECKING:
    from tether.server.front import Front

# No inline script or style anywhere: the page's own files only, and nothing from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends `Origin: null` with a form, which the cancel refuses.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
REASON_MAX = 500
T = TypeVar("T")


class Dashboard:
    def __init__(self, front: Front, token: str | None) -> None:
        self.front = front
        self.access = Access(token)
        self._reading = asyncio.Semaphore(1)

    def routes(self) -> list[web.RouteDef | web.StaticDef]:
        routes: list[web.RouteDef | web.StaticDef] = [
            web.get("/", self.overview),
            web.get("/responses", self.responses),
            web.get("/responses/{id}", self.response),
            web.get("/events", self.events),
            web.get("/events/rows", self.event_rows),
            web.get("/budgets", self.budgets),
            web.static("/static", rendering.STATIC),
        ]
        if self.access.can_cancel:
            routes += [
                web.get("/responses/{id}/cancel", self.confirm_cancel),
                web.post("/responses/{id}/cancel", self.cancel),
            ]
        return routes

    # ---- pages -----------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        state = self.front.state
        errors = state.metrics.api_errors()  # counters the loop changes: read here, on it

        def read(now: float) -> dict[str, Any]:
            standing = actions.budget_records(state.store, state.config, state.pricing)
            return {
                **queries.overview(state.store, now),
                "api_errors": errors,
                "started_at": state.started_at,
                "budgets": [
                    {**b, "bar": rendering.bar(b["spent_usd"], b["committed_usd"], b["limit_usd"])} for b in standing
                ],
            }

        return await self._page(request, "overview.html", read)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        state = self.front.state
        filters = queries.Filters.of(request.query)
        number = _page_number(request.query.get("page", "1"))

        def read(now: float) -> dict[str, Any]:
            page = queries.responses(state.store, state.config, state.pricing, filters, number)
            fields = asdict(filters)
            return {
                "page": page,
                "filters": filters,
                "statuses": [queries.ACTIVE, queries.UNSEEN, *actions.STATUSES],
                "accounts": sorted(state.config.accounts),
                "policies": [p.name for p in state.config.policies],
                "prev_url": rendering.query_string({**fields, "page": page.number - 1}),
                "next_url": rendering.query_string({**fields, "page": page.number + 1}),
            }

        return await self._page(request, "responses.html", read)

    async def response(self, request: web.Request) -> web.StreamResponse:
        state = self.front.state
        rid = request.match_info["id"]
        in_session = self.access.in_session(request)

        def read(now: float) -> dict[str, Any]:
            shown = queries.response(state.store, state.config, state.pricing, rid)
            after = max((e["id"] for e in shown["events"]), default=queries.latest_event_id(state.store))
            form_key = self.access.form_key(rid) if in_session and shown["row"]["active"] else None
            return {**shown, "after": after, "form_key": form_key}

        return await self._page(request, "response.html", read)

    async def events(self, request: web.Request) -> web.StreamResponse:
        store = self.front.state.store
        kind, rid = request.query.get("kind", ""), request.query.get("response_id", "").strip()

        def read(now: float) -> dict[str, Any]:
            latest = queries.latest_event_id(store)
            shown = queries.events(store, response_id=rid, kind=kind, after=0)
            return {
                "events": shown,
                "after": latest,
                "kind": kind,
                "response_id": rid,
                "kinds": [k.value for k in EventKind],
            }

        return await self._page(request, "events.html", read)

    async def event_rows(self, request: web.Request) -> web.StreamResponse:
        """The events after `after` as table rows, newest first: what a live tail adds."""
        store = self.front.state.store
        after = request.query.get("after", "0")
        if not after.isdigit():
            return _html(f"after: expected an event id, got {after!r}", 400, text=True)
        kind, rid = request.query.get("kind", ""), request.query.get("response_id", "")

        def read() -> tuple[str, int]:
            found = queries.events(store, response_id=rid, kind=kind, after=int(after))
            last = max((e["id"] for e in found), default=int(after))
            return rendering.page("event_rows.html", events=found, now=time.time(), with_response=not rid), last

        try:
            rows, last = await self._off_loop(read)
        except Refused as exc:
            return _html(exc.message, exc.status, text=True)
        answer = _html(rows, 200)
        answer.headers["X-Last-Event-Id"] = str(last)
        return answer

    async def budgets(self, request: web.Request) -> web.StreamResponse:
        state = self.front.state

        def read(now: float) -> dict[str, Any]:
            shown = queries.budgets(state.store, state.config, state.pricing, now)
            for b in shown:
                b["chart"] = rendering.spend_chart(b["points"], b["start"], b["end"], b["limit_usd"])
            return {"budgets": shown}

        return await self._page(request, "budgets.html", read)

    # ---- the one action ------------------------------------------------------------------

    async def confirm_cancel(self, request: web.Request) -> web.StreamResponse:
        """The question before a cancel: a page that asks, whose button sends the POST."""
        store = self.front.state.store
        rid = request.match_info["id"]
        reason = request.query.get("reason", "").strip()

        def read(now: float) -> dict[str, Any]:
            self._check_session(request)
            _check_reason(reason)
            record = actions.show_record(store, rid)
            return {"record": record, "reason": reason, "form_key": self.access.form_key(rid)}

        return await self._page(request, "confirm.html", read)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["id"]
        form = await request.post()
        reason, key = str(form.get("reason", "")).strip(), str(form.get("form_key", ""))
        try:
            if not self.access.may_cancel(request, rid, key):
                raise Refused(403, "this cancel did not come from a dashboard page opened with the token", "forbidden")
            _check_reason(reason)
            await self.front.cancel(rid, reason=reason)
        except Refused as exc:
            refusal = exc

            def refused(now: float) -> dict[str, Any]:
                raise refusal

            return await self._page(request, "error.html", refused)
        return _see_other(f"/responses/{rid}")

    # ---- answering -----------------------------------------------------------------------

    async def _page(self, request: web.Request, name: str, read: Callable[[float], dict[str, Any]]):
        if "token" in request.query:
            return self._open_session(request)
        common = {"session": self.access.in_session(request), "can_cancel": self.access.can_cancel}

        def build() -> tuple[str, int]:
            now = time.time()
            try:
                return rendering.page(name, now=now, **common, **read(now)), 200
            except Refused as exc:
                return rendering.page("error.html", now=now, **common, status=exc.status, message=exc.message), (
                    exc.status
                )

        text, status = await self._off_loop(build)
        return _html(text, status)

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """Run a page's reading and rendering on the daemon's reading threads (`Front.read`),
        one page at a time: threads that run Python share the interpreter lock with the event
        loop, and a single one leaves it the most, however many people look
        (docs/benchmarks.md, "The dashboard")."""
        async with self._reading:
            return await self.front.read(work)

    def _open_session(self, request: web.Request) -> web.StreamResponse:
        """`?token=…`: the session cookie, and the same page without the token in its address."""
        if not self.access.can_cancel:
            return _html("this listener has no token: its dashboard is read-only", 404, text=True)
        if not self.access.token_matches(request.query["token"]):
            return _html("wrong token", 401, text=True)
        rest = [(k, v) for k, v in request.query.items() if k != "token"]
        answer = _see_other(request.path + ("?" + urlencode(rest) if rest else ""))
        self.access.open_session(answer)
        return answer

    def _check_session(self, request: web.Request) -> None:
        if not self.access.in_session(request):
            raise Refused(403, "to cancel, open the dashboard once with ?token=<the listener's token>", "forbidden")


def _check_reason(reason: str) -> None:
    if not reason:
        raise Refused(400, "a cancel needs a reason", "invalid_reason")
    if len(reason) > REASON_MAX:
        raise Refused(400, f"a reason is at most {REASON_MAX} characters", "invalid_reason")


def _page_number(text: str) -> int:
    if not text.isdigit():
        return 1
    return int(text)


def _html(body: str, status: int, *, text: bool = False) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/plain" if text else "text/html", headers=HEADERS)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})
