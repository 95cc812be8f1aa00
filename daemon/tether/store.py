"""The store: engine setup, migrations, transactions and the single-writer lock.

SQLite runs in WAL mode so the CLI reads while the daemon writes. Write transactions
start with BEGIN IMMEDIATE: a deferred transaction that later tries to write can fail
at once with SQLITE_BUSY (no busy wait), an immediate one waits on busy_timeout.
`synchronous=FULL` makes every committed transition durable across power loss; the
daemon batches its bookkeeping writes so this costs one fsync per batch, not per poll.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from tether.diskspace import free_space_problem, preallocate_on_checkout

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA_HEAD = "0003"  # the newest revision in migrations/versions (a test keeps them equal)
BUSY_TIMEOUT_MS = 30_000


class StoreError(Exception):
    """A store that cannot be opened, migrated or locked; the message says what to do."""


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite_path = sqlite_path(url)
        if self.sqlite_path is not None:
            # A full disk: a message now, not SIGBUS inside SQLite later (see diskspace.py).
            if (problem := free_space_problem(self.sqlite_path)) is not None:
                raise StoreError(problem)
            create_private_file(self.sqlite_path)
        self.engine = build_engine(url)
        if self.sqlite_path is not None:
            preallocate_on_checkout(self.engine, self.sqlite_path)
        self._writer = self.engine.execution_options(tether_immediate=True)
        self._batch = threading.local()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on error.

        Inside `batch()` (on the same thread) it is a SAVEPOINT of the batch's transaction
        instead: rolled back alone on error, committed with the batch.
        """
        batch = getattr(self._batch, "open", None)
        if batch is not None:
            session = batch[0]
            with session.begin_nested():
                yield session
            return
        with Session(self._writer, expire_on_commit=False) as session:
            with session.begin():
                yield session

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: every `writing()` in this block (this thread) shares one transaction,
        so one fsync. Callbacks given to `after_commit` run once it has committed."""
        callbacks: list[Callable[[], None]] = []
        with Session(self._writer, expire_on_commit=False) as session:
            with session.begin():
                self._batch.open = (session, callbacks)
                try:
                    yield
                finally:
                    self._batch.open = None
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once what was written is committed: now, or at the end of the batch."""
        batch = getattr(self._batch, "open", None)
        if batch is None:
            callback()
        else:
            batch[1].append(callback)

    def ensure_schema(self) -> None:
        """Migrate unless the store is already at SCHEMA_HEAD (a cheap look, no Alembic import)."""
        try:
            with self.engine.connect() as conn:
                current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except OperationalError:
            current = None  # a new store: no version table yet
        if current != SCHEMA_HEAD:
            self.migrate()

    def migrate(self) -> list[str]:
        """Apply pending Alembic migrations; returns the revisions applied."""
        from alembic import command
        from alembic.config import Config as AlembicConfig
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        script = ScriptDirectory.from_config(cfg)
        with self._writer.begin() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        after = script.get_current_head()
        if before == after:
            return []
        return [rev.revision for rev in script.iterate_revisions(after, before)][::-1]

    def pending_migrations(self) -> bool:
        from alembic.config import Config as AlembicConfig
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() != head

    def dispose(self) -> None:
        self.engine.dispose()


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise StoreError(f"store.url: {url!r} is not a file; tether needs a SQLite file path")
    return Path(parsed.database)


def create_private_file(path: Path) -> None:
    """Create the database (and its folder) readable by its owner only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {exc.strerror}") from exc


def build_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def configure(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's own
        # transaction handling defers BEGIN until the first write).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(conn) -> None:
        immediate = conn.get_execution_options().get("tether_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class WriterLock:
    """At most one daemon per store: an exclusive flock on `<db>.lock`.

    The lock file records the holder's pid so the refusal can name it. The kernel
    drops the lock when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, store: Store) -> None:
        if store.sqlite_path is None:
            raise StoreError("the single-writer lock is only implemented for SQLite stores")
        self.path = store.sqlite_path.with_name(store.sqlite_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"another tether daemon (pid {holder}) is already running on {self.path.with_suffix('')}; "
                "stop it first, or give this one its own store.url"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
