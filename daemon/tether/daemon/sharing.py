"""The daemon's share of a PostgreSQL store worked by several (docs/cluster.md): every
`scan_every` it looks at the others, ends the session of one that froze, takes free shards up
to its fair share (and budget enforcement, if no one holds it), and gives back shards above it."""

from __future__ import annotations

import asyncio
import random
import time

from tether.cluster import SHARDS, Cluster, Member, Survey, fair_share, shard_of
from tether.daemon import queries
from tether.daemon.records import Active
from tether.daemon.state import State
from tether.daemon.writer import StoreFailure
from tether.logs import log
from tether.models import CancelState


class Sharing:
    def __init__(self, state: State, cluster: Cluster) -> None:
        self.state = state
        self.cluster = cluster
        self.rng = random.Random()

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.cluster.timing.scan_every)
            try:
                await self.run_once()
            except StoreFailure:
                return  # logged; the daemon is stopping
            except Exception as exc:  # the next scan tries again
                log.error("daemon.error", op="cluster", error=repr(exc))

    async def run_once(self) -> None:
        cluster = self.cluster
        if cluster.lost:
            return
        survey = await asyncio.to_thread(cluster.survey)
        ended = [m for m in await self._end_frozen(survey)]
        ended_ids = {m.instance for m in ended}
        live = [m for m in survey.members if m.alive and m.instance not in ended_ids]
        fair = fair_share(len(live))
        freed = {s for m in ended for s in m.shards}
        if len(cluster.owned) < fair:
            free = [s for s in range(SHARDS) if (s not in survey.held or s in freed) and s not in cluster.owned]
            self.rng.shuffle(free)
            await self._take(free[: fair - len(cluster.owned)], [m for m in survey.members if not m.alive] + ended)
        elif len(cluster.owned) > fair:
            await self._give_back(len(cluster.owned) - fair)
        if not cluster.budgets and (not survey.budgets_held or any(m.budgets for m in ended)):
            if await self.state.writer.run(cluster.take_budgets, urgent=True):
                cluster.budgets = True
                log.info("daemon.budgets", instance=cluster.instance, held=True)
                self.state.budget_wake.set()
        for member in survey.members:
            if not member.alive and member.age > cluster.timing.forget_after:
                await asyncio.to_thread(cluster.forget, member)

    async def _end_frozen(self, survey: Survey) -> list[Member]:
        """End the sessions of the daemons whose heartbeat stopped (frozen, or cut off from the
        database while their session lives on)."""
        cluster = self.cluster
        ended = []
        for member in survey.members:
            if member.instance == cluster.instance or not member.frozen:
                continue
            if await asyncio.to_thread(cluster.end_session, member):
                log.warning(
                    "daemon.frozen",
                    instance=member.instance,
                    host=member.host,
                    pid=member.pid,
                    heartbeat_age=round(member.age, 2),
                    hint="its heartbeat stopped; its database session was ended, and its shards are taken over",
                )
                ended.append(member)
        return ended

    async def _take(self, wanted: list[int], former: list[Member]) -> None:
        """Take these shards if they are free, then schedule their open responses."""
        state, cluster = self.state, self.cluster
        if not wanted:
            return
        # Urgent: ahead of the queued bookkeeping, so a shard given back waits little for its taker.
        taken = await state.writer.run(cluster.take, wanted, urgent=True)
        if not taken:
            return
        cluster.owned = cluster.owned | frozenset(taken)
        started = time.monotonic()
        loaded = await self._load(sorted(taken))
        for member in former:
            came = sorted(set(taken) & set(member.shards))
            if came:
                await asyncio.to_thread(cluster.disown, member, came)
                log.warning(
                    "daemon.takeover",
                    shards=came,
                    from_instance=member.instance,
                    from_host=member.host,
                    from_pid=member.pid,
                    reason="gone" if not member.alive else "frozen",
                )
        log.info(
            "daemon.shards",
            instance=cluster.instance,
            taken=sorted(taken),
            held=len(cluster.owned),
            responses=loaded,
            load_seconds=round(time.monotonic() - started, 3),
        )

    async def _load(self, shards: list[int]) -> int:
        """Schedule the open responses of these shards, a page at a time. A pending cancel may
        have been sent by the daemon that held it before: it is looked at before it is sent."""
        state = self.state
        after, count = "", 0
        while True:
            rows = await asyncio.to_thread(state.queries.read_open_rows, after, shards)
            for row in rows:
                if row.id in state.active:  # adopted meanwhile (the pickup): scheduled already
                    continue
                if row.cancel_state == CancelState.PENDING.value:
                    state.look_first.add(row.id)
                state.add(Active.loaded(row))
            count += len(rows)
            if len(rows) < queries.LOAD_PAGE:
                return count
            after = rows[-1].id

    async def _give_back(self, count: int) -> None:
        """Let go of `count` shards above the fair share: ones with nothing being acted on, nor
        a deadline about to fall due, so that no cancel is caught between two daemons."""
        state, cluster = self.state, self.cluster
        soon = state.clock() + 2 * cluster.timing.scan_every
        busy: set[int] = set()
        by_shard: dict[int, list[Active]] = {}
        for rec in state.active.values():
            shard = shard_of(rec.id)
            by_shard.setdefault(shard, []).append(rec)
            if (
                rec.enforcing
                or rec.cancel_state == CancelState.PENDING.value
                or (rec.deadline_at is not None and rec.deadline_at <= soon)
            ):
                busy.add(shard)
        quiet = sorted(cluster.owned - busy, key=lambda s: len(by_shard.get(s, ())))[:count]
        if not quiet:
            return
        cluster.owned = cluster.owned - frozenset(quiet)  # the store functions write nothing more for them
        for shard in quiet:
            for rec in by_shard.get(shard, ()):
                state.active.pop(rec.id, None)
                state.look_first.discard(rec.id)
        await state.writer.run(cluster.give_back, quiet, urgent=True)
        log.info("daemon.shards", instance=cluster.instance, released=quiet, held=len(cluster.owned))
