"""Append-only audit trail of administrative actions."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ..storage.models import AuditEvent, User


def record_action(
    session: Session, actor: User | None, action: str, target: str, **details: Any
) -> AuditEvent:
    event = AuditEvent(
        actor_id=actor.id if actor else None, action=action, target=target, details=details
    )
    session.add(event)
    return event
