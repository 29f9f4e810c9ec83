"""Dashboard sign-in, the per-request admin check, cookies and response headers.

The session cookie holds a random session token (never the API key). The database keeps the
token's SHA-256 in ``dashboard_sessions`` with the id of the key used to sign in. Every request
re-reads that row, its key and its user, so signing out, revoking the key, disabling the user or
changing their role ends the session on the next click, for every copy of the cookie.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time

from flask import Flask, has_request_context, request
from flask import session as cookie_session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..domain.errors import Forbidden, Unauthorized
from ..http.auth import user_for_key
from ..services.audit import record_action
from ..storage.models import ApiKey, DashboardSession, User, utcnow
from .spend import as_utc

SESSION_TOKEN = "admin_session"
# Kept in the (signed) cookie beside the token: not a secret, and the rate limiter buckets
# dashboard requests by it without a database read. Authority comes from the token's row.
SESSION_KEY_ID = "admin_key_id"
SESSION_STARTED = "admin_signed_in_at"
# Absolute lifetime: a stolen cookie is useful for a working day at most.
MAX_SESSION_AGE = dt.timedelta(hours=8)

class SchemeAwareSessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request arrived over HTTPS.

    `request.is_secure` follows the WSGI url_scheme; behind a TLS proxy Werkzeug's ProxyFix sets
    it from X-Forwarded-Proto when PRIVACY_API_TRUSTED_PROXIES is set (create_app).
    SESSION_COOKIE_SECURE=True forces it on everywhere.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        forced = bool(app.config["SESSION_COOKIE_SECURE"])
        return forced or (has_request_context() and request.is_secure)


def sign_in(session: Session, plaintext: str) -> User:
    """Check an API key for dashboard use and start a server-side session; the cookie gets
    its random token (the database keeps only the token's digest)."""
    plaintext = plaintext.strip()
    user = user_for_key(plaintext) if plaintext else None
    if user is None:
        raise Unauthorized("That API key is not valid (unknown, mistyped or revoked).")
    if user.role != "admin":
        raise Forbidden(f"This key belongs to a user with the {user.role} role. "
                        "Only admin keys can sign in to the dashboard.")
    # user_for_key has verified the digest; the id is the key's second field (pa_<id>_<secret>).
    key_id = plaintext.split("_")[1]
    admin = session.get(User, user.id)
    assert admin is not None
    token = secrets.token_urlsafe(32)
    # Old rows of this admin are kept only while they could still be within their lifetime.
    session.execute(delete(DashboardSession).where(
        DashboardSession.user_id == admin.id,
        DashboardSession.created_at < utcnow() - MAX_SESSION_AGE))
    session.add(DashboardSession(id=_session_id(token), user_id=admin.id, key_id=key_id))
    cookie_session.clear()
    cookie_session[SESSION_TOKEN] = token
    cookie_session[SESSION_KEY_ID] = key_id
    cookie_session[SESSION_STARTED] = int(time.time())
    record_action(session, admin, "dashboard.sign_in", f"user:{admin.id}", key_id=key_id)
    return admin


def _session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_out(session: Session | None = None) -> None:
    """End this browser's session: server-side (when a db session is given) and in the cookie."""
    token = cookie_session.get(SESSION_TOKEN)
    if session is not None and isinstance(token, str):
        session.execute(update(DashboardSession)
                        .where(DashboardSession.id == _session_id(token),
                               DashboardSession.ended_at.is_(None))
                        .values(ended_at=utcnow()))
    cookie_session.clear()


def signed_in_admin(session: Session) -> tuple[User | None, str | None]:
    """The admin behind this cookie session, or (None, why the session is not valid)."""
    token = cookie_session.get(SESSION_TOKEN)
    if not isinstance(token, str):
        return None, None
    started = cookie_session.get(SESSION_STARTED)
    if not isinstance(started, int) or time.time() - started > MAX_SESSION_AGE.total_seconds():
        return None, "Your session expired. Sign in again."
    row = session.execute(
        select(DashboardSession, ApiKey, User)
        .join(ApiKey, ApiKey.id == DashboardSession.key_id)
        .join(User, User.id == DashboardSession.user_id)
        .where(DashboardSession.id == _session_id(token))
    ).first()
    if row is None:
        return None, "Your session has ended. Sign in again."
    user = row[2]
    # Most specific reason first: disabling a user also ends their sessions.
    if user.disabled:
        return None, "Your session ended because your account was disabled."
    if row[1].revoked_at is not None:
        return None, "Your session ended because its API key was revoked."
    if row[0].ended_at is not None:
        return None, "Your session has ended (signed out). Sign in again."
    if as_utc(row[0].created_at) < utcnow() - MAX_SESSION_AGE:
        return None, "Your session expired. Sign in again."
    if user.role != "admin":
        return None, "Your session ended because your account is no longer an admin."
    return user, None


# CSRF is checked only where a cookie authenticates the request: the dashboard's before_request
# calls `csrf.protect()` for POSTs. The JSON API uses bearer keys, which a browser never attaches
# on its own, so it needs (and gets) no CSRF check.
csrf = CSRFProtect()
