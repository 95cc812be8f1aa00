"""tether on a PostgreSQL store: the daemon and the CLI beside it, and what SQLite gives for free
(writers in turn), kept with advisory locks. Several daemons on one store: test_cluster.py.

Each test gets a database of its own (conftest's `postgres_url`); the store tests run on both
kinds of store are in test_store.py.
"""

from __future__ import annotations

import socket
import threading

from conftest import create, server_record, wait_for
from tether.models import Event
from tether.store import PG_DAEMON, PG_LOCKS, PG_WRITES, Store

POLICIES = """
[[policy]]
name = "runaway"
match = { metadata = { case = "runaway" } }
max_runtime = "4s"
"""


def test_the_daemon_on_postgresql_picks_up_what_the_cli_tracks_and_cancels_at_the_deadline(tether, fake, postgres_url):
    tether.store_url = postgres_url
    tether.write_config(POLICIES)
    daemon = tether.start_daemon()
    runaway, quick = create(fake, case="runaway", fake_run="60"), create(fake, fake_run="1")
    tether.ok("track", runaway, quick)

    wait_for(lambda: server_record(fake, runaway)["cancels"], timeout=30, what="the cancel")
    [call] = server_record(fake, runaway)["cancels"]
    assert call["at"] >= int(server_record(fake, runaway)["created_at"]) + 4
    wait_for(
        lambda: (
            {r: tether.records()[r]["status"] for r in (runaway, quick)} == {runaway: "cancelled", quick: "completed"}
        ),
        timeout=30,
        what="both ended",
    )
    assert server_record(fake, quick)["cancels"] == []
    kinds = [e["kind"] for e in tether.json("show", runaway)["events"]]
    assert kinds[:3] == ["tracked", "limit_exceeded", "cancel_requested"] and "status" in kinds
    assert "healthy" in tether.ok("check").stdout
    assert not tether.store_path.exists()  # no SQLite file beside it: the database is the store

    assert tether.stop_daemon(daemon) == 0
    logged = [line["event"] for line in tether.log_lines(daemon)]
    assert logged.count("response.tracked") == 2  # the CLI's tracks reached the daemon's log


def test_a_daemon_of_an_older_version_holding_the_store_alone_refuses_this_one(tether, postgres_url):
    """Older daemons took the daemon lock exclusively: one of them and these never run together."""
    import psycopg

    tether.store_url = postgres_url
    tether.write_config()
    with psycopg.connect(postgres_url, autocommit=True) as older:
        older.execute("SELECT set_config('application_name', 'tether daemon pid 41 on oldhost', false)")
        older.execute(f"SELECT pg_advisory_lock({PG_LOCKS}, {PG_DAEMON})")
        refused = tether.cli("run", timeout=60)
    assert refused.returncode == 1
    assert "another tether daemon (pid 41 on oldhost) is already running on" in refused.stderr


def test_writers_take_turns_so_no_event_commits_behind_a_later_one(postgres_url):
    store = Store(postgres_url)
    store.migrate()
    first_wrote, first_may_commit = threading.Event(), threading.Event()
    ids: dict[str, int] = {}

    def write(name: str) -> None:
        with store.writing() as session:
            event = Event(at=0.0, kind="tracked", response_id=f"resp_{name}")
            session.add(event)
            session.flush()
            ids[name] = event.id
            if name == "first":
                first_wrote.set()
                first_may_commit.wait(30)

    first = threading.Thread(target=write, args=("first",))
    first.start()
    assert first_wrote.wait(30)
    second = threading.Thread(target=write, args=("second",))
    second.start()
    waiting = f"""SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                  AND classid = {PG_LOCKS} AND objid = {PG_WRITES}
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
    with store.engine.connect() as conn:
        wait_for(lambda: conn.exec_driver_sql(waiting).scalar() == 1, what="the second writer waiting its turn")
    assert "second" not in ids  # it has not drawn an id while the first is open
    first_may_commit.set()
    first.join(30)
    second.join(30)
    assert ids["first"] < ids["second"]


def test_a_store_that_cannot_be_reached_is_a_message_naming_it(tether):
    tether.store_url = "postgresql://tether@127.0.0.1:1/tether"
    tether.write_config()
    for command in ("ls", "run"):
        result = tether.cli(command)
        assert result.returncode == 1, command
        assert "cannot open the store postgresql://tether@127.0.0.1:1/tether:" in result.stderr, command
        assert "Traceback" not in result.stderr


def test_a_daemon_whose_lock_session_ends_stops_rather_than_run_unlocked(tether, postgres_url):
    """A server restart ends the daemon's session and its lock; another daemon could then start."""
    tether.store_url = postgres_url
    tether.write_config()
    daemon = tether.start_daemon()
    database = postgres_url.rsplit("/", 1)[1]
    store = Store(postgres_url)
    with store.engine.connect() as conn:
        ended = conn.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = %s",
            (database, f"tether daemon pid {daemon.pid} on {socket.gethostname()}"[:63]),
        ).scalar()
    assert ended == 1
    assert daemon.wait(timeout=30) == 1
    lines = tether.log_lines(daemon)
    assert "daemon.lock_lost" in [line["event"] for line in lines]
    assert (lines[-1]["event"], lines[-1]["exit_code"]) == ("daemon.stopped", 1)
    store.dispose()
    again = tether.start_daemon()  # the lock is free: a new daemon takes it
    assert tether.stop_daemon(again) == 0
