"""Structured logs: one line per event, JSON off a TTY, journald priorities under systemd."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

# syslog(3) priorities, read by journald from a "<N>" line prefix (sd-daemon(3)).
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Logger:
    """structlog's logger for tether, imported when first used: a CLI command that logs nothing
    does not import structlog, whose console renderer brings rich's tracebacks and pygments
    (about a tenth of `tether track`'s start-up)."""

    _logger: Any = None
    deferred: tuple[str, str] | None = None  # configure()'s format and level, held until first used

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            deferred_level = LEVELS.get(self.deferred[1], logging.INFO) if self.deferred is not None else 0
            if LEVELS.get(name, logging.CRITICAL) < deferred_level:
                return _dropped  # below the level it will have: structlog would drop the line too
            import structlog

            if self.deferred is not None:
                configure(*self.deferred)
            type(self)._logger = structlog.get_logger("tether")
        return getattr(self._logger, name)


def _dropped(*_args: Any, **_fields: Any) -> None:
    return None


log: FilteringBoundLogger = _Logger()


def configure(
    format: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    environ: dict[str, str] | None = None,
) -> None:
    import structlog

    _Logger.deferred = None
    stream = stream or sys.stderr
    env = os.environ if environ is None else environ
    as_json = format == "json" or (format == "auto" and not stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    if as_json:
        processors += [structlog.processors.JSONRenderer(sort_keys=False)]
        if env.get("JOURNAL_STREAM"):
            processors.append(journald_prefix)
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def configure_when_used(format: str, level: str) -> None:
    """configure(format, level) at the first log line rather than now: most CLI commands log nothing."""
    _Logger.deferred = (format, level)


def journald_prefix(_logger: Any, method: str, rendered: str) -> str:
    return f"<{PRIORITIES.get(method, 6)}>{rendered}"
