"""tether.logs: the CLI's quiet logger is configured, and structlog imported, only when a line
at its level is logged (each case in a fresh interpreter: structlog's configuration is global)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_line_below_the_deferred_level_is_dropped_without_importing_structlog() -> None:
    result = python("""
        import sys
        from tether import logs
        logs.configure_when_used("console", "error")
        logs.log.info("response.tracked", response_id="resp_1")
        logs.log.warning("api.error", error="late")
        print("structlog" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert result.stderr == ""


def test_a_line_at_the_deferred_level_configures_structlog_then_and_is_written() -> None:
    result = python("""
        import sys
        from tether import logs
        logs.configure_when_used("console", "error")
        logs.log.error("store.failed", error="disk full")
        logs.log.info("response.tracked", response_id="resp_1")
        print("structlog" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "store.failed" in result.stderr and "disk full" in result.stderr
    assert "response.tracked" not in result.stderr  # the level applies from the first line on


def test_configure_applies_at_once_and_replaces_a_deferred_configuration() -> None:
    result = python("""
        import json, sys
        from tether import logs
        logs.configure_when_used("console", "error")
        logs.configure("json", "info")
        logs.log.info("response.tracked", response_id="resp_1")
    """)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr)
    assert (line["event"], line["response_id"], line["level"]) == ("response.tracked", "resp_1", "info")
