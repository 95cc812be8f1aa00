"""The daemon: polls tracked responses, enforces deadlines and budgets, cancels, picks up CLI work.

Two timer heaps drive the work, both rebuilt from the store at start (due times live in the
database, so a restart loses nothing): polls, each active response's next poll on the
`[polling]` backoff; and timers, deadlines and cancel retries, with a loop of their own so a
cancel leaves at its deadline however busy polling is. APScheduler runs the periodic jobs:
picking up what the CLI wrote, flushing poll bookkeeping in batches, and the heartbeat. Store
functions run on one worker thread, so an fsync never stalls the event loop.

The parts are small classes that each hold a reference to one shared `State` (composition,
not mixins): a part's module then says everything it owns, and what it shares is named on
`State`, not scattered over one `self`.

- lifecycle.py     `Daemon`: start-up, periodic jobs, signals, reload, heartbeat, shutdown
- state.py         `State`: config, clients, the active records and their two heaps
- records.py       `Active` (one response, as scheduling sees it) and `PollMark`
- polling.py       `Polling`: the poll loop, looks, poll bookkeeping, the poll valve
- deadlines.py     `Deadlines`: the deadline and cancel loop
- pickup.py        `Pickup`: what the CLI wrote (tracked responses, manual cancels)
- budget_watch.py  `BudgetWatch`: budget evaluation and its cancels
- queries.py       `Queries`: every read and write of the store, run on the store thread
- writer.py        `StoreWriter`: the store thread, batched transactions, the urgent lane

Cancels go through `tether.cancelling`, which `tether cancel` uses too.
"""

from tether.daemon.lifecycle import Daemon

__all__ = ["Daemon"]
