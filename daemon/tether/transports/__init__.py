"""The transport under tether's httpx2 client, chosen by measurement for the process that sends.

- `on_aiohttp`, for the daemon (and its proxy): httpx2 on aiohttp through httpx-aiohttp, half
  the CPU per request of httpx2's own transport (bench/client_cost.py).
- `native`, for a CLI command: httpx2's own transport. A command sends a request or two, and
  importing aiohttp and httpx-aiohttp would cost it more than all of them (bench/cli_startup.py).

Both read the proxy and the CA to trust from the environment as httpx2 does, and neither
re-sends a request on its own: one attempt is at most one request.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx2


class Failure(NamedTuple):
    """What became of a request that got no whole reply."""

    delivered: bool  # it may have reached the server: a create must not be sent again
    what: str  # "timeout" or "connection error" when delivered
    detail: str  # for an undelivered request, what kept it from leaving


@dataclass(frozen=True)
class Transport:
    client: Callable[..., httpx2.AsyncClient]  # takes httpx2.AsyncClient's keyword arguments
    errors: tuple[type[BaseException], ...]  # what a request can fail with short of a reply
    failure: Callable[[BaseException], Failure]


def load(brief: bool) -> Transport:
    module: Any = importlib.import_module(f"tether.transports.{'native' if brief else 'on_aiohttp'}")
    return module.TRANSPORT


def delivered(exc: BaseException) -> Failure:
    """A failure after the request may have been sent, or when that cannot be told."""
    what = "timeout" if isinstance(exc, (TimeoutError, httpx2.TimeoutException)) else "connection error"
    return Failure(True, what, f"{type(exc).__name__}: {exc}")
