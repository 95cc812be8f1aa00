"""Disk space and SQLite's WAL index: a full disk must end in a message, never in SIGBUS.

SQLite keeps the WAL index (`<db>-shm`) in a file it maps into memory. The connection that
opens a store first (no other process has it open) truncates that file and grows it again
by writing one byte at the end of each 4 KiB page (os_unix.c, `unixShmMap`), then writes the
index through the mapping. On a filesystem whose blocks are smaller than 4 KiB (ext4 makes
1 KiB blocks on filesystems under 512 MiB) that one byte allocates one block of the page and
leaves the rest a hole; when a write through the mapping lands in the hole and the disk has
no free block left, the kernel cannot back the page and sends SIGBUS: the process dies with
no message (exit -7). A running connection meets the same case each time the WAL outgrows a
32 KiB region of the index (every 4,096 frames) on a nearly full disk.

Two defences, both outside SQLite (which has no setting for this; its only shared-memory-free
WAL mode, `locking_mode=EXCLUSIVE`, would lock the CLI out while the daemon runs):

- `free_space_problem`: before a store is opened, refuse (the caller raises `StoreError`)
  when its filesystem has less free space than rebuilding the index and a few transactions
  need. A guard, so racy: a disk filled by someone else between the check and the open can
  still end in SIGBUS;
- `preallocate_wal_index`: once a connection has the index open, allocate its blocks ahead
  (`fallocate` with `FALLOC_FL_KEEP_SIZE`: blocks, not size, so SQLite sees the same file),
  so that later writes through the mapping never need a free block. Linux only; elsewhere,
  and on filesystems without `fallocate`, a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

MIN_FREE_BYTES = 1 << 20  # room for the index and a few write transactions' WAL frames
INDEX_REGION = 32 * 1024  # one region of the WAL index: 4,096 frames
MIN_FRAME = 512 + 24  # the smallest WAL frame (page size 512 + frame header): the most frames a WAL can hold
PREALLOCATE_BYTES = 8 * INDEX_REGION  # a WAL of 32,000+ frames (128 MiB of 4 KiB pages) without a reset
FALLOC_FL_KEEP_SIZE = 0x01


def filesystem_of(path: Path) -> os.statvfs_result | None:
    """The filesystem that holds (or will hold) `path`: its folder's, or its nearest existing
    ancestor's when the folder does not exist yet (None: cannot tell)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.statvfs(folder)
    except OSError:
        return None


def free_bytes(path: Path) -> int | None:
    """Bytes this process may still write on the filesystem holding `path` (None: unknown)."""
    st = filesystem_of(path)
    if st is None:
        return None
    if st.f_blocks == 0:
        return None  # a filesystem that reports no size at all: nothing to judge by
    # Root may use the blocks reserved for it (ext4's `-m`), everyone else only f_bavail.
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def needed_bytes(db: Path) -> int:
    """Free space needed to open `db` safely: its WAL index rebuilt, plus MIN_FREE_BYTES."""
    try:
        wal = os.stat(f"{db}-wal").st_size
    except OSError:
        wal = 0
    regions = wal // MIN_FRAME // 4096 + 1
    return MIN_FREE_BYTES + regions * INDEX_REGION


def read_only_problem(db: Path) -> str | None:
    """A message when the filesystem holding `db` is mounted read-only, else None.

    Looked at before the free space: a read-only filesystem reports what was free when it was
    mounted (nothing at all, for some), and "full" would send its owner the wrong way."""
    st = filesystem_of(db)
    if st is None or not st.f_flag & os.ST_RDONLY:
        return None
    return read_only_message(db)


def read_only_message(db: Path) -> str:
    return (
        f"the filesystem holding the store {db} is read-only: tether writes to its store; remount it "
        "read-write (or move store.url to a writable filesystem), then run the command again"
    )


def free_space_problem(db: Path) -> str | None:
    """A message when the disk holding `db` is too full to open it safely, else None."""
    free = free_bytes(db)
    if free is None:
        return None
    need = needed_bytes(db)
    if free >= need:
        return None
    return (
        f"the disk holding the store {db} is full: only {free // 1024} KiB free, and tether needs at "
        f"least {need // 1024} KiB to open the store safely; free some space on that filesystem "
        "(or move store.url to another one), then run the command again. Nothing was changed"
    )


@functools.cache
def _fallocate():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def _open_fds(path: Path) -> list[int]:
    """This process's descriptors open on `path` (SQLite's own, found through /proc)."""
    target = os.path.realpath(path)
    fds = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                fds.append(int(name))
        except (OSError, ValueError):
            continue
    return fds


def preallocate_wal_index(db: Path, size: int = PREALLOCATE_BYTES) -> bool | None:
    """Allocate the blocks of `<db>-shm` (its holes, and up to `size` bytes) without resizing it.

    Works on the descriptor SQLite itself has open: opening and closing another one would drop
    every POSIX lock this process holds on the file, SQLite's shared-memory locks included.
    Returns whether the blocks are allocated, None when the index is not open (yet) or this
    system has no `fallocate`; best effort, never raises. A disk too full for `size` gets what
    it has: ext4 keeps the blocks it could allocate.
    """
    fallocate = _fallocate()
    if fallocate is None:
        return None
    for fd in _open_fds(Path(f"{db}-shm")):
        try:
            length = max(size, os.fstat(fd).st_size)
        except OSError:
            continue
        return fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, length) == 0
    return None


def preallocate_on_checkout(engine, db: Path) -> None:
    """Preallocate the WAL index once per pooled connection: at its first checkout with the index open.

    (A new store's index appears with its first write, so the first checkouts may find none. While
    a connection stays open no other process can rebuild the index, so once is enough.)
    """
    from sqlalchemy import event

    @event.listens_for(engine, "checkout")
    def preallocate(_dbapi_conn, record, _proxy) -> None:
        if "tether_wal_index" not in record.info and _fallocate() is not None:
            if (done := preallocate_wal_index(db)) is not None:
                record.info["tether_wal_index"] = done
