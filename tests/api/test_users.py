from __future__ import annotations

from sqlalchemy import select

from privacy_api.storage.models import ApiKey


def test_admin_creates_user_and_key_is_shown_once_and_stored_as_digest(api):
    _, admin = api.user("root", "admin")
    a = api.as_(admin)
    resp = a.post("/v1/users", json={"name": "ana", "role": "analyst"})
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["role"] == "analyst" and body["api_key"].startswith("pa_")
    key = body["api_key"]
    assert api.as_(key).get("/v1/me").get_json()["name"] == "ana"
    detail = a.get(f"/v1/users/{body['id']}").get_json()
    assert key not in str(detail) and "api_key" not in detail
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        digests = s.scalars(select(ApiKey.digest)).all()
    assert all(key.encode() not in d for d in digests)
    assert all(len(d) == 32 for d in digests)
    assert a.post("/v1/users", json={"name": "ana", "role": "analyst"}).status_code == 409
    assert a.post("/v1/users", json={"name": "x", "role": "king"}).status_code == 422


def test_new_key_works_and_revocation_is_immediate(api):
    _, admin = api.user("root", "admin")
    uid, first = api.user("bob", "analyst")
    a = api.as_(admin)
    created = a.post(f"/v1/users/{uid}/keys").get_json()
    second = created["api_key"]
    assert api.as_(second).get("/v1/me").status_code == 200
    assert a.delete(f"/v1/keys/{created['key_id']}").status_code == 204
    assert api.as_(second).get("/v1/me").status_code == 401
    assert api.as_(first).get("/v1/me").status_code == 200
    assert a.delete("/v1/keys/doesnotexist").status_code == 404


def test_list_users_is_admin_only(api):
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    assert len(api.as_(admin).get("/v1/users").get_json()) == 2
    assert api.as_(owner).get("/v1/users").status_code == 403
