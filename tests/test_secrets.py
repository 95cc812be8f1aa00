"""Secrets: the API key appears in no log line, no row, no error message, no --json output;
an `api_key_file` readable by group or others is warned about; the store is created 0600.

The stand-in plays a hostile proxy (`Faults.echo_key`): every error message it sends repeats
the bearer key the request presented, and it injects errors on every route. The reliability
suites (tests/reliability/) run the same key scan over their folders at the end of each run.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import API_KEY, Tether, wait_for
from tether.fakeapi import FakeServer, Faults, RouteFaults


def key_leaks(root: Path, texts: list[str], key: str = API_KEY, allowed: tuple[Path, ...] = ()) -> list[str]:
    found = [str(p) for p in root.rglob("*") if p.is_file() and p not in allowed and key.encode() in p.read_bytes()]
    found += [t[:300] for t in texts if key in t]
    return found


def outputs(*results: subprocess.CompletedProcess) -> list[str]:
    return [text for r in results for text in (r.stdout, r.stderr)]


@pytest.mark.timeout(180)  # nine CLI commands and three waits, on a busy 2-core machine
def test_a_key_echoed_back_by_a_hostile_server_is_nowhere_in_logs_rows_errors_or_json(tether: Tether, fake: FakeServer):
    tether.write_config('[[policy]]\nname = "p"\nmatch = { metadata = { team = "a" } }\nmax_runtime = "2s"\n')
    daemon = tether.start_daemon()
    ids = [fake.state.create("o3-pro", background=True, metadata={"team": "a", "fake_run": "30"}).id for _ in range(6)]
    survivor = fake.state.create("o3-pro", background=True, metadata={"fake_run": "120"}).id  # polled throughout
    results = [tether.cli("track", *ids, survivor)]
    # From here every error message repeats the key; errors strike every route often.
    fake.state.faults = Faults(
        seed=1,
        echo_key=True,
        get=RouteFaults(server_error=0.3, rate_limit=0.2),
        cancel=RouteFaults(server_error=0.3, rate_limit=0.1),  # failed cancels back off 1 s, 2 s, 4 s, ...
    )

    # Every cancel answered once, through or faulted. Not "every cancel through": with cancels
    # failing 40 % of the time, one may still be on its backoff (1 s, 2 s, 4 s, ...) when its
    # response ends by itself, and then rightly never be sent again.
    def cancels_answered() -> bool:
        answered = {c["response_id"] for c in fake.state.calls() if c["route"] == "cancel" and c["status"] is not None}
        return answered >= set(ids)

    wait_for(cancels_answered, timeout=45, what="a cancel of every response to be answered")
    fake.state.faults.echo_key = True
    results += [
        tether.cli("cancel", ids[0], "--json"),
        tether.cli("track", "resp_does_not_exist"),  # 404, echoed
        tether.cli("ls", "--json"),
        tether.cli("show", ids[1], "--json"),
        tether.cli("log", "--json"),
        tether.cli("check-config", "--json"),
        tether.cli("check-config"),
        tether.cli("check"),
        tether.cli("budget", "--json"),
    ]
    # A wrong key: the server's 401 repeats the key tether presented.
    fake.state.api_key = "sk-the-right-one"
    results += [tether.cli("track", ids[2]), tether.cli("cancel", ids[3])]
    wait_for(lambda: '"http_status": 401' in daemon.log_path.read_text(), timeout=30, what="the daemon to meet the 401")
    assert tether.stop_daemon(daemon) == 0
    echoed = [c for c in fake.state.calls() if c["status"] and c["status"] >= 400]
    assert echoed, "the server sent no error to echo the key in"
    assert "[redacted]" in daemon.log_path.read_text() or any("[redacted]" in t for t in outputs(*results))
    assert not key_leaks(tether.root, outputs(*results))


def test_a_group_or_world_readable_key_file_is_warned_about_and_a_private_one_is_not(tmp_path: Path, fake: FakeServer):
    key_file = tmp_path / "openai.key"
    key_file.write_text(API_KEY + "\n")
    config = tmp_path / "tether.toml"
    config.write_text(
        f"""
[store]
url = "sqlite:///{tmp_path}/tether.db"
[log]
format = "json"
[accounts.default]
base_url = "{fake.base_url}"
api_key_file = "{key_file}"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "OPENAI_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")

    def tether(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tether", "--config", str(config), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    seen = []
    for mode, warned in ((0o644, True), (0o640, True), (0o604, True), (0o600, False), (0o400, False)):
        key_file.chmod(mode)
        human, machine = tether("check-config"), tether("check-config", "--json")
        seen += [human, machine]
        assert human.returncode == 0 and machine.returncode == 0, human.stderr
        warnings = json.loads(machine.stdout)["warnings"]
        mentions = [w for w in warnings if str(key_file) in w]
        assert bool(mentions) is warned, (oct(mode), warnings)
        assert (str(key_file) in human.stderr) is warned, (oct(mode), human.stderr)
        if warned:
            assert "chmod 600" in human.stderr
    # The daemon says it too, once, at start.
    key_file.chmod(0o644)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tether", "--config", str(config), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in daemon.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if '"daemon.started"' in line:
                break
    finally:
        daemon.terminate()
        rest, _ = daemon.communicate(timeout=30)
    warned = [json.loads(line) for line in lines if line.startswith("{") and str(key_file) in line]
    assert warned and warned[0]["level"] == "warning", lines
    assert not key_leaks(tmp_path, [*outputs(*seen), "".join(lines), rest], allowed=(key_file,))


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_store_and_its_companions_are_created_readable_by_the_owner_only(
    tmp_path: Path, fake: FakeServer, umask: int
):
    """The database, its -wal and -shm files and the writer lock: 0600, whatever the umask; a
    folder tether creates for it: 0700."""
    store_dir = tmp_path / "new" / "state"
    t = Tether(root=tmp_path, base_url=fake.base_url)
    t.write_config()
    config = t.config_path.read_text().replace(f"sqlite:///{t.store_path}", f"sqlite:///{store_dir}/tether.db")
    t.config_path.write_text(config)
    rid = fake.state.create("o3-pro", background=True, metadata={"fake_run": "30"}).id

    def with_umask() -> None:
        os.umask(umask)

    daemon = subprocess.Popen(
        [sys.executable, "-m", "tether", "--config", str(t.config_path), "run"],
        env=t.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=with_umask,
    )
    try:
        wait_for(lambda: (store_dir / "tether.db-wal").exists(), timeout=30, what="the store and its WAL")
        track = subprocess.run(
            [sys.executable, "-m", "tether", "--config", str(t.config_path), "track", rid],
            env=t.env,
            capture_output=True,
            text=True,
            preexec_fn=with_umask,
            timeout=60,
        )
        assert track.returncode == 0, track.stderr
        wait_for(lambda: (store_dir / "tether.db-shm").exists(), timeout=30)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in store_dir.iterdir()}
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    assert set(modes) >= {"tether.db", "tether.db-wal", "tether.db-shm", "tether.db.lock"}, modes
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not loose, f"readable by group or others: {loose}"
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
