"""The systemd side: the unit file, sd_notify from a real `tether run`, credentials, journald.

The notify tests listen on a real AF_UNIX datagram socket (a path, and the abstract
namespace) exactly as systemd does, and drive the daemon with real signals.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import API_KEY, Tether, wait_for

UNIT = Path(__file__).parent.parent / "systemd" / "tether.service"
SYSUSERS = UNIT.with_name("tether.sysusers")
INSTALLED_TETHER = "/opt/tether/venv/bin/tether"


def test_the_unit_verifies_without_a_single_line_of_output(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's tether instead of /opt.
    unit = tmp_path / "tether.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_TETHER, str(Path(sys.executable).parent / "tether")))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout + result.stderr == ""


def test_the_unit_scores_an_exposure_of_1_5_or_lower():
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True
    )
    score = re.search(r"Overall exposure level for tether\.service: ([\d.]+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) <= 1.5


@pytest.mark.parametrize(
    "line",
    [
        "Type=notify",
        "RestartPreventExitStatus=78",
        "User=tether",
        "Group=tether",
        "StateDirectory=tether",
        "RuntimeDirectory=tether",
        "RuntimeDirectoryMode=0750",
        "ConfigurationDirectory=tether",
        "SyslogIdentifier=tether",
        "Restart=on-failure",
    ],
)
def test_the_unit_has(line):
    assert line in UNIT.read_text().splitlines()


def test_the_unit_runs_as_the_static_user_that_the_sysusers_file_makes():
    # A static user and group, not DynamicUser=: the socket's group is one an operator can join.
    assert not re.search(r"^DynamicUser=", UNIT.read_text(), re.MULTILINE)
    lines = [line for line in SYSUSERS.read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ['u tether - "tether daemon" /var/lib/tether']


def test_the_sysusers_file_is_accepted_by_systemd_sysusers(tmp_path):
    # --root: into an empty tree, never this machine's /etc/passwd.
    (tmp_path / "etc").mkdir()
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc" / "passwd").read_text().startswith("tether:x:")
    assert "tether:x:" in (tmp_path / "etc" / "group").read_text()


def test_the_unit_reads_the_key_from_a_credential_and_never_from_an_environment_file():
    text = UNIT.read_text()
    assert re.search(r"^LoadCredential=openai-api-key:", text, re.MULTILINE)
    assert "EnvironmentFile" not in text
    reload_lines = re.findall(r"^ExecReload=(.*)$", text, re.MULTILINE)
    assert "check-config" in reload_lines[0] and "kill -HUP $MAINPID" in reload_lines[1]


def test_the_deploy_edits_lead_roots_cli_to_the_services_socket_and_store(tmp_path):
    # The deploy steps (README, docs/operations.md) install config/tether.toml and uncomment its
    # store url and socket: the CLI reads that file outside the service, without the unit's
    # RUNTIME_DIRECTORY and STATE_DIRECTORY, and must still reach the daemon and its store.
    from tether.config import parse_config

    example = (UNIT.parent.parent / "config" / "tether.toml").read_text()
    edits = {
        'api_key_env = "OPENAI_API_KEY"': 'api_key_credential = "openai-api-key"',
        '# url = "sqlite:////var/lib/tether/tether.db"': 'url = "sqlite:////var/lib/tether/tether.db"',
        "#[server]\n#socket = ": "[server]\nsocket = ",
    }
    deployed = example
    for old, new in edits.items():
        assert old in deployed
        deployed = deployed.replace(old, new, 1)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "openai-api-key").write_text("sk-test")
    service = {"RUNTIME_DIRECTORY": "/run/tether", "STATE_DIRECTORY": "/var/lib/tether"}
    service["CREDENTIALS_DIRECTORY"] = str(tmp_path / "creds")
    roots_shell = {"HOME": "/root"}

    def socket_and_store(text: str, environ: dict[str, str]) -> tuple[str | None, str]:
        cfg = parse_config(tomllib.loads(text), environ=environ)
        return cfg.server.socket, cfg.store.url

    wanted = ("/run/tether/tether.sock", "sqlite:////var/lib/tether/tether.db")
    assert socket_and_store(example, service) == wanted
    assert socket_and_store(example, roots_shell) == (None, "sqlite:////root/.local/state/tether/tether.db")
    assert socket_and_store(deployed, service) == socket_and_store(deployed, roots_shell) == wanted


def test_the_stop_timeout_is_longer_than_the_daemons_shutdown_grace():
    from tether.daemon.lifecycle import SHUTDOWN_GRACE

    stop = re.search(r"^TimeoutStopSec=(\d+)s$", UNIT.read_text(), re.MULTILINE)
    assert stop and int(stop.group(1)) > SHUTDOWN_GRACE + 5


class NotifySocket:
    """What systemd listens on: every datagram the daemon sends, as a list of field dicts."""

    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def receive(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait(self, predicate, what: str, timeout: float = 45.0) -> dict[str, str]:
        def found():
            return next((m for m in self.receive() if predicate(m)), None)

        return wait_for(found, timeout=timeout, what=what)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path) -> Iterator[NotifySocket]:
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        listener = NotifySocket(path, path)
    else:
        name = f"tether-test-{uuid.uuid4().hex}"
        listener = NotifySocket("@" + name, "\0" + name)
    yield listener
    listener.sock.close()


def test_the_daemon_speaks_sd_notify_through_start_reload_watchdog_and_stop(tether: Tether, notify_socket):
    daemon = tether.start_daemon({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "400000"})
    ready = notify_socket.wait(lambda m: m.get("READY") == "1", "READY=1")
    assert "active responses" in ready["STATUS"]

    daemon.send_signal(signal.SIGHUP)
    reloading = notify_socket.wait(lambda m: m.get("RELOADING") == "1", "RELOADING=1")
    assert abs(int(reloading["MONOTONIC_USEC"]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 10_000_000
    notify_socket.wait(lambda m: m.get("READY") == "1" and "reloaded" in m.get("STATUS", ""), "READY after reload")

    tether.config_path.write_text("[polling]\nfirst = 'soon'\n")
    daemon.send_signal(signal.SIGHUP)
    failed = notify_socket.wait(lambda m: "reload FAILED" in m.get("STATUS", ""), "STATUS after a bad reload")
    assert "polling.first" in failed["STATUS"]
    assert daemon.poll() is None

    pings = wait_for(
        lambda: len([m for m in notify_socket.receive() if m.get("WATCHDOG") == "1"]) >= 3,
        timeout=45,
        what="three WATCHDOG=1 pings",
    )
    assert pings
    daemon.send_signal(signal.SIGTERM)
    notify_socket.wait(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
    assert daemon.wait(timeout=30) == 0


def test_without_a_watchdog_the_daemon_sends_no_pings(tether: Tether, notify_socket):
    daemon = tether.start_daemon({"NOTIFY_SOCKET": notify_socket.address})
    notify_socket.wait(lambda m: m.get("READY") == "1", "READY=1")
    tether.stop_daemon(daemon)
    assert not [m for m in notify_socket.receive() if "WATCHDOG" in m]


def test_the_key_is_read_from_the_credentials_directory(tether: Tether, fake, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "openai-api-key").write_text(API_KEY + "\n")
    text = tether.config_path.read_text().replace(
        'api_key_env = "TETHER_TEST_KEY"', 'api_key_credential = "openai-api-key"'
    )
    tether.config_path.write_text(text)
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "TETHER_TEST_KEY": "sk-wrong"}
    daemon = tether.start_daemon(env)
    reply = httpx.post(
        f"{fake.base_url}/responses",
        json={"model": "o3-pro", "input": "x", "background": True, "metadata": {"fake_queue": "2", "fake_run": "0.5"}},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    rid = reply.json()["id"]
    result = subprocess.run(
        [sys.executable, "-m", "tether", "--config", str(tether.config_path), "track", rid],
        env={**tether.env, **env},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: tether.records()[rid]["status"] == "completed", timeout=45, what="polled to completion")
    assert tether.stop_daemon(daemon) == 0
    assert API_KEY not in daemon.log_path.read_text()


def test_a_missing_credential_stops_the_start_with_exit_78(tether: Tether, tmp_path):
    text = tether.config_path.read_text().replace(
        'api_key_env = "TETHER_TEST_KEY"', 'api_key_credential = "openai-api-key"'
    )
    tether.config_path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "tether", "--config", str(tether.config_path), "run"],
        env={**tether.env, "CREDENTIALS_DIRECTORY": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78
    assert "accounts.default.api_key_credential" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_config_at_start_exits_78_with_the_key_named(tether: Tether):
    tether.config_path.write_text("[polling]\nbackoff = 'fast'\n")
    result = tether.cli("run", timeout=30)
    assert result.returncode == 78
    assert "polling.backoff" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("journal", [True, False], ids=["under journald", "not under journald"])
def test_log_lines_carry_priority_prefixes_only_under_journald(tether: Tether, journal):
    env = {"JOURNAL_STREAM": "8:12345"} if journal else {}
    daemon = tether.start_daemon(env)
    tether.ok("track", "--no-verify", "resp_missing")
    wait_for(lambda: "response.lost" in daemon.log_path.read_text(), timeout=45, what="a warning line")
    tether.stop_daemon(daemon)
    lines = [line for line in daemon.log_path.read_text().splitlines() if "{" in line]
    started = next(line for line in lines if '"daemon.started"' in line)
    lost = next(line for line in lines if '"response.lost"' in line)
    if journal:
        assert started.startswith("<6>{") and lost.startswith("<4>{")
    else:
        assert started.startswith("{") and lost.startswith("{")
