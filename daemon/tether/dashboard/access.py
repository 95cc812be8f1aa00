"""Who may cancel from the dashboard (docs/dashboard.md, "Read-only, and the token").

The pages are read-only for everyone who reaches the listener. When the listener has a
token, opening any page once with `?token=<token>` exchanges it for a session cookie
(HttpOnly, SameSite=Strict) and redirects to the same page without it, so the token leaves
the address bar and never appears in a page. The cookie holds a key derived from the token,
not the token: it opens the dashboard's cancel and nothing else (not the control API), and a
new token voids it. A cancel is a POST that carries the cookie and a form field derived from
it and the response id (so a page of another site can neither send the cookie, SameSite, nor
know the field), and, when the browser sends one, an Origin of this listener.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "tether_dashboard"


class Access:
    def __init__(self, token: str | None) -> None:
        self._token = token
        self._session = None if token is None else _mac(token, "tether dashboard session")

    @property
    def can_cancel(self) -> bool:
        """The listener has a token: a session can be opened, and the cancel routes exist."""
        return self._session is not None

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token.encode())

    def open_session(self, answer: web.StreamResponse) -> None:
        assert self._session is not None
        answer.set_cookie(COOKIE, self._session, path="/", httponly=True, samesite="Strict")

    def in_session(self, request: web.Request) -> bool:
        given = request.cookies.get(COOKIE)
        return self._session is not None and given is not None and hmac.compare_digest(given, self._session)

    def form_key(self, rid: str) -> str:
        """The cancel form's field for response `rid` (pages rendered in a session carry it)."""
        assert self._session is not None
        return _mac(self._session, f"cancel {rid}")

    def may_cancel(self, request: web.Request, rid: str, form_key: str) -> bool:
        if not self.in_session(request) or not hmac.compare_digest(form_key, self.form_key(rid)):
            return False
        # The host only: behind a proxy that ends TLS the scheme seen here is not the browser's.
        origin = request.headers.get("Origin")
        return origin is None or urlsplit(origin).netloc == request.host


def _mac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()
