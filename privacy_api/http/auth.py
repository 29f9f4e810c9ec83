"""API-key authentication of requests (keys are minted in `crypto.api_keys`)."""

from __future__ import annotations

import hmac

from apiflask import HTTPTokenAuth
from flask import current_app, g, request
from sqlalchemy import bindparam, select
from sqlalchemy.orm import make_transient_to_detached

from ..crypto.api_keys import KEY_PREFIX, digest
from ..storage.models import ApiKey, User

auth = HTTPTokenAuth(scheme="Bearer", description="API key: `Authorization: Bearer pa_...`")

# Built once: every request runs it, and composing a statement costs more than running it.
_KEY_AND_USER = (
    select(ApiKey.digest, ApiKey.revoked_at, User.id, User.name, User.role, User.disabled,
           User.created_at)
    .join(User, User.id == ApiKey.user_id)
    .where(ApiKey.id == bindparam("key_id"))
)


def user_for_key(plaintext: str) -> User | None:
    parts = plaintext.split("_")
    if len(parts) < 3 or parts[0] != KEY_PREFIX:
        return None
    db = current_app.extensions["privacy_api"].db
    with db.engine.connect() as conn:
        row = conn.execute(_KEY_AND_USER, {"key_id": parts[1]}).first()
    if row is None or row.revoked_at is not None or row.disabled:
        return None
    if not hmac.compare_digest(row.digest, digest(plaintext)):
        return None
    # A detached User, as if loaded and expunged: services read its attributes, never lazy-load.
    user = User(id=row.id, name=row.name, role=row.role, disabled=row.disabled,
                created_at=row.created_at)
    make_transient_to_detached(user)
    return user


def bearer_user() -> User | None:
    """The user behind this request's `Authorization: Bearer` key, verified once per request.

    The rate limiter needs it before the view runs (a forged key must count as anonymous), and
    the view's auth check needs it again: one database lookup serves both.
    """
    if "bearer_user" not in g:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        g.bearer_user = user_for_key(token) if scheme.lower() == "bearer" and token else None
        g.bearer_token = token
    user: User | None = g.bearer_user
    return user


@auth.verify_token
def _verify(token: str) -> User | None:
    if not token:
        return None
    if g.get("bearer_token") == token and "bearer_user" in g:
        cached: User | None = g.bearer_user
        return cached
    return user_for_key(token)


@auth.get_user_roles
def _roles(user: User) -> str:
    return user.role


def current_user() -> User:
    user = auth.current_user
    assert isinstance(user, User)
    return user
