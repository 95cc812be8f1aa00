"""Store faults: a busy store, a full disk, a failing disk, a read-only store, a power cut.

The store lives on a small ext4 filesystem in a file, loop-mounted for the test (root only;
the tests skip elsewhere). Root ignores file modes, so "read-only" and "full" are made real
at the filesystem level:

- full: the filesystem is filled up to ENOSPC (made with `-m 0`: no blocks reserved for root);
- failing disk / power cut: `EXT4_IOC_SHUTDOWN` with `NOLOGFLUSH`, the ioctl xfstests uses to
  simulate a power failure: from that instant every I/O fails and whatever was not yet on the
  "disk" is lost; after unmount and mount (journal replay) what survives is what was durable;
- read-only: `mount -o ro`. Remounting read-only under a running daemon is impossible here
  (the kernel refuses while files are open for writing: EBUSY, and there is no device-mapper
  to swap in an error target), so a read-only store is tested at start, and a store that
  turns unwritable mid-run by the shutdown above.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_kit import (
    Install,
    check_lines_are_committed,
    check_no_tracebacks,
    check_secret_absent,
    kill_all,
    read_store,
    store_statuses,
)

from conftest import wait_for
from tether.fakeapi import FakeServer

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
POLICY = '[[policy]]\nname = "p"\nmax_runtime = "4s"\n'
POLLING = 'first = "0.2s"\nmax_interval = "1s"\nconfirm_window = "1s"\n'


class LoopFS:
    """A small ext4 filesystem in a file, mounted at `mount` for one test."""

    def __init__(self, root: Path, size_mb: int) -> None:
        self.image = root / "fs.img"
        self.mount = root / "mnt"
        self.mount.mkdir()
        with self.image.open("wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        run("mkfs.ext4", "-q", "-F", "-m", "0", str(self.image))
        self.mounted = False
        self.attach()

    def attach(self, *options: str) -> None:
        run("mount", "-o", ",".join(["loop", *options]), str(self.image), str(self.mount))
        self.mounted = True

    def detach(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode != 0:
                run("umount", "-l", str(self.mount))
            self.mounted = False

    def remount(self, *options: str) -> None:
        self.detach()
        self.attach(*options)

    def power_cut(self) -> None:
        """Every I/O fails from now on; what was not durable is lost (xfstests' `godown`)."""
        fd = os.open(self.mount, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)

    def fill(self) -> int:
        """Fill the filesystem up to ENOSPC; returns the bytes written."""
        written = 0
        with (self.mount / "filler").open("wb", buffering=0) as f:
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 10, 1):
                try:
                    while True:
                        written += f.write(b"\0" * size)
                except OSError:
                    continue
            try:
                os.fsync(f.fileno())
            except OSError:
                pass
        return written


def run(*cmd: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")


def loop_filesystem(root: Path, size_mb: int) -> LoopFS:
    """A new LoopFS, or the test skipped where none can be made."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not Path("/dev/loop-control").exists():
        pytest.skip("needs root, mkfs.ext4 and loop devices")
    try:
        return LoopFS(root, size_mb)
    except RuntimeError as exc:
        pytest.skip(f"cannot loop-mount a filesystem here: {exc}")


@pytest.fixture
def loopfs(tmp_path: Path) -> Iterator[LoopFS]:
    fs = loop_filesystem(tmp_path, size_mb=8)
    yield fs
    fs.detach()


class StoreOn(Install):
    """An installation whose store is elsewhere (on the loop filesystem)."""

    store_dir: Path | None = None

    @property
    def store_path(self) -> Path:  # type: ignore[override]
        return (self.store_dir or self.root) / "tether.db"


def install_on(root: Path, fake: FakeServer, store_dir: Path) -> StoreOn:
    install = StoreOn(root=root, base_url=fake.base_url)
    install.store_dir = store_dir
    install.write_configs(POLICY, POLLING)
    return install


def create(fake: FakeServer, n: int, run: str = "3", **metadata: str) -> list[str]:
    return [fake.state.create("o3-pro", background=True, metadata={"fake_run": run, **metadata}).id for _ in range(n)]


def store_failed_lines(install: Install) -> list[dict]:
    return [line for line in install.all_log_lines() if line.get("event") == "daemon.store_failed"]


# --- a busy store -----------------------------------------------------------------------------


def test_cli_and_daemon_writing_under_an_outside_write_lock_wait_for_it_instead_of_failing(
    tmp_path: Path, fake: FakeServer
):
    """SQLITE_BUSY is waited out (busy_timeout), not fatal: an outside writer (an operator's
    `sqlite3` shell in a transaction, say) holds the write lock for 3 s while the daemon
    records transitions and the CLI tracks and cancels."""
    install = Install(root=tmp_path, base_url=fake.base_url)
    install.write_configs(
        '[[policy]]\nname = "p"\nmatch = { metadata = { limited = "yes" } }\nmax_runtime = "4s"\n', POLLING
    )
    daemon = install.start_daemon()
    try:
        first = create(fake, 30, run="6", limited="yes")  # still running when tracked on a loaded machine
        assert install.cli("track", *first).returncode == 0

        # The daemon has them (on a slow machine they may be cancelled by then: max_runtime 4 s).
        def picked_up() -> set[str | None]:
            return {
                line.get("response_id") for line in install.all_log_lines() if line.get("event") == "response.tracked"
            }

        wait_for(lambda: set(first) <= picked_up(), timeout=30, what="the daemon to pick up the first responses")
        later, manual = create(fake, 10, run="30"), create(fake, 1, run="30")
        assert install.cli("track", *manual).returncode == 0

        lock = sqlite3.connect(install.store_path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the write lock, held
        held_at = time.monotonic()
        results: dict[str, subprocess.CompletedProcess] = {}
        workers = [
            threading.Thread(target=lambda: results.__setitem__("track", install.cli("track", *later, "--no-verify"))),
            threading.Thread(target=lambda: results.__setitem__("cancel", install.cli("cancel", manual[0]))),
        ]
        for worker in workers:
            worker.start()
        time.sleep(3.0)  # the outside writer's transaction lasts 3 s: that is the fault itself
        lock.execute("COMMIT")
        lock.close()
        for worker in workers:
            worker.join(timeout=60)
        waited = time.monotonic() - held_at

        ids = first + later + manual
        server = lambda: fake.state.snapshot()["responses"]  # noqa: E731
        wait_for(
            lambda: all(
                store_statuses(install.store_path).get(rid) == server()[rid]["status"] for rid in first + manual
            ),
            timeout=30,
            what="statuses to converge",
        )
        alive = daemon.poll() is None
        assert install.stop_daemon(daemon) == 0
    finally:
        kill_all(install)
    assert waited >= 3.0
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    assert alive and not store_failed_lines(install)
    rows, events = read_store(install.store_path)
    assert set(ids) <= set(rows)
    assert [ev for ev in events if ev["response_id"] == manual[0] and ev["reason"] == "manual"]
    assert not check_no_tracebacks([install.raw_logs(), *install.cli_outputs])


# --- a full disk ------------------------------------------------------------------------------


def test_a_full_disk_stops_the_daemon_with_a_clear_message_and_drops_no_transition(
    tmp_path: Path, fake: FakeServer, loopfs: LoopFS
):
    install = install_on(tmp_path, fake, loopfs.mount)
    daemon = install.start_daemon()
    try:
        ids = create(fake, 40, run="60")
        assert install.cli("track", *ids).returncode == 0
        wait_for(lambda: all(store_statuses(install.store_path).get(r) for r in ids), timeout=15)
        loopfs.fill()
        # The daemon must write: deadlines pass (max_runtime 4 s) and cancels follow.
        exit_code = daemon.wait(timeout=60)
    finally:
        kill_all(install)
    lines = install.all_log_lines()
    failed = store_failed_lines(install)
    assert exit_code != 0
    assert failed and "full" in failed[0]["error"], failed
    assert not check_no_tracebacks([install.raw_logs(), *install.cli_outputs])

    # Space again: a new daemon picks up where the store stands and converges.
    (loopfs.mount / "filler").unlink()
    _, events = read_store(install.store_path)
    assert not check_lines_are_committed(events, lines), "a transition was logged but not stored"
    daemon = install.start_daemon()
    try:
        wait_for(
            lambda: all(store_statuses(install.store_path).get(r) == "cancelled" for r in ids),
            timeout=60,
            what="every response cancelled after the restart",
        )
        assert install.stop_daemon(daemon) == 0
    finally:
        kill_all(install)


def test_on_a_full_disk_the_cli_and_a_restarted_daemon_exit_with_a_message(
    tmp_path: Path, fake: FakeServer, loopfs: LoopFS
):
    """Once the daemon has stopped on the full disk, whoever opens the store next is the first
    connection and rebuilds SQLite's WAL index (`-shm`, mapped into memory) on the full
    filesystem: that was SIGBUS (exit -7, no message) for the CLI and a restarted daemon alike.
    tether now looks at the free space before it opens the store and refuses with a message."""
    install = install_on(tmp_path, fake, loopfs.mount)
    daemon = install.start_daemon()
    try:
        ids = create(fake, 10, run="60")
        assert install.cli("track", *ids).returncode == 0
        wait_for(lambda: all(store_statuses(install.store_path).get(r) for r in ids), timeout=15)
        loopfs.fill()
        assert daemon.wait(timeout=60) != 0  # stopped by the full disk (the test above)
        later = create(fake, 2)
        refused = install.cli("track", *later, "--no-verify")
        restarted = subprocess.run(
            [*install_command(install), "run"], env=install.env, capture_output=True, text=True, timeout=60
        )
    finally:
        kill_all(install)
    outcome = {
        "cli track": (refused.returncode, refused.stderr[-300:]),
        "tether run": (restarted.returncode, (restarted.stdout + restarted.stderr)[-300:]),
    }
    assert refused.returncode == 1 and "full" in refused.stderr.lower(), outcome
    assert restarted.returncode not in (0, -7) and "full" in (restarted.stdout + restarted.stderr).lower(), outcome
    assert str(install.store_path) in refused.stderr, outcome  # the message names the store
    assert not check_no_tracebacks([refused.stderr, restarted.stdout + restarted.stderr]), outcome

    # Nothing lost, nothing half done: with space again (the test reads the store only then:
    # opening it on the full disk is the very fault), it holds every transition the stopped daemon
    # logged and nothing of the refused command, which now succeeds.
    (loopfs.mount / "filler").unlink()
    rows, events = read_store(install.store_path)
    assert set(ids) <= set(rows) and not set(later) & set(rows)
    assert not check_lines_are_committed(events, install.all_log_lines()), "a transition was logged but not stored"
    retried = install.cli("track", *later, "--no-verify")
    assert retried.returncode == 0, retried.stderr
    assert set(later) <= set(store_statuses(install.store_path))


GROW_WAL_INDEX = r"""
import os, sqlite3, sys
from tether.store import Store

db, mount, free_kib = sys.argv[1], sys.argv[2], int(sys.argv[3])
setup = sqlite3.connect(db)  # 512-byte pages: 4,062 frames (the index's first region) fit on the small disk
setup.execute("PRAGMA page_size=512")
setup.execute("PRAGMA journal_mode=WAL")
setup.execute("CREATE TABLE t(x)")
setup.close()
conn = Store(f"sqlite:///{db}").engine.raw_connection()  # tether's engine: its connect and checkout hooks
cur = conn.cursor()
cur.execute("PRAGMA wal_autocheckpoint=0")  # the WAL only grows, as it does when readers hold checkpoints back
cur.execute("BEGIN")
for _ in range(3975):
    cur.execute("INSERT INTO t VALUES (?)", (b"x" * 400,))
cur.execute("COMMIT")  # about 4,050 frames: a few more and the index needs its second 32 KiB region
with open(os.path.join(mount, "filler"), "wb", buffering=0) as f:
    for size in (1 << 20, 1 << 16, 1 << 12, 1 << 10, 1):
        try:
            while True:
                f.write(b"\0" * size)
        except OSError:
            pass
    os.fsync(f.fileno())
    f.truncate(os.fstat(f.fileno()).st_size - free_kib * 1024)
    os.fsync(f.fileno())
try:
    while True:
        cur.execute("INSERT INTO t VALUES (?)", (b"y",))
except sqlite3.Error as exc:
    print("error:", exc, "index bytes:", os.stat(db + "-shm").st_size)
"""


@pytest.mark.parametrize("free_kib", [16, 24, 32])
def test_a_wal_index_outgrowing_its_region_on_a_nearly_full_disk_is_an_error_not_sigbus(loopfs: LoopFS, free_kib: int):
    """The running daemon's side of the full disk. Every 4,096 frames the WAL index (`-shm`, mapped
    into memory) needs another 32 KiB region. SQLite grows the file by writing one byte per 4 KiB
    page; on this filesystem's 1 KiB blocks that leaves holes, and writing the new region through
    the mapping with 16-32 KiB free (room for the WAL's frames, not for the holes) was SIGBUS:
    exit -7, no message. tether preallocates the index's blocks (diskspace.py), so the writer gets
    SQLite's "database or disk is full" and the daemon stops with `daemon.store_failed`."""
    import sys

    db = loopfs.mount / "grow.db"
    proc = subprocess.run(
        [sys.executable, "-c", GROW_WAL_INDEX, str(db), str(loopfs.mount), str(free_kib)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert "error: database or disk is full" in proc.stdout, proc.stdout
    assert int(proc.stdout.split("index bytes:")[1]) > 32 * 1024, "the index never reached its second region"


# --- a disk that fails, a power cut -----------------------------------------------------------


def test_committed_events_survive_a_power_cut_and_the_daemon_stops_on_the_failed_disk(
    tmp_path: Path, fake: FakeServer, loopfs: LoopFS
):
    """WAL with synchronous=FULL: a transaction is on the disk when COMMIT returns, and the
    log line of an event is written only after that. So every event the log shows before the
    cut is in the store after it; the daemon stops (non-zero, `daemon.store_failed`) instead
    of going on without a store."""
    install = install_on(tmp_path, fake, loopfs.mount)
    daemon = install.start_daemon()
    try:
        ids = create(fake, 40, run="8")  # still running when tracked, even on a loaded machine
        assert install.cli("track", *ids).returncode == 0
        wait_for(
            lambda: sum(1 for line in install.all_log_lines() if line.get("event") == "response.status") >= 40,
            timeout=60,
            what="status changes in the log",
        )
        loopfs.power_cut()
        cut_at = time.time()
        exit_code = daemon.wait(timeout=60)
    finally:
        kill_all(install)
    lines = install.all_log_lines()
    before_cut = [
        line for line in lines if line.get("event", "").startswith("response.") and line.get("origin") != "cli"
    ]
    failed = store_failed_lines(install)
    assert exit_code != 0
    assert failed, "no daemon.store_failed line"
    assert "I/O" in failed[0]["error"] or "disk" in failed[0]["error"], failed[0]

    loopfs.remount()  # the journal is replayed: what survives is what was durable
    conn = sqlite3.connect(install.store_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    _, events = read_store(install.store_path)
    missing = check_lines_are_committed(events, before_cut)
    assert not missing, f"events logged before the power cut at {cut_at} are not in the store: {missing[:5]}"
    assert not check_secret_absent(loopfs.mount, install.cli_outputs)


# --- a read-only store ------------------------------------------------------------------------


def test_a_read_only_store_stops_the_daemon_at_start_with_a_clear_message(
    tmp_path: Path, fake: FakeServer, loopfs: LoopFS
):
    install = install_on(tmp_path, fake, loopfs.mount)
    ids = create(fake, 3, run="60")
    assert install.cli("track", *ids).returncode == 0  # the store exists, then the disk turns read-only
    loopfs.remount("ro")
    proc = subprocess.run(
        [*install_command(install), "run"], env=install.env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    assert f"the filesystem holding the store {install.store_path} is read-only" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    # Reading still works, or fails with a message: never a traceback.
    listing = install.cli("ls", "--json")
    assert listing.returncode in (0, 1) and "Traceback" not in listing.stderr, listing.stderr
    written = install.cli("track", *create(fake, 1), "--no-verify")
    assert written.returncode == 1 and "Traceback" not in written.stderr, written.stderr


def test_a_small_read_only_filesystem_is_named_read_only_not_full(tmp_path: Path, fake: FakeServer):
    """A filesystem of 1 MiB has less free space than tether asks for before it opens a store
    (diskspace.py), and was reported as full; mounted read-only, that is what it must be called,
    by `tether run` (which refuses) and by `check-config` (which warns, and still exits 0)."""
    small = loop_filesystem(tmp_path, size_mb=1)
    try:
        small.remount("ro")
        install = install_on(tmp_path, fake, small.mount)
        checked = install.cli("check-config")
        ran = subprocess.run(
            [*install_command(install), "run"], env=install.env, capture_output=True, text=True, timeout=60
        )
    finally:
        small.detach()
    message = f"the filesystem holding the store {install.store_path} is read-only"
    assert checked.returncode == 0, checked.stderr
    assert f"warning: {message}" in checked.stderr and "full" not in checked.stderr, checked.stderr
    assert ran.returncode == 1 and message in ran.stderr and "full" not in ran.stderr, ran.stderr
    assert "Traceback" not in checked.stderr + ran.stderr


def install_command(install: Install) -> list[str]:
    import sys

    return [sys.executable, "-m", "tether", "--config", str(install.config_path)]
