"""The pickup of what the CLI wrote: responses it tracked, cancels it recorded."""

from __future__ import annotations

from tether import tracker
from tether.daemon.queries import PICKUP_PAGE
from tether.daemon.state import State
from tether.models import EventKind

PICKUP_EVERY = 0.5  # newly tracked responses are noticed within a second


class Pickup:
    def __init__(self, state: State, event_cursor: int = 0) -> None:
        self.state = state
        self.event_cursor = event_cursor  # the last event read; kept in the store's heartbeat row

    async def run(self) -> None:
        """Adopt responses that the CLI tracked or changed (a manual cancel, say).

        Their events are logged here too, so the daemon's log (the journal) holds
        every event of the store, whoever wrote it; with several daemons on the store, every
        event of the responses it works (docs/cluster.md).
        """
        state = self.state
        while True:
            events, last = await state.writer.run(state.queries.read_events_by_others, self.event_cursor)
            if not events:
                self.event_cursor = last
                return
            # The daemon's config decides the policy, whatever config the CLI ran with.
            ids = list({ev.response_id for ev in events if ev.response_id})
            rows = await state.writer.run(state.queries.reapply_policies, ids, last)
            self.event_cursor = last
            for ev in events:
                if ev.origin == "daemon" or (ev.response_id is not None and not state.owns(ev.response_id)):
                    continue  # another daemon's, logged by it; a response another daemon works, logged there
                tracker.log_event(
                    ev.kind, ev.response_id, ev.from_status, ev.to_status, ev.reason, ev.detail, origin=ev.origin
                )
                if ev.kind == EventKind.CANCEL_REQUESTED:
                    state.metrics.cancel_requested(ev.reason or "manual")
            state.budget_wake.set()
            for row in rows:
                state.adopt(row)
            if len(events) < PICKUP_PAGE:
                return
