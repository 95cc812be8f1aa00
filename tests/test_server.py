"""The daemon's HTTP doors: the control API on a real Unix socket and TCP listener of a real
`tether run`, against the stand-in API; and the CLI going through the daemon when one runs."""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from conftest import API_KEY, Tether, create, server_record, wait_for

TOKEN = "test-token-0123456789abcdef"


def over_socket(tether: Tether) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(tether.socket_path)), base_url="http://tether", timeout=30
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_server(tether: Tether, text: str) -> None:
    tether.config_path.write_text(tether.config_path.read_text() + "\n[server]\n" + text)


def test_the_socket_is_made_0660_in_a_0750_folder_and_removed_at_stop(tether: Tether):
    daemon = tether.start_daemon()
    path = tether.socket_path
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o660
    with over_socket(tether) as api:
        assert api.get("/healthz").json() == {"alive": True}
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "store": True, "lock": True}
    assert tether.stop_daemon(daemon) == 0
    assert not path.exists()


def test_a_socket_a_live_daemon_listens_on_is_refused_and_a_stale_one_replaced(tether: Tether, tmp_path: Path):
    # A stale socket file: bound once, nobody listening (a daemon that was killed).
    tether.socket_path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tether.socket_path))
    stale.close()
    first = tether.start_daemon()
    with over_socket(tether) as api:
        assert api.get("/healthz").status_code == 200
    # A second daemon, on another store, configured with the same socket.
    other = Tether(
        root=tmp_path / "other", base_url=tether.base_url, extra_env={"XDG_RUNTIME_DIR": str(tmp_path / "run")}
    )
    other.root.mkdir()
    other.write_config()
    second = subprocess.run(
        [sys.executable, "-m", "tether", "--config", str(other.config_path), "run"],
        env=other.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "is in use: another tether daemon listens there" in second.stdout + second.stderr
    assert first.poll() is None
    with over_socket(tether) as api:  # the first one's socket is untouched
        assert api.get("/healthz").status_code == 200


def test_the_control_routes_answer_with_the_cli_shapes(tether: Tether, fake):
    tether.start_daemon()
    done = create(fake, fake_outcome="completed", fake_run="0")
    running = create(fake, fake_run="600")
    with over_socket(tether) as api:
        tracked = api.post("/api/responses", json={"ids": [done, running], "labels": {"job": "7"}})
        assert tracked.status_code == 200, tracked.text
        body = tracked.json()
        assert body["new"] == [done, running]
        assert [r["id"] for r in body["responses"]] == [done, running]
        assert body["responses"][0]["labels"] == {"job": "7"}
        again = api.post("/api/responses", json={"ids": [done]}).json()
        assert again["new"] == []

        # scheduled by the running daemon: polled without waiting for a restart
        wait_for(
            lambda: len(server_record(fake, running)["gets"]) >= 2, timeout=20, what="polls of the tracked response"
        )

        listed = api.get("/api/responses", params={"label": "job=7"}).json()
        assert sorted(r["id"] for r in listed) == sorted([done, running])
        assert api.get("/api/responses", params={"status": "completed"}).json()[0]["id"] == done
        assert [r["id"] for r in api.get("/api/responses", params={"active": "true"}).json()] == [running]

        shown = api.get(f"/api/responses/{done}").json()
        assert shown["status"] == "completed" and shown["events"][0]["kind"] == "tracked"

        events = api.get("/api/events", params={"response_id": running}).json()
        assert events[0]["kind"] == "tracked" and isinstance(events[0]["id"], int)
        later = api.get("/api/events", params={"after": events[0]["id"], "response_id": running}).json()
        assert all(e["id"] > events[0]["id"] for e in later)

        cancelled = api.post(f"/api/responses/{running}/cancel", json={"reason": "test"})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["cancel_reason"] == "manual"
        assert len(server_record(fake, running)["cancels"]) == 1

        finished = api.post(f"/api/responses/{done}/cancel")
        assert finished.status_code == 409
        assert finished.json() == {
            "error": {"message": f"{done} is already completed; nothing to cancel", "code": "already_finished"}
        }

        submitted = api.post("/api/responses/submit", json={"body": {"model": "o3-pro", "input": "hi"}})
        assert submitted.status_code == 201, submitted.text
        assert submitted.json()["id"] in server_record_ids(fake)

        assert api.get("/api/budgets").json() == []
        health = api.get("/api/health").json()
        assert health["healthy"] is True and health["message"].startswith("healthy: daemon pid")


def server_record_ids(fake) -> set[str]:
    return set(fake.state.snapshot()["responses"])


@pytest.mark.parametrize(
    "method, route, body, status, code",
    [
        ("GET", "/api/responses/resp_nothing", None, 404, "not_tracked"),
        ("GET", "/api/responses/bad!id", None, 400, "invalid_id"),
        ("GET", "/api/responses?status=sleeping", None, 400, "invalid_status"),
        ("GET", "/api/responses?label=nolabel", None, 400, "invalid_label"),
        ("GET", "/api/responses?policy=none", None, 400, "unknown_policy"),
        ("GET", "/api/events?after=x", None, 400, "invalid_parameter"),
        ("POST", "/api/responses", {"ids": "resp_1"}, 400, "invalid_field"),
        ("POST", "/api/responses", {"ids": ["resp_gone"]}, 404, "not_found"),
        ("POST", "/api/responses", {"ids": ["resp_1"], "account": "nobody"}, 400, "unknown_account"),
        ("POST", "/api/responses/submit", {"body": {"input": "no model"}}, 400, "invalid_body"),
        ("POST", "/api/responses/resp_nothing/cancel", None, 404, "not_tracked"),
    ],
)
def test_bad_requests_are_refused_with_an_error_object(tether: Tether, method, route, body, status, code):
    tether.start_daemon()
    with over_socket(tether) as api:
        reply = api.request(method, route, json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code and reply.json()["error"]["message"]


def test_a_body_that_is_not_json_is_refused(tether: Tether):
    tether.start_daemon()
    with over_socket(tether) as api:
        reply = api.post("/api/responses", content=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"


def test_a_followed_event_stream_sends_events_written_after_it_opened_and_resumes(tether: Tether, fake):
    tether.start_daemon()
    received: list[dict] = []
    opened = threading.Event()

    def follow() -> None:
        with over_socket(tether) as api, api.stream("GET", "/api/events", params={"follow": "true"}) as reply:
            assert reply.headers["content-type"].startswith("text/event-stream")
            opened.set()
            for line in reply.iter_lines():
                if line.startswith("data:"):
                    received.append(json.loads(line[5:]))
                    if received[-1]["kind"] == "tracked":
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(20)
    rid = create(fake, fake_run="600")
    with over_socket(tether) as api:
        api.post("/api/responses", json={"ids": [rid], "verify": False})
        reader.join(20)
        assert received and received[-1]["response_id"] == rid
        # Resumed after the tracked event: only what came after it.
        with api.stream(
            "GET", "/api/events", headers={"Accept": "text/event-stream", "Last-Event-ID": str(received[-1]["id"])}
        ) as reply:
            api.post(f"/api/responses/{rid}/cancel")
            lines = (json.loads(line[5:]) for line in reply.iter_lines() if line.startswith("data:"))
            first = next(lines)
    assert first["id"] > received[-1]["id"] and first["response_id"] == rid


def test_openapi_describes_every_control_route_and_nothing_else(tether: Tether):
    from tether.server.app import build_app

    tether.start_daemon()
    with over_socket(tether) as api:
        document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    described = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    app = build_app(None, control_api=True)  # type: ignore[arg-type]
    served = {
        (r.resource.canonical, r.method)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource.canonical not in ("/healthz", "/readyz")
    }
    assert described == served


def test_the_tcp_listener_demands_the_token_for_the_control_api(tether: Tether):
    port = free_port()
    with_server(tether, f'listen = "127.0.0.1:{port}"\ntoken_env = "TETHER_TEST_TOKEN"\n')
    tether.extra_env["TETHER_TEST_TOKEN"] = TOKEN
    tether.start_daemon()
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/readyz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        refused = httpx.get(f"{base}/api/responses", headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{base}/openapi.json").status_code == 401
    good = httpx.get(f"{base}/api/responses", headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200 and good.json() == []


def test_without_a_token_the_tcp_listener_serves_no_control_api_and_check_config_says_so(tether: Tether):
    port = free_port()
    with_server(tether, f'listen = "127.0.0.1:{port}"\n')
    checked = tether.ok("check-config")
    assert "the control API is not served on TCP" in checked.stderr
    tether.start_daemon()
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/api/responses").status_code == 404


class ProbedFront:
    """Only what /readyz asks of Front: whether the store answers and the lock is held."""

    def __init__(self, store: bool, lock: bool) -> None:
        self.store, self.lock = store, lock

    def store_answers(self) -> bool:
        return self.store

    def holds_lock(self) -> bool:
        return self.lock


@pytest.mark.parametrize(("store", "lock", "status"), [(True, True, 200), (False, True, 503), (True, False, 503)])
async def test_readyz_is_503_unless_the_store_answers_and_the_lock_is_held(store, lock, status):
    from aiohttp import web

    from tether.server.app import build_app

    runner = web.AppRunner(build_app(ProbedFront(store, lock), control_api=False))  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{port}/readyz")
            alive = await client.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        await runner.cleanup()
    assert reply.status_code == status
    assert reply.json() == {"ready": status == 200, "store": store, "lock": lock}
    assert alive.status_code == 200


async def test_the_doors_operations_track_a_created_response_look_at_once_record_a_cancel_and_refuse_a_create(
    tether: Tether, fake, monkeypatch
):
    """What the proxy and webhooks call on Front, on a daemon running in this event loop."""
    import asyncio
    import time

    from tether.config import load_config
    from tether.daemon import Daemon
    from tether.store import Store

    tether.write_config(
        policies='[[budget]]\nname = "team-x"\nmatch = { metadata = { team = "x" } }\nlimit_usd = 1.0\nperiod = "day"\n'
    )
    config = load_config(str(tether.config_path), environ=tether.env)
    store = Store(config.store.url)
    store.ensure_schema()
    monkeypatch.setenv("TETHER_TEST_KEY", API_KEY)
    daemon = Daemon(config, store)
    running = asyncio.create_task(daemon.run())

    async def until(predicate, what: str) -> None:
        deadline = time.monotonic() + 20
        while not predicate():
            assert not running.done(), running.result()
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    await until(lambda: daemon.server.runners, "the listeners")
    front = daemon.server.front
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=auth) as upstream:
        created = (
            await upstream.post(
                "/responses",
                json={"model": "o3-pro", "input": "x", "background": True, "metadata": {"fake_run": "600"}},
            )
        ).json()
        rid = created["id"]
        record = await front.track_created(created, account="default", policy=None, labels={"via": "proxy"})
        assert record["id"] == rid and record["status"] == created["status"] and record["labels"] == {"via": "proxy"}
        assert rid in daemon.state.active  # scheduled at once
        assert len(server_record(fake, rid)["gets"]) == 0  # stored from the created object: no GET

        assert await front.poll_now("resp_untracked") is False
        assert await front.poll_now(rid) is True
        await until(lambda: len(server_record(fake, rid)["gets"]) >= 1, "the look poll_now asked for")

        answer = (await upstream.post(f"/responses/{rid}/cancel")).json()
        await front.record_manual_cancel(rid, answer)
    shown = await asyncio.to_thread(front.show, rid)
    assert shown["cancel_reason"] == "manual" and shown["status"] == "cancelled"
    assert [e["kind"] for e in shown["events"]][:2] == ["tracked", "cancel_requested"]
    # the daemon's own write, which its pickup does not see: counted by Front
    assert daemon.state.metrics.registry.get_sample_value("tether_cancels_total", {"reason": "manual"}) == 1

    refusal = functools.partial(front.budget_refusal, account="default", model="o3-pro", labels={}, policy=None)
    assert refusal(metadata={"team": "x"}, max_output_tokens=100_000) == "team-x"  # reserves more than $1
    assert refusal(metadata={"team": "x"}, max_output_tokens=None) is None  # reserves nothing
    assert refusal(metadata={"team": "y"}, max_output_tokens=100_000) is None  # out of the budget's scope

    daemon.stop()
    assert await asyncio.wait_for(running, 30) == 0


# ---- the CLI through the daemon ------------------------------------------------------------


def outputs(tether: Tether, commands: list[list[str]]) -> list[tuple[int, str, str]]:
    results = []
    for args in commands:
        result = tether.cli(*args)
        results.append((result.returncode, result.stdout, result.stderr))
    return results


def test_the_cli_answers_the_same_through_the_daemon_as_on_the_store(tether: Tether, fake):
    tether.write_config(policies='[[budget]]\nname = "all"\nlimit_usd = 100\nperiod = "month"\n')
    done = create(fake, fake_outcome="completed", fake_run="0")
    failed = create(fake, fake_outcome="failed", fake_run="0")
    wait_for(lambda: server_record(fake, failed)["status"] == "failed", timeout=10, what="the stand-in to finish")
    tether.ok("track", done, failed, "--label", "job=1")
    body = tether.root / "body.json"
    body.write_text('{"model": "o3-pro", "input": "x"}')
    commands = [
        ["ls"],
        ["ls", "--json"],
        ["ls", "--status", "failed", "--json"],
        ["ls", "--label", "job=1", "--json"],
        ["ls", "--status", "nope"],
        ["ls", "--policy", "nope"],
        ["ls", "--active"],
        ["show", done],
        ["show", done, "--json"],
        ["show", "resp_missing"],
        ["show", "bad!id"],
        ["log"],
        ["log", "--json"],
        ["log", "--id", failed, "--json"],
        ["budget"],
        ["budget", "--json"],
        ["track", done],
        ["track", done, "--json"],
        ["track", "resp_gone"],
        ["track", done, "--policy", "nope"],
        ["cancel", done],
        ["cancel", "resp_missing"],
        ["submit", str(body), "--account", "nobody"],
    ]
    here = outputs(tether, commands)
    daemon = tether.start_daemon()
    assert tether.socket_path.exists()
    there = outputs(tether, commands)
    tether.stop_daemon(daemon)
    for args, mine, theirs in zip(commands, here, there, strict=True):
        if args == ["ls"]:  # its age column moves on
            mine, theirs = (mine[0], mine[1].split("\n")[0], mine[2]), (theirs[0], theirs[1].split("\n")[0], theirs[2])
        assert mine == theirs, f"tether {' '.join(args)}"
    assert [code for code, _, _ in here] == [0, 0, 0, 0, 2, 2, 0, 0, 0, 3, 2, 0, 0, 0, 0, 0, 0, 0, 3, 2, 0, 3, 2]


def test_check_through_the_daemon_is_healthy_and_says_so_as_on_the_store(tether: Tether):
    daemon = tether.start_daemon()
    through = tether.cli("check")
    assert through.returncode == 0 and through.stdout.startswith("healthy: daemon pid")
    tether.stop_daemon(daemon)
    alone = tether.cli("check")
    assert alone.returncode == 1 and "stopped at" in alone.stderr


def test_through_the_daemon_the_cli_needs_no_key_and_no_store(tether: Tether, fake, tmp_path: Path):
    tether.start_daemon()
    # The CLI's own config: the daemon's socket, a store it cannot open, no key in its environment.
    blind = tmp_path / "blind.toml"
    (tmp_path / "not-a-folder").write_text("")
    blind.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/not-a-folder/tether.db"\n'
        f'[accounts.default]\nbase_url = "{fake.base_url}"\napi_key_env = "TETHER_TEST_KEY"\n'
        f'[server]\nsocket = "{tether.socket_path}"\n'
    )
    env = {k: v for k, v in tether.env.items() if k not in ("TETHER_TEST_KEY", "OPENAI_API_KEY")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tether", "--config", str(blind), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    rid = create(fake, fake_run="600")
    tracked = cli("track", rid, "--json")
    assert tracked.returncode == 0, tracked.stderr
    assert json.loads(tracked.stdout)["id"] == rid
    assert [r["id"] for r in json.loads(cli("ls", "--json").stdout)] == [rid]
    cancelled = cli("cancel", rid)
    assert cancelled.returncode == 0, cancelled.stderr
    assert len(server_record(fake, rid)["cancels"]) == 1
    tether.stop_daemon(tether.daemons[0])
    alone = cli("ls")  # without the daemon, the same command has no store to read
    assert alone.returncode == 1 and "not-a-folder" in alone.stderr


def readable_install(dest: Path) -> Path:
    """tether and its runtime dependencies, linked (or copied) under `dest`, a folder any user
    may read: the checkout and its .venv may sit where only their owner can (a fresh clone in a
    0700 temporary folder)."""
    import importlib.metadata
    import re

    from packaging.requirements import Requirement

    site = dest / "site-packages"
    shutil.copytree(Path(__file__).resolve().parent.parent / "daemon" / "tether", site / "tether")
    seen: set[str] = set()
    wanted = [req.name for req in map(Requirement, importlib.metadata.requires("tether") or []) if not req.marker]
    while wanted:
        name = re.sub(r"[-_.]+", "-", wanted.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
        for file in dist.files or []:
            source = Path(str(file.locate()))
            if file.parts[0] == ".." or not source.is_file():
                continue  # scripts in bin/: not imported
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    return site


def test_a_user_outside_the_sockets_group_is_refused_and_told_what_to_do(tether: Tether, tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the CLI as nobody")
    python = Path("/usr/bin/python3.11")
    if not python.exists() or sys.version_info[:2] != (3, 11):
        pytest.skip("needs a Python 3.11 that the user nobody can run")
    tether.start_daemon()
    # The socket's folder is root's (0750): nobody is neither its owner nor in its group.
    folder = Path(tempfile.mkdtemp(prefix="tether-nobody-"))  # one that nobody may enter
    folder.chmod(0o755)
    config = folder / "tether.toml"
    config.write_text(tether.config_path.read_text() + f'\n[server]\nsocket = "{tether.socket_path}"\n')
    config.chmod(0o644)
    env = {**tether.env, "PYTHONPATH": str(readable_install(folder)), "HOME": "/nonexistent"}

    def as_nobody() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    try:
        result = subprocess.run(
            [str(python), "-m", "tether", "--config", str(config), "ls"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=as_nobody,
            cwd="/",
        )
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 1, result.stderr
    assert "permission denied" in result.stderr
    assert "as root or as a member of the socket's group" in result.stderr


def test_log_follow_through_the_daemon_prints_new_events_and_ends_when_it_stops(tether: Tether, fake):
    daemon = tether.start_daemon()
    follower = subprocess.Popen(
        [sys.executable, "-m", "tether", "--config", str(tether.config_path), "log", "-f", "--json"],
        env=tether.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The follow starts from the first event: whenever it connects, it prints this one.
        rid = create(fake, fake_run="600")
        tether.ok("track", rid)
        line = follower.stdout.readline()  # blocks until the event comes (pytest's timeout bounds it)
        event = json.loads(line)
        assert event["response_id"] == rid and event["kind"] == "tracked" and "id" not in event
        tether.stop_daemon(daemon)
        assert follower.wait(timeout=30) == 1
        assert "ended the event stream" in follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_every_failed_attempt_of_a_command_through_the_daemon_is_an_api_error_line(tether: Tether, fake):
    daemon = tether.start_daemon()
    rid = create(fake, fake_run="600")
    fake.state.faults.force("get", "server_error", times=2)  # the look-up's first two attempts; the third answers
    tracked = tether.cli("track", rid)
    assert tracked.returncode == 0, tracked.stderr

    def logged() -> list[dict]:
        return [line for line in tether.log_lines(daemon) if line["event"] == "api.error" and line.get("op") == "get"]

    lines = wait_for(lambda: len(logged()) >= 2 and logged(), timeout=10, what="an api.error line per failed attempt")
    assert [(line["response_id"], line["http_status"] >= 500) for line in lines] == [(rid, True), (rid, True)]
