"""The dashboard: HTML pages on the daemon's TCP listener (docs/dashboard.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from tether.server.front import Front


def add_routes(app: web.Application, front: Front, token: str | None) -> None:
    """Serve the dashboard on `app`: read-only pages, and the cancel only when there is a `token`."""
    from tether.dashboard.routes import Dashboard

    app.add_routes(Dashboard(front, token).routes())
