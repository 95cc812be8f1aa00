"""A real daemon serving the dashboard on its TCP listener, for tests/test_dashboard*.py."""

from __future__ import annotations

import socket

import httpx

from conftest import Tether, wait_for

TOKEN = "dashboard-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_dashboard(tether: Tether, *, token: bool, policies: str = "") -> str:
    """Start the daemon with a TCP listener (with the token TOKEN when `token`); its base URL."""
    port = free_port()
    tether.write_config(policies)
    server = f'\n[server]\nlisten = "127.0.0.1:{port}"\n'
    if token:
        server += 'token_env = "TETHER_TEST_TOKEN"\n'
        tether.extra_env["TETHER_TEST_TOKEN"] = TOKEN
    tether.config_path.write_text(tether.config_path.read_text() + server)
    tether.start_daemon()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: listening(base), timeout=30, what="the TCP listener")
    return base


def listening(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
