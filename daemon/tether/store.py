"""The store: engine setup, migrations, transactions and the single-writer lock.

SQLite runs in WAL mode so the CLI reads while the daemon writes. Write transactions
start with BEGIN IMMEDIATE: a deferred transaction that later tries to write can fail
at once with SQLITE_BUSY (no busy wait), an immediate one waits on busy_timeout.
`synchronous=FULL` makes every committed transition durable across power loss; the
daemon batches its bookkeeping writes so this costs one fsync per batch, not per poll.

PostgreSQL (through psycopg) keeps the first rule with an advisory lock: write transactions
take turns on one transaction-scoped lock, as SQLite's writers do. Any number of daemons may
run on one PostgreSQL database, each on a lock session of its own (tether/cluster.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, MetaData, Table, create_engine, event, inspect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import OperationalError

from tether.diskspace import free_space_problem, preallocate_on_checkout, read_only_message, read_only_problem

if TYPE_CHECKING:
    from sqlmodel import Session

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA_HEAD = "0006"  # the newest revision in migrations/versions (a test keeps them equal)
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another's turn before it fails
# PostgreSQL advisory locks, pg_advisory_lock(PG_LOCKS, what): tether's class id, then what.
PG_LOCKS = 0x7E7E
PG_WRITES = 1  # every write transaction: their event ids commit in order (the daemon's feed)
PG_DAEMON = 2  # every running daemon's lock session, shared (a daemon of an older version takes it alone)
LOCK_PROBE_GRACE = 0.2  # a busy SQLite lock file is tried again this long (see FileLock.acquire)


class StoreError(Exception):
    """A store that cannot be opened, migrated or locked; the message says what to do."""


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite_path = sqlite_path(url)
        if self.sqlite_path is not None:
            # A full disk: a message now, not SIGBUS inside SQLite later (see diskspace.py).
            if (problem := sqlite_write_problem(self.sqlite_path)) is not None:
                raise StoreError(problem)
            create_private_file(self.sqlite_path)
        self.engine = build_engine(url)
        if self.sqlite_path is not None:
            preallocate_on_checkout(self.engine, self.sqlite_path)
        self._writer: Engine | Connection = self.engine.execution_options(tether_immediate=True)
        self._batch = threading.local()
        self.instance: str | None = None  # the daemon writing through this store, on PostgreSQL (events.instance)
        self._reflected = MetaData()  # see table()
        self._reflecting = threading.Lock()

    def table(self, name: str) -> Table:
        """The table `name` as the store's database declares it, for reads in SQLAlchemy Core
        without the models: `tether ls`, `show` and `log` import neither SQLModel nor SQLAlchemy's
        ORM, a sixth of what an `ls` costs (docs/benchmarks.md). Read from the database once."""
        with self._reflecting:
            known = self._reflected.tables.get(name)
            if known is not None:
                return known
            with self.engine.connect() as conn:
                return Table(name, self._reflected, autoload_with=conn)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        from sqlmodel import Session  # not at the top: see table()

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
        from sqlmodel import Session

        with Session(self._writer, expire_on_commit=False) as session:
            with session.begin():
                yield session

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: every `writing()` in this block (this thread) shares one transaction,
        so one fsync. Callbacks given to `after_commit` run once it has committed."""
        from sqlmodel import Session

        callbacks: list[Callable[[], object]] = []
        with Session(self._writer, expire_on_commit=False) as session:
            with session.begin():
                self._batch.open = (session, callbacks)
                try:
                    yield
                finally:
                    self._batch.open = None
        for callback in callbacks:
            callback()

    def pin_writer(self, conn: Connection) -> None:
        """Every write transaction from now on runs on `conn`, a daemon's lock session: once
        another daemon has ended that session, nothing more this daemon writes can commit
        (tether/cluster.py). Call it from the one thread that writes from then on."""
        conn.execution_options(tether_immediate=True)  # the writers' turn, at each begin
        self._writer = conn

    def after_commit(self, callback: Callable[[], object]) -> None:
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
                current = None  # a new store: no version table yet
                if inspect(conn).has_table("alembic_version"):
                    current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except OperationalError as exc:
            raise self.unreachable(exc) from None
        if current != SCHEMA_HEAD:
            self.migrate()

    @property
    def shown_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def unreachable(self, exc: OperationalError) -> StoreError:
        """The store could not be connected to: its URL (no password) and the driver's words."""
        return StoreError(f"cannot open the store {self.shown_url}: {reason(exc)}")

    def migrate(self) -> list[str]:
        """Apply pending Alembic migrations; returns the revisions applied."""
        from alembic import command
        from alembic.config import Config as AlembicConfig
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        script = ScriptDirectory.from_config(cfg)
        with self.engine.execution_options(tether_immediate=True).begin() as conn:
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


def sqlite_write_problem(path: Path) -> str | None:
    """Why a SQLite store at `path` cannot be written, without opening it; None when it can."""
    return read_only_problem(path) or free_space_problem(path)


def write_problem(url: str) -> str | None:
    """Why the store at `url` cannot be written, looked at without opening or creating it;
    None when nothing says so. A PostgreSQL store is not looked at (that needs its server)."""
    path = sqlite_path(url)
    if path is None:
        return None
    if (problem := sqlite_write_problem(path)) is not None:
        return problem
    existing = path if path.exists() else next((p for p in path.parents if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        return f"the store {path} cannot be written by this user ({existing} is not writable)"
    return None


def create_private_file(path: Path) -> None:
    """Create the database (and its folder) readable by its owner only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise StoreError(read_only_message(path)) from exc
        raise StoreError(f"cannot open store {path}: {exc.strerror}") from exc


def reason(exc: OperationalError) -> str:
    """The driver's own words, on one line."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def build_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return postgresql_engine(parsed)
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


def postgresql_engine(url: URL) -> Engine:
    try:
        engine = create_engine(
            url.set(drivername="postgresql+psycopg"),
            pool_pre_ping=True,
            connect_args={"options": f"-c lock_timeout={BUSY_TIMEOUT_MS}"},
        )
    except ImportError:
        raise StoreError(
            "store.url names a PostgreSQL database, but its driver (psycopg) is not installed: "
            "install tether with its postgresql extra, e.g. pip install 'tether[postgresql]'"
        ) from None

    @event.listens_for(engine, "begin")
    def begin(conn: Connection) -> None:
        # Writers take turns, as SQLite's BEGIN IMMEDIATE makes them: an event's id is drawn
        # after every earlier writer has committed, so the daemon, reading the events after
        # the last id it has seen, cannot skip one committed late with a lower id.
        if conn.get_execution_options().get("tether_immediate", False):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_LOCKS}, {PG_WRITES})")

    return engine


def writer_lock(store: Store) -> WriterLock:
    """The lock a daemon holds on its store: a SQLite store's keeps it to one daemon."""
    return FileLock(store.sqlite_path) if store.sqlite_path is not None else AdvisoryLock(store)


def refusal(holder: str, where: object) -> StoreError:
    return StoreError(
        f"another tether daemon ({holder}) is already running on {where}; "
        "stop it first, or give this one its own store.url"
    )


class FileLock:
    """A SQLite store's: an exclusive flock on `<db>.lock`.

    The lock file records the holder's pid so the refusal can name it. The kernel
    drops the lock when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        # `tether check` takes the lock for an instant (`in_use`): a start that meets it tries
        # again for a moment instead of taking the probe for another daemon.
        give_up = time.monotonic() + LOCK_PROBE_GRACE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < give_up:
                    time.sleep(0.02)
                    continue
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise refusal(f"pid {holder}", self.path.with_suffix("")) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def held(self) -> bool:
        return self._fd is not None

    def in_use(self) -> bool | None:
        """Whether a process (a running daemon) holds the lock: taken for an instant and let go
        if it is free. None when this user cannot open the lock file."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False  # no daemon has ever run on this store
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing the descriptor drops the lock if it was taken here
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AdvisoryLock:
    """A PostgreSQL store's: a shared session advisory lock, on a connection of its own, the
    daemon's lock session (tether/cluster.py). Daemons of this version share it; one of an
    older version, which takes it alone, is refused and refuses them.

    The connection's application_name names the holder so the refusal can. The server
    drops the lock when the connection ends, so a crash never leaves a stale lock.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn: Connection | None = None

    def acquire(self) -> None:
        me = f"{HOLDER_PREFIX}pid {os.getpid()} on {socket.gethostname()}"[:63]
        try:
            conn = self.store.engine.connect()
            conn.detach()  # closing it ends the session (and the lock) instead of pooling it
            conn.exec_driver_sql("SELECT set_config('application_name', %s, false)", (me,))
            held = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock_shared({PG_LOCKS}, {PG_DAEMON})").scalar()
            holder = None if held else conn.exec_driver_sql(HOLDER).scalar()
            conn.commit()
        except OperationalError as exc:
            raise self.store.unreachable(exc) from None
        if not held:
            conn.close()
            raise refusal((holder or "unknown").removeprefix(HOLDER_PREFIX), self.store.shown_url)
        self._conn = conn

    @property
    def connection(self) -> Connection:
        assert self._conn is not None, "the lock is not held"
        return self._conn

    def held(self) -> bool:
        """Whether the lock's session is alive: a server restart, or a terminated backend, ends it."""
        if self._conn is None:
            return False
        try:
            self._conn.exec_driver_sql("SELECT 1")
            self._conn.commit()
        except OperationalError:
            return False
        return True

    def in_use(self) -> bool | None:
        """Whether a session (a running daemon) holds the lock, as pg_locks shows it: looked
        at, not taken. None when the server cannot be asked."""
        try:
            with self.store.engine.connect() as conn:
                return conn.exec_driver_sql(HOLDER).scalar() is not None
        except OperationalError:
            return None

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# Who holds this database's daemon lock: the application_name AdvisoryLock gives its connection.
HOLDER_PREFIX = "tether daemon "
HOLDER = f"""
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {PG_LOCKS} AND l.objid = {PG_DAEMON}
  AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


WriterLock = FileLock | AdvisoryLock
