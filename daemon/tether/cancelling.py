"""One cancel path, for `tether cancel` and the daemon alike.

The intent is recorded first (`tracker.request_cancel`, committed before any call); `send`
then calls the API and says what came of it, and the caller records that in its own
transaction: an answer with `settle`, a failure with `record_failure` (the daemon keeps its
poll bookkeeping with a 404, so it calls `record_not_found` itself). README.md, "Cancel",
describes the behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether import tracker
from tether.api import NO_RETRY, APIError, NotFound, RequestRejected, ResponsesClient, RetryPolicy
from tether.config import Config
from tether.models import CancelState, Response
from tether.pricing import Pricing
from tether.statuses import TERMINAL

# The answer to a cancel is the first look of its confirmation window; the confirmation
# polls (for a late `completed`) start at this fraction of the window and back off, ~4 in all.
CONFIRM_POLLS_FROM = 8


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one cancel came to."""

    asked_at: float
    observed: dict[str, Any] | None = None  # what the API said the response is (None: nothing seen)
    reason: str = "cancel"  # the observation's reason: the cancel's answer, or the `poll` after a refusal
    refused: RequestRejected | None = None  # a 4xx but 404: not cancellable now, and looked at instead
    failed: APIError | None = None  # no answer: a 404, or a failure to retry

    @property
    def answered(self) -> bool:
        return self.failed is None


async def send(
    client: ResponsesClient,
    rid: str,
    status: str | None,
    now: float,
    *,
    retry: RetryPolicy | None = NO_RETRY,
    on_error: Callable[[str, APIError], None] = lambda op, exc: None,
    fence: Callable[[], None] | None = None,
) -> Outcome:
    """Call cancel; on a refusal, look (GET) at what the response is instead. `on_error`
    hears of every API error, with the operation (`cancel` or `get`); `fence` may keep the
    cancel from leaving (`ResponsesClient.cancel`)."""
    if status in TERMINAL:  # it ended on its own while the cancel was pending
        return Outcome(now)
    try:
        return Outcome(now, await client.cancel(rid, retry=retry, fence=fence))
    except RequestRejected as exc:
        on_error("cancel", exc)
        try:
            observed = await client.get(rid, retry=retry, priority=True)
        except APIError as look_error:
            on_error("get", look_error)
            observed = None  # the confirmation polls will find out
        return Outcome(now, observed, "poll", refused=exc)
    except APIError as exc:
        on_error("cancel", exc)
        return Outcome(now, failed=exc)


def settle(rec: tracker.Recorder, row: Response, outcome: Outcome, config: Config, pricing: Pricing) -> None:
    """Record an answered cancel: what it said, and the confirmation window that follows."""
    if outcome.refused is not None:
        refused = outcome.refused
        tracker.cancel_failed(rec, row, http_status=refused.status, error=refused.message, retry=False)
    if outcome.observed is not None:
        tracker.observe(rec, row, outcome.observed, config, pricing, reason=outcome.reason, asked_at=outcome.asked_at)
    tracker.cancel_answered(row, config.polling.confirm_window, rec.now)
    row.poll_interval = config.polling.confirm_window / CONFIRM_POLLS_FROM
    row.next_poll_at = rec.now + row.poll_interval


def record_failure(rec: tracker.Recorder, row: Response, error: APIError, config: Config) -> None:
    """Record a cancel that got no answer; the cancel stays pending and is retried."""
    if isinstance(error, NotFound):
        record_not_found(rec, row, config.polling.lost_after)
    else:
        tracker.cancel_failed(rec, row, http_status=error.status, error=error.message, retry=True)


def record_not_found(rec: tracker.Recorder, row: Response, lost_after: int) -> None:
    """A 404 (to a poll or a cancel): counted toward `lost`; a pending cancel of a response
    that is lost, or finished and forgotten by the server, has nothing left to chase."""
    if row.status in TERMINAL:
        row.confirm_until = None
        if row.cancel_state == CancelState.PENDING.value:
            row.cancel_state = CancelState.SETTLED.value
    elif tracker.not_found(rec, row, lost_after):
        if row.cancel_state == CancelState.PENDING.value:
            row.cancel_state = CancelState.SETTLED.value
