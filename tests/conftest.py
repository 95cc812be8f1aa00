"""Shared fixtures: the stand-in API, a tether config on a temporary store, and real
`tether` subprocesses (CLI commands and the daemon)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from tether.fakeapi import FakeServer

API_KEY = "sk-test-0123456789abcdef-SECRET"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Wait until predicate() is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


# PostgreSQL tests make a database of their own on this server (as a superuser may). `.ci/run`
# makes sure one is running and sets TETHER_TEST_POSTGRES_REQUIRED, so there they fail without
# it; elsewhere they are skipped, and `pytest -ra` says why.
POSTGRES_ADMIN_URL = os.environ.get("TETHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (dropped after it), as a store.url."""
    import psycopg
    from sqlalchemy.engine import make_url

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("TETHER_TEST_POSTGRES_REQUIRED"):
            pytest.fail(f"no PostgreSQL server at {POSTGRES_ADMIN_URL} ({exc}); .ci/postgres starts one")
        pytest.skip(f"no PostgreSQL server at {POSTGRES_ADMIN_URL}; set TETHER_TEST_POSTGRES to one")
    name = f"tether_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def suite_store(request) -> str | None:
    """A whole suite on each store: None (the installation's own SQLite file) or a PostgreSQL URL."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    """The same store test on each kind of store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 't.db'}"
    return request.getfixturevalue("postgres_url")


def create(fake: FakeServer, **metadata: str) -> str:
    """A background response on the stand-in (metadata `fake_*` sets how it plays out); its id."""
    import httpx

    reply = httpx.post(
        f"{fake.base_url}/responses",
        json={"model": "o3-pro", "input": "x", "background": True, "metadata": metadata},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,  # not httpx's 5 s: a setup step, on a machine that may stall for seconds
    )
    reply.raise_for_status()
    return reply.json()["id"]


def https_stand_in(ca: trustme.CA) -> FakeServer:
    """A stand-in (not started) serving HTTPS on 127.0.0.1 with a certificate signed by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return FakeServer(api_key=API_KEY, tls=context)


def server_record(fake: FakeServer, rid: str) -> dict:
    """The stand-in's own record of a response (its status, gets, cancels): the tests' oracle."""
    return fake.state.snapshot()["responses"][rid]


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer(api_key=API_KEY) as server:
        yield server


FAST_POLLING = """first = "0.2s"
max_interval = "1s"
backoff = 1.5
jitter = 0.1
confirm_window = "1s"
"""


def store_url_of(store: Path | str) -> str:
    """The store.url of a store given as a SQLite file or as a URL."""
    return store if isinstance(store, str) else f"sqlite:///{store}"


def config_text(
    store: Path | str, base_url: str, policies: str = "", polling: str = FAST_POLLING, stats_interval: str = "60s"
) -> str:
    """A config for the stand-in at `base_url`; `store` is a SQLite file, or a store.url."""
    url = store_url_of(store)
    return f"""
[store]
url = "{url}"

[log]
format = "json"
level = "debug"
stats_interval = "{stats_interval}"

[accounts.default]
base_url = "{base_url}"
api_key_env = "TETHER_TEST_KEY"

[polling]
{polling}

{policies}
"""


@dataclass
class Tether:
    """A tether installation in a temporary folder, driven through real subprocesses."""

    root: Path
    base_url: str
    daemons: list[subprocess.Popen] = field(default_factory=list)
    store_url: str | None = None  # else a SQLite file in `root`
    extra_env: dict[str, str] = field(default_factory=dict)  # for every command and daemon

    @property
    def config_path(self) -> Path:
        return self.root / "tether.toml"

    @property
    def store(self) -> Path | str:
        """The store: the SQLite file in `root`, or `store_url` when there is one."""
        return self.store_url or self.store_path

    @property
    def store_path(self) -> Path:
        return self.root / "tether.db"

    @property
    def socket_path(self) -> Path:
        return self.root / "run" / "tether" / "tether.sock"

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TETHER_", "OPENAI_", "JOURNAL_", "NOTIFY_", "RUNTIME_DIRECTORY"))
        }
        env.update(
            TETHER_TEST_KEY=API_KEY,
            XDG_RUNTIME_DIR=str(self.root / "run"),  # the daemon's socket: $XDG_RUNTIME_DIR/tether/tether.sock
            XDG_STATE_HOME=str(self.root / "state"),
            XDG_CONFIG_HOME=str(self.root / "xdg-config"),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def write_config(self, policies: str = "", polling: str = FAST_POLLING, stats_interval: str = "60s") -> None:
        self.config_path.write_text(config_text(self.store, self.base_url, policies, polling, stats_interval))

    def cli(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tether", "--config", str(self.config_path), *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a CLI command that must succeed; a failure shows its stderr."""
        result = self.cli(*args, input=input)
        assert result.returncode == 0, f"tether {' '.join(args)} exited {result.returncode}: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def start_daemon(
        self, extra_env: dict[str, str] | None = None, config: Path | None = None, name: str | None = None
    ) -> subprocess.Popen:
        """`tether run` on this install's config (or `config`), logging to `name`.log; returns once it
        logged daemon.started."""
        log = (self.root / f"{name or f'daemon-{len(self.daemons)}'}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "--config", str(config or self.config_path), "run"],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log_path = Path(log.name)  # type: ignore[attr-defined]
        self.daemons.append(proc)
        wait_for(
            lambda: "daemon.started" in proc.log_path.read_text() or proc.poll() is not None,
            timeout=60,
            what=f"{name or 'the daemon'} started",
        )
        assert proc.poll() is None, proc.log_path.read_text()
        return proc

    def stop_daemon(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout=30)

    def log_lines(self, proc: subprocess.Popen) -> list[dict[str, Any]]:
        """The daemon's JSON log lines written so far, whole lines only: the daemon may be in
        the middle of writing the last one."""
        text = proc.log_path.read_text()  # type: ignore[attr-defined]
        lines = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            line = line.strip()
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def records(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self.json("ls", "--limit", "100000")}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def tether(request, tmp_path: Path, fake: FakeServer) -> Iterator[Tether]:
    t = Tether(root=tmp_path, base_url=fake.base_url)
    t.write_config()
    yield t
    for proc in t.daemons:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:  # show what the daemons said, for CI logs
        for proc in t.daemons:
            lines = [line for line in proc.log_path.read_text().splitlines() if '"debug"' not in line]
            print(f"--- last lines of {proc.log_path.name} (exit {proc.returncode}) ---")
            print("\n".join(line[:600] for line in lines[-60:]))
