"""The dashboard's sessions: server-side, in memory, one per browser login.

A login issues an ordinary user token (UserService.login, so revocation, expiry, a
disabled user and lost permissions all apply exactly as for a Bearer token); the
session keeps that token on the server and the browser gets only a random session id
in a Secure, HttpOnly, SameSite=Strict cookie. Each session has its own CSRF token,
which every form posts back. Bounded: past `MAX_SESSIONS` the oldest is dropped.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "moorage_session"
LOGIN_CSRF_COOKIE = "moorage_login_csrf"
MAX_SESSIONS = 10_000
SESSION_TTL_S = 12 * 3600.0
"""How long the user token behind a session lives (the session ends with it)."""
MAX_ID = 128


@dataclass(frozen=True)
class Session:
    id: str
    token: str
    """The user token the login issued: never sent to the browser."""
    csrf: str
    username: str


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison; an empty or oversized value never matches. Pure."""
    if not given or not expected or len(given) > MAX_ID:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


class SessionStore:
    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token: str, username: str) -> Session:
        session = Session(new_secret(), token, new_secret(), username)
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session | None:
        if not session_id or len(session_id) > MAX_ID:
            return None
        return self._sessions.get(session_id)

    def drop(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)
