from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from apiflask.fields import Boolean, DateTime, Integer, List, Nested, String
from apiflask.validators import Length, OneOf

from ..http.auth import auth, current_user
from ..http.session import db_session
from ..services import users as users_service
from ..storage.models import ROLES
from .schemas_common import StrictSchema

bp = APIBlueprint("users", __name__, url_prefix="/v1", tag="Users and keys")


class UserIn(StrictSchema):
    name = String(required=True, validate=Length(1, 200))
    role = String(required=True, validate=OneOf(ROLES))


class UserOut(StrictSchema):
    id = Integer()
    name = String()
    role = String()
    disabled = Boolean()
    created_at = DateTime()


class UserCreatedOut(UserOut):
    api_key = String(metadata={"description": "shown once; only a digest is stored"})


class KeyOut(StrictSchema):
    key_id = String()
    api_key = String()


class KeyInfo(StrictSchema):
    key_id = String(attribute="id")
    created_at = DateTime()
    revoked_at = DateTime(allow_none=True)


class UserDetailOut(UserOut):
    keys = List(Nested(KeyInfo))


@bp.post("/users")
@bp.auth_required(auth, roles=["admin"])
@bp.input(UserIn, arg_name="body")
@bp.output(UserCreatedOut, status_code=201)
@bp.doc(responses={409: "a user with this name exists"})
def create_user(body: dict[str, Any]) -> dict[str, Any]:
    user, key = users_service.create_user(
        db_session(), body["name"], body["role"], actor=current_user()
    )
    return {**_user(user), "api_key": key}


@bp.get("/users")
@bp.auth_required(auth, roles=["admin"])
@bp.output(UserOut(many=True))
def list_users() -> Any:
    return users_service.list_users(db_session())


@bp.get("/users/<int:user_id>")
@bp.auth_required(auth, roles=["admin"])
@bp.output(UserDetailOut)
def get_user(user_id: int) -> dict[str, Any]:
    session = db_session()
    user = users_service.get_user(session, user_id)
    return {**_user(user), "keys": users_service.list_keys(session, user_id)}


@bp.get("/me")
@bp.auth_required(auth)
@bp.output(UserOut)
def me() -> Any:
    return current_user()


@bp.post("/users/<int:user_id>/keys")
@bp.auth_required(auth, roles=["admin"])
@bp.output(KeyOut, status_code=201)
def create_key(user_id: int) -> dict[str, Any]:
    session = db_session()
    user = users_service.get_user(session, user_id)
    key, plaintext = users_service.issue_key(session, user, actor=current_user())
    return {"key_id": key.id, "api_key": plaintext}


@bp.post("/users/<int:user_id>/disable")
@bp.auth_required(auth, roles=["admin"])
@bp.output(UserOut)
@bp.doc(summary="Disable a user: their keys and dashboard sessions stop working at once",
        responses={409: "an admin cannot disable their own account"})
def disable_user(user_id: int) -> dict[str, Any]:
    return _user(users_service.set_disabled(db_session(), user_id, True, actor=current_user()))


@bp.post("/users/<int:user_id>/enable")
@bp.auth_required(auth, roles=["admin"])
@bp.output(UserOut)
@bp.doc(summary="Re-enable a disabled user (their keys work again; old sessions stay ended)")
def enable_user(user_id: int) -> dict[str, Any]:
    return _user(users_service.set_disabled(db_session(), user_id, False, actor=current_user()))


@bp.delete("/keys/<key_id>")
@bp.auth_required(auth, roles=["admin"])
@bp.output({}, status_code=204)
def revoke_key(key_id: str) -> str:
    users_service.revoke_key(db_session(), key_id, actor=current_user())
    return ""


def _user(user: Any) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at,
    }
