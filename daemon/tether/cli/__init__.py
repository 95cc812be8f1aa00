"""The `tether` command line (docs/cli.md): one module per group of commands.

Exit codes: 0 success · 1 operational failure (API or network) · 2 invalid usage or
input · 3 not found · 78 invalid configuration. Data goes to stdout, messages to stderr.

- common.py      the Typer app, the consoles, exit codes, the config and store of a run
- running.py     run, check-config
- tracking.py    track, submit
- reading.py     ls, show, log
- acting.py      cancel (through `tether.cancelling`, as the daemon), budget
- operations.py  check, db upgrade, demo
"""

from __future__ import annotations

import os
import sys

# Imported for their commands, which they add to `app` in this order (the order of --help).
# Each command imports what it needs when it runs, so that a start loads only that.
from tether.cli import running, tracking, reading, acting, operations  # noqa: F401  # isort: skip
from tether.cli.common import EXIT_FAILURE, app, err


def main() -> None:
    # tether's pydantic models (its tables, its config) use no pydantic plugin, and finding
    # plugins reads the metadata of every installed package: ~60 ms of each command's start.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        # Only a command that opened the store has loaded SQLAlchemy, and only it can fail so.
        store_errors = sys.modules.get("sqlalchemy.exc")
        if store_errors is None or not isinstance(exc, store_errors.SQLAlchemyError):
            raise
        # a store that cannot be read or written: say so, no traceback
        reason = getattr(exc, "orig", None) or exc
        err.print(
            f"tether: the store failed: {reason} (is the disk full, the file read-only, or its database server down?)"
        )
        sys.exit(EXIT_FAILURE)
