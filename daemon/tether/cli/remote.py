"""The CLI's way through a running daemon: its control API on the Unix socket (docs/api.md).

A command first tries the configured socket; when no daemon answers there (no socket file,
or nobody listening) it opens the store itself. Through the daemon the CLI needs neither an
API key nor access to the store's folder.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

from tether.cli.common import EXIT_FAILURE, err, exit_for, fail

CONNECT_TIMEOUT = 1.0  # a daemon that does not accept within this is taken as absent
REPLY_TIMEOUT = 120.0  # a track or cancel waits for the API (its own timeouts are shorter)


def reach(path: str | None) -> Remote | None:
    """The daemon listening on `path`, or None when none answers there."""
    if not path:
        return None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(CONNECT_TIMEOUT)
    try:
        probe.connect(path)
    except PermissionError:
        err.print(
            f"tether: cannot use the daemon's socket {path}: permission denied (run tether as root or "
            "as a member of the socket's group, such as tether); trying the store directly"
        )
        return None
    except OSError:  # no socket file, nobody listening, or too slow: no daemon to ask
        return None
    finally:
        probe.close()
    return Remote(path)


class Remote:
    def __init__(self, path: str) -> None:
        import httpx2

        self.path = path
        # Plain HTTP on a local socket: no TLS context to build (loading the trust store was a
        # eighth of `tether ls` through the daemon), and nothing from the environment applies.
        self.client = httpx2.Client(
            transport=httpx2.HTTPTransport(uds=path, verify=False),
            base_url="http://tether",
            timeout=httpx2.Timeout(REPLY_TIMEOUT, connect=CONNECT_TIMEOUT),
            trust_env=False,
        )

    def call(
        self,
        method: str,
        route: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        accept: tuple[int, ...] = (),
    ) -> Any:
        """The JSON answer; an error answer ends the command as the CLI would have on its own,
        unless its status is one the caller `accept`s (it gets the error object then)."""
        import httpx2

        try:
            reply = self.client.request(method, route, params=params, json=body)
        except httpx2.HTTPError as exc:
            fail(EXIT_FAILURE, f"the daemon at {self.path} did not answer: {exc}")
        if reply.status_code in accept:
            return reply.json()["error"]
        return self._answer(reply.status_code, reply.content)

    def events(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Events as the daemon sends them (server-sent events), until the command is interrupted."""
        import httpx2

        try:
            with self.client.stream(
                "GET",
                "/api/events",
                params={**params, "follow": "true"},
                timeout=httpx2.Timeout(None, connect=CONNECT_TIMEOUT),
            ) as reply:
                if reply.status_code >= 400:
                    self._answer(reply.status_code, reply.read())
                for line in reply.iter_lines():
                    if line.startswith("data:"):
                        yield json.loads(line[5:])
        except httpx2.HTTPError as exc:
            fail(EXIT_FAILURE, f"the daemon at {self.path} stopped answering: {exc}")
        fail(EXIT_FAILURE, f"the daemon at {self.path} ended the event stream: it is stopping")

    def _answer(self, status: int, content: bytes) -> Any:
        try:
            data = json.loads(content)
        except ValueError:
            fail(EXIT_FAILURE, f"the daemon at {self.path} answered {status} without JSON")
        if status >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            fail(exit_for(status), str(error.get("message") or f"the daemon answered {status}"))
        return data
