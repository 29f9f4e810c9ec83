"""Users and their API keys."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..crypto.api_keys import new_api_key
from ..domain.errors import Conflict, InvalidRequest, NotFound
from ..domain.names import checked_name
from ..storage.models import ROLES, ApiKey, DashboardSession, User, utcnow
from .audit import record_action


def create_user(
    session: Session, name: str, role: str, *, actor: User | None = None
) -> tuple[User, str]:
    """Create a user and its first key; the plaintext key is returned once, never stored."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", {"role": [role]})
    name = checked_name(name, "name")
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"a user named {name!r} already exists")
    user = User(name=name, role=role)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a user named {name!r} already exists") from exc
    _, plaintext = issue_key(session, user, actor=actor, audit=False)
    record_action(session, actor, "user.create", f"user:{user.id}", name=name, role=role)
    return user, plaintext


def issue_key(
    session: Session, user: User, *, actor: User | None = None, audit: bool = True
) -> tuple[ApiKey, str]:
    key_id, plaintext, digest = new_api_key()
    key = ApiKey(id=key_id, user_id=user.id, digest=digest)
    session.add(key)
    session.flush()
    if audit:
        record_action(session, actor, "key.create", f"user:{user.id}", key_id=key_id)
    return key, plaintext


def revoke_key(session: Session, key_id: str, *, actor: User | None = None) -> None:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound("no such key")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        record_action(session, actor, "key.revoke", f"user:{key.user_id}", key_id=key_id)


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.id)).all()


def list_keys(session: Session, user_id: int) -> Sequence[ApiKey]:
    return session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at)
    ).all()


def set_disabled(session: Session, user_id: int, disabled: bool, *, actor: User) -> User:
    """Disable (or re-enable) a user. A disabled user's keys and dashboard sessions stop
    working on their next request: authentication re-reads the flag every time, and the
    sessions are also ended outright, so re-enabling does not revive them."""
    user = get_user(session, user_id)
    if disabled and user.id == actor.id:
        raise Conflict("you cannot disable your own account (another admin can)")
    if user.disabled == disabled:
        return user
    user.disabled = disabled
    ended = 0
    if disabled:
        result = session.execute(update(DashboardSession)
                                 .where(DashboardSession.user_id == user.id,
                                        DashboardSession.ended_at.is_(None))
                                 .values(ended_at=utcnow()))
        ended = int(getattr(result, "rowcount", 0) or 0)
    record_action(session, actor, "user.disable" if disabled else "user.enable",
                  f"user:{user.id}", **({"sessions_ended": ended} if disabled else {}))
    session.flush()
    return user
