"""Structured logs: one line per event, JSON off a TTY, journald priorities under systemd."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

# syslog(3) priorities, read by journald from a "<N>" line prefix (sd-daemon(3)).
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

log = structlog.get_logger("tether")


def configure(
    format: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    environ: dict[str, str] | None = None,
) -> None:
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


def journald_prefix(_logger: Any, method: str, rendered: str) -> str:
    return f"<{PRIORITIES.get(method, 6)}>{rendered}"
