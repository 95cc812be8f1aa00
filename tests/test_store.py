"""The store: migrations build exactly the models' schema, the file is private, one writer.

Tests taking `store_url` run on a SQLite file and on a PostgreSQL database (conftest)."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from tether import models  # noqa: F401
from tether.models import Response
from tether.store import Store, StoreError, writer_lock


def test_migrations_from_empty_build_exactly_the_models_schema(store_url):
    store = Store(store_url)
    assert store.migrate() == ["0001", "0002", "0003", "0004", "0005", "0006"]
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    assert store.migrate() == []
    assert not store.pending_migrations()


def test_schema_head_names_the_newest_migration(tmp_path):
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from tether.store import MIGRATIONS, SCHEMA_HEAD

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD


def test_ensure_schema_migrates_a_new_store_and_leaves_a_current_one_alone(store_url):
    store = Store(store_url)
    store.ensure_schema()
    assert not store.pending_migrations()
    store.ensure_schema()
    assert not store.pending_migrations()


def test_the_store_is_created_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "state" / "tether.db"
    Store(f"sqlite:///{path}").migrate()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_the_store_runs_in_wal_mode_with_full_sync(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL


def test_a_second_writer_lock_on_the_same_sqlite_store_is_refused_naming_the_holder(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tether.store import Store, writer_lock; "
            f"lock = writer_lock(Store({url!r})); lock.acquire(); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            writer_lock(Store(url)).acquire()
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    lock = writer_lock(Store(url))
    lock.acquire()  # free again once the holder is gone
    lock.release()


def test_the_daemon_lock_of_a_postgresql_store_is_shared_by_its_daemons(postgres_url):
    """Several daemons run on one PostgreSQL store (test_cluster.py); each holds the lock."""
    first, second = writer_lock(Store(postgres_url)), writer_lock(Store(postgres_url))
    first.acquire()
    second.acquire()
    assert first.held() and second.held() and first.in_use()
    first.release()
    second.release()
    assert writer_lock(Store(postgres_url)).in_use() is False


def test_a_start_that_meets_the_health_probe_on_the_lock_file_is_not_refused(tmp_path):
    """`tether check` takes a SQLite store's lock file for an instant; a daemon starting in that
    instant waits it out instead of taking the probe for another daemon."""
    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    lock = writer_lock(store)
    fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the probe, holding it for 50 ms
    threading.Timer(0.05, os.close, (fd,)).start()
    lock.acquire()
    assert lock.held()
    lock.release()


def test_concurrent_writers_wait_for_each_other_instead_of_failing(store_url):
    url = store_url
    Store(url).migrate()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        store = Store(url)
        try:
            for _ in range(25):
                with store.writing() as session:
                    row = session.get(Response, "resp_shared")
                    if row is None:
                        session.add(Response(id="resp_shared", account="a", tracked_at=0.0, polls=1))
                    else:
                        row.polls += 1
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(url).reading() as session:
        assert session.get(Response, "resp_shared").polls == 100  # no lost update


def test_a_batch_commits_its_writes_together_and_a_failing_one_alone_is_rolled_back(store_url):
    url = store_url
    store = Store(url)
    store.migrate()
    committed: list[str] = []
    seen_by_another_connection: list[int] = []

    def count_rows() -> int:
        with Store(url).reading() as session:
            return len(session.execute(text("SELECT id FROM responses")).all())

    with store.batch():
        with store.writing() as session:
            session.add(Response(id="resp_kept", account="a", tracked_at=0.0))
        store.after_commit(lambda: committed.append("kept"))
        with pytest.raises(RuntimeError):
            with store.writing() as session:
                session.add(Response(id="resp_dropped", account="a", tracked_at=0.0))
                session.flush()
                raise RuntimeError("this write fails")
        with store.writing() as session:
            session.add(Response(id="resp_also_kept", account="a", tracked_at=0.0))
        seen_by_another_connection.append(count_rows())
        assert committed == []  # not yet: nothing is durable before the batch commits

    assert seen_by_another_connection == [0]
    assert committed == ["kept"]
    with store.reading() as session:
        ids = {r[0] for r in session.execute(text("SELECT id FROM responses"))}
    assert ids == {"resp_kept", "resp_also_kept"}


def test_a_failed_batch_commit_runs_no_after_commit_callback(store_url):
    store = Store(store_url)
    store.migrate()
    committed: list[str] = []
    with pytest.raises(RuntimeError):
        with store.batch():
            with store.writing() as session:
                session.add(Response(id="resp_x", account="a", tracked_at=0.0))
            store.after_commit(lambda: committed.append("x"))
            raise RuntimeError("the batch fails before its commit")
    assert committed == []
    with store.reading() as session:
        assert session.get(Response, "resp_x") is None


def test_a_memory_database_is_refused_with_a_message(tmp_path):
    with pytest.raises(StoreError, match="not a file"):
        Store("sqlite://")


def test_a_store_in_an_unwritable_place_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/tether-cannot-be-here/t.db"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "sub" / "t.db")
    with pytest.raises(StoreError, match="cannot open store"):
        Store(f"sqlite:///{target}")


def test_a_store_on_a_full_disk_is_refused_before_anything_is_opened(tmp_path, monkeypatch):
    """Opening a WAL store on a full disk can end in SIGBUS inside SQLite (its memory-mapped
    WAL index is rebuilt there): tether refuses first, with a message naming the store."""
    from tether import diskspace

    real = os.statvfs(tmp_path)
    full = os.statvfs_result((real.f_bsize, 4096, 1000, 10, 10, 100, 50, 50, 0, 255))
    monkeypatch.setattr(diskspace.os, "statvfs", lambda _path: full)
    db = tmp_path / "store" / "t.db"
    with pytest.raises(StoreError, match=r"is full: only 40 KiB free.*free some space") as refused:
        Store(f"sqlite:///{db}")
    assert str(db) in str(refused.value)
    assert not db.parent.exists()  # nothing created


def test_the_wal_index_gets_its_blocks_ahead_without_changing_its_size(tmp_path):
    """Writes through SQLite's mapped WAL index must never need a free block (diskspace.py)."""
    from tether import diskspace

    if diskspace._fallocate() is None:
        pytest.skip("no fallocate here")
    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    store.ensure_schema()
    with store.engine.connect() as conn:  # a checkout with the index open
        conn.exec_driver_sql("SELECT 1")
        with store.engine.connect() as other:  # a second pooled connection: its own first checkout
            other.exec_driver_sql("SELECT 1")
    shm = os.stat(f"{tmp_path / 't.db'}-shm")
    assert shm.st_size == 32 * 1024  # SQLite's view of the file is unchanged
    if shm.st_blocks * 512 < diskspace.PREALLOCATE_BYTES:
        pytest.skip("this filesystem ignores FALLOC_FL_KEEP_SIZE")  # tmpfs, overlayfs on some kernels
    # SQLite's locks on the index survive: another process still sees this one holding the DMS
    # byte (128) shared, so it will not rebuild the index under us (a second descriptor opened and
    # closed on the file would have dropped every POSIX lock this process holds on it).
    probe = (
        "import fcntl, os, struct, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "lock = struct.pack('hhqqi4x', fcntl.F_WRLCK, os.SEEK_SET, 128, 1, 0)\n"
        "print(struct.unpack('hhqqi4x', fcntl.fcntl(fd, fcntl.F_GETLK, lock))[0])\n"
    )
    held = subprocess.run(
        [sys.executable, "-c", probe, f"{tmp_path / 't.db'}-shm"], capture_output=True, text=True, check=True
    ).stdout.strip()
    store.dispose()
    assert held == str(fcntl.F_RDLCK), held
