"""Several daemons on one PostgreSQL store (docs/cluster.md): each response worked by one of
them, a daemon killed or frozen replaced within `[cluster] takeover`, and one that was
replaced never acting again. Real daemons (subprocesses), a real PostgreSQL, the stand-in;
each daemon names itself to the stand-in with its own OpenAI-Project header, so the
stand-in's record of calls says which daemon sent what."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest

from conftest import API_KEY, Tether, create, server_record, wait_for
from tether.cluster import SHARDS

TAKEOVER = 4.0
POLLING = """first = "1s"
max_interval = "5s"
backoff = 1.5
jitter = 0.1
confirm_window = "2s"
"""
SLOTS = 30  # deadlines every 2 s from FIRST_DEADLINE on: spread over a minute
FIRST_DEADLINE = 16  # room to track 1,000 responses first on a busy 2-core machine


def policies() -> str:
    return "\n".join(
        f'[[policy]]\nname = "slot{k}"\nmatch = {{ metadata = {{ slot = "{k}" }} }}\n'
        f'max_runtime = "{FIRST_DEADLINE + 2 * k}s"\n'
        for k in range(SLOTS)
    )


def daemon_config(tether: Tether, name: str, extra: str = "") -> Path:
    path = tether.root / f"{name}.toml"
    path.write_text(f"""
[store]
url = "{tether.store_url}"

[log]
format = "json"
level = "info"

[accounts.default]
base_url = "{tether.base_url}"
api_key_env = "TETHER_TEST_KEY"
project = "{name}"
max_concurrency = 64

[polling]
{POLLING}

[cluster]
takeover = "{TAKEOVER:g}s"

[server]
socket = "{tether.root / "run" / name / "tether.sock"}"

{extra}
""")
    return path


def start(tether: Tether, name: str, extra: str = "") -> subprocess.Popen:
    return tether.start_daemon(config=daemon_config(tether, name, extra), name=name)


def events_of(tether: Tether, proc: subprocess.Popen, name: str) -> list[dict]:
    return [line for line in tether.log_lines(proc) if line.get("event") == name]


def shards_held(url: str) -> dict[int, int]:
    """pid -> shards of each running daemon, as its row says (its heartbeat writes them)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT pid, shards FROM daemons WHERE stopped_at IS NULL AND lock_pid <> 0")
        return {pid: len(shards) for pid, shards in rows}


def create_many(fake, count: int, metadata) -> list[str]:
    """`count` responses created on the stand-in directly: what is tested starts at `tether track`."""
    return [fake.state.create("o3-pro", background=True, metadata=metadata(i)).id for i in range(count)]


@pytest.mark.timeout(300)
def test_three_daemons_share_the_work_and_take_over_from_a_killed_and_a_frozen_one(tether, fake, postgres_url):
    tether.store_url = postgres_url
    tether.write_config(policies(), polling=POLLING)
    names = ["d1", "d2", "d3"]
    procs = {name: start(tether, name, policies()) for name in names}
    wait_for(
        lambda: sorted(shards_held(postgres_url).values()) in ([21, 21, 22], [20, 22, 22]),
        timeout=30,
        what="the shards shared out",
    )

    # 1,000 responses: each runs 5 s past its deadline (cancelled then), but every fifth
    # ends after 5 s (completed on its own, seen so by a poll, never cancelled).
    def metadata(i: int) -> dict[str, str]:
        slot = i % SLOTS
        return {"slot": str(slot), "fake_run": str(5 if i % 5 == 0 else FIRST_DEADLINE + 2 * slot + 5)}

    began = time.time()
    ids = create_many(fake, 1000, metadata)
    tether.ok("track", "--no-verify", *ids)  # each daemon learns created_at, so the deadline, at its first poll
    assert time.time() < began + FIRST_DEADLINE - 3, "created and tracked too slowly for the first deadlines"

    wait_for(lambda: time.time() > began + FIRST_DEADLINE + 10, timeout=40, what="10 s of deadlines")
    procs["d1"].send_signal(signal.SIGKILL)
    wait_for(lambda: time.time() > began + FIRST_DEADLINE + 22, timeout=40, what="22 s of deadlines")
    procs["d2"].send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    wait_for(lambda: time.time() > frozen_at + 2 * TAKEOVER, timeout=40, what="the freeze")
    procs["d2"].send_signal(signal.SIGCONT)
    resumed_at = time.time()
    assert procs["d2"].wait(timeout=30) == 1  # it finds itself replaced, and stops
    assert [line["event"] for line in events_of(tether, procs["d2"], "daemon.lock_lost")] == ["daemon.lock_lost"]

    server = fake.state.snapshot()["responses"]
    last_deadline = max(int(server[rid]["created_at"]) + FIRST_DEADLINE + 2 * (SLOTS - 1) for rid in ids)
    wait_for(
        lambda: (
            time.time() > last_deadline + TAKEOVER + 2
            and all(
                r["status"] == fake.state.snapshot()["responses"][r["id"]]["status"] for r in tether.records().values()
            )
        ),
        timeout=120,
        what="every deadline passed, and tether's statuses the server's",
    )

    server = fake.state.snapshot()["responses"]
    calls = fake.state.calls()
    late = []
    for i, rid in enumerate(ids):
        record = server[rid]
        deadline = int(record["created_at"]) + FIRST_DEADLINE + 2 * (i % SLOTS)
        if i % 5 == 0:
            assert record["cancels"] == [] and record["status"] == "completed", rid
            continue
        assert record["status"] == "cancelled", rid
        [cancel] = record["cancels"]  # one cancel: never sent by two daemons, nor twice by one
        assert cancel["at"] >= deadline, rid
        if cancel["at"] > deadline + TAKEOVER + 1:
            late.append((rid, cancel["at"] - deadline))
    assert late == [], f"deadlines enforced later than takeover + 1 s: {late[:5]}"
    senders = Counter(call["project"] for call in calls if call["route"] == "cancel")
    assert set(senders) <= set(names) and len(senders) >= 2
    assert [c for c in calls if c["project"] == "d2" and c["route"] == "cancel" and c["at"] >= resumed_at] == []

    with psycopg.connect(postgres_url) as conn:
        twice = conn.execute(
            "SELECT response_id, kind, from_status, to_status, reason, count(*) FROM events"
            " WHERE response_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1"
        ).fetchall()
    assert twice == []

    takeovers = [line for name in ("d2", "d3") for line in events_of(tether, procs[name], "daemon.takeover")]
    from_d1 = {s for line in takeovers if line["from_pid"] == procs["d1"].pid for s in line["shards"]}
    from_d2 = {s for line in takeovers if line["from_pid"] == procs["d2"].pid for s in line["shards"]}
    assert from_d1 and from_d2
    assert {line["reason"] for line in takeovers if line["from_pid"] == procs["d2"].pid} == {"frozen"}
    assert len(from_d1 | from_d2) <= SHARDS
    check = tether.ok("check").stdout
    assert "healthy: 1 daemon running on this store, 64 of 64 shards held" in check
    assert tether.stop_daemon(procs["d3"]) == 0
    assert frozen_at < resumed_at
    print(json.dumps({"senders": senders}))


def member(url: str, takeover: float = 2.0):
    """A daemon's membership on the store at `url`, as `tether run` makes it: a lock session,
    the store's writes pinned to it."""
    from tether.cluster import Cluster
    from tether.store import AdvisoryLock, Store

    store = Store(url)
    store.ensure_schema()
    lock = AdvisoryLock(store)
    lock.acquire()
    cluster = Cluster(store, lock.connection, takeover)
    cluster.join()
    store.instance = cluster.instance
    store.pin_writer(lock.connection)
    return store, lock, cluster


def test_a_frozen_member_is_ended_and_then_can_neither_beat_nor_write_nor_send(postgres_url, fake):
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from tether.api import ResponsesClient
    from tether.cluster import Fenced
    from tether.config import AccountConfig
    from tether.models import Event

    store_a, lock_a, a = member(postgres_url)
    store_b, lock_b, b = member(postgres_url)
    assert a.take([1, 2]) == [1, 2] and b.take([2, 3]) == [3]  # a shard is one daemon's
    a.owned = frozenset({1, 2})
    assert a.beat() and a.lease_left() > 0
    [seen_a] = [m for m in b.survey().members if m.instance == a.instance]
    assert not b.end_session(seen_a)  # its heartbeat is fresh: left alone

    a.stop()  # a freezes: no heartbeat for longer than stale_after
    wait_for(lambda: a.lease_left() <= 0, timeout=30, what="a's lease over")
    wait_for(
        lambda: [m.age for m in b.survey().members if m.instance == a.instance][0] > b.timing.stale_after,
        timeout=30,
        what="a's heartbeat stale",
    )
    assert b.end_session(seen_a)
    assert sorted(b.take([1, 2, 4])) == [1, 2, 4]  # its shards are free at once

    # a wakes: its heartbeat fails, its writes cannot commit, its cancels do not leave
    lost = []
    a.on_lost = lambda: lost.append(True)
    assert not a.beat() and a.lost and lost == [True]
    with pytest.raises(OperationalError):
        with store_a.writing() as session:
            session.add(Event(at=0.0, kind="tracked", response_id="resp_x", origin="daemon"))
    rid = create(fake, fake_run="60")
    client = ResponsesClient(AccountConfig(name="default", base_url=fake.base_url), API_KEY)

    async def cancel() -> None:
        try:
            await client.cancel(rid, fence=a.fence)
        finally:
            await client.aclose()

    with pytest.raises(Fenced):
        asyncio.run(cancel())
    assert server_record(fake, rid)["cancels"] == []
    with store_b.reading() as session:
        assert session.execute(text("SELECT count(*) FROM events")).scalar() == 0
    b.stop()
    lock_a.release()
    lock_b.release()
    store_a.dispose()
    store_b.dispose()


def test_two_daemons_split_the_shards_and_one_takes_them_all_when_the_other_stops(tether, postgres_url):
    tether.store_url = postgres_url
    tether.write_config()
    first = start(tether, "d1")
    second = start(tether, "d2")
    wait_for(lambda: sorted(shards_held(postgres_url).values()) == [32, 32], timeout=30, what="32 shards each")
    check = tether.ok("check").stdout
    assert "healthy: 2 daemons running on this store, 64 of 64 shards held" in check
    assert f"pid {first.pid} on " in check and f"pid {second.pid} on " in check

    socket = tether.root / "run" / "d1" / "tether.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket))) as api:
        health = api.get("http://tether/api/health").json()
        metrics = api.get("http://tether/metrics").text
    assert sorted((d["pid"], d["shards"]) for d in health["daemons"]) == sorted([(first.pid, 32), (second.pid, 32)])
    [started] = events_of(tether, first, "daemon.started")
    assert f'tether_polls_total{{instance="{started["instance"]}"}}' in metrics

    assert tether.stop_daemon(second) == 0
    stopped = time.monotonic()
    wait_for(lambda: shards_held(postgres_url) == {first.pid: 64}, timeout=30, what="all 64 on the first")
    assert time.monotonic() - stopped < TAKEOVER
    assert tether.stop_daemon(first) == 0
    assert shards_held(postgres_url) == {}
    stopped = tether.cli("check").stderr
    assert "unhealthy: no daemon is running on this store" in stopped
    assert f"pid {first.pid} on " in stopped and "stopped at" in stopped
