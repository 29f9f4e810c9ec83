"""Dashboard routes: parse the form or query string, call one query or service, render.

Every POST carries a CSRF token (checked in `_guard`). Successful actions redirect with 303
(the request's session commits in after_request before the redirect leaves); a refused action
re-renders its page with the message and the error status, so the session rolls back.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from apiflask import APIBlueprint
from flask import (
    Blueprint,
    Response,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from ..domain.errors import DomainError, Forbidden, NotFound, Unauthorized
from ..http.security_headers import apply_security_headers
from ..http.session import db_session
from ..runtime.state import state
from ..services import budgets as budgets_service
from ..services import users as users_service
from ..storage.models import User
from . import forms, security
from . import queries as q
from . import templating as fmt
from .security import csrf, signed_in_admin
from .templating import template_helpers

log = logging.getLogger(__name__)

# An APIBlueprint only so APIFlask's OpenAPI generator can skip it (a plain Blueprint with a
# before_request hook breaks /openapi.json); it serves HTML, not API operations.
# Annotated as a Flask Blueprint: its route decorators are typed, APIBlueprint's are not.
bp: Blueprint = APIBlueprint("dashboard", __name__, url_prefix="/admin", template_folder="templates",
                             static_folder="static", static_url_path="/static",
                             enable_openapi=False)

PUBLIC_ENDPOINTS = frozenset({"dashboard.static", "dashboard.sign_in_form", "dashboard.sign_in"})


@bp.before_request
def _guard() -> BaseResponse | None:
    if request.method == "POST":
        csrf.protect()  # raises CSRFError -> the 400 page below
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    admin, reason = signed_in_admin(db_session())
    if admin is None:
        if reason:
            security.sign_out()
            flash(reason, "error")
        return redirect(url_for(".sign_in_form"), 303)
    g.admin = admin
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    return apply_security_headers(response, cacheable=request.endpoint == "dashboard.static")


@bp.context_processor
def _context() -> dict[str, Any]:
    return {"admin": g.get("admin"), **template_helpers()}


def _admin() -> User:
    admin = g.admin
    assert isinstance(admin, User)
    return admin


def _user_url(user: User) -> str:
    if user.role == "analyst":
        return url_for(".analyst", user_id=user.id)
    return url_for(".user_detail", user_id=user.id)


# --- errors: HTML here, while the JSON API keeps its JSON handlers ------------------------


def _error_page(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("dashboard/error.html", status=status, title=title,
                           message=message), status


@bp.errorhandler(CSRFError)
def _csrf_error(_: CSRFError) -> tuple[str, int]:
    return _error_page(400, "Form refused",
                       "The form was missing its security (CSRF) token, or the token expired. "
                       "Go back, reload the page and submit it again.")


@bp.errorhandler(DomainError)
def _domain_error(error: DomainError) -> tuple[str, int]:
    titles = {401: "Not signed in", 403: "Not allowed", 404: "Not found", 409: "Conflict"}
    return _error_page(error.status, titles.get(error.status, "Request refused"), error.message)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[str, int]:
    return _error_page(error.code or 500, error.name, error.description or "")


@bp.errorhandler(Exception)
def _unexpected(error: Exception) -> tuple[str, int]:
    log.exception("dashboard error: %s", type(error).__name__)
    return _error_page(500, "Internal error", "Something went wrong; the change was not saved.")


# --- sign-in --------------------------------------------------------------------------------


@bp.get("/signin")
def sign_in_form() -> Any:
    if signed_in_admin(db_session())[0] is not None:
        return redirect(url_for(".overview"), 303)
    return render_template("dashboard/signin.html")


@bp.post("/signin")
def sign_in() -> Any:
    try:
        security.sign_in(db_session(), request.form.get("api_key", ""))
    except (Unauthorized, Forbidden) as error:
        return render_template("dashboard/signin.html", error=error.message), error.status
    return redirect(url_for(".overview"), 303)


@bp.post("/signout")
def sign_out() -> Any:
    security.sign_out(db_session())
    flash("Signed out.", "ok")
    return redirect(url_for(".sign_in_form"), 303)


# --- pages ----------------------------------------------------------------------------------


@bp.get("", strict_slashes=False)
def overview() -> str:
    return render_template("dashboard/overview.html", data=q.overview(db_session()))


@bp.get("/users")
def users() -> str:
    return _users_page()


def _users_page(error: str | None = None, form: dict[str, str] | None = None) -> str:
    return render_template("dashboard/users.html", users=q.user_rows(db_session()),
                           error=error, form=form or {})


@bp.get("/users/<int:user_id>")
def user_detail(user_id: int) -> Any:
    session = db_session()
    user = q.get_user(session, user_id)
    if user.role == "analyst":
        return redirect(url_for(".analyst", user_id=user_id))
    return render_template("dashboard/user.html", user=user, keys=q.user_keys(session, user_id))


@bp.get("/analysts/<int:user_id>")
def analyst(user_id: int) -> Any:
    return _analyst_page(user_id)


def _analyst_page(user_id: int, *, budget_error: str | None = None, status: int = 200) -> Any:
    session = db_session()
    user = q.get_user(session, user_id)
    if user.role != "analyst":
        return redirect(url_for(".user_detail", user_id=user_id))
    data = q.analyst_page(session, user_id, forms.log_filter(request.args),
                          forms.page_number(request.args), dt.datetime.now(dt.UTC),
                          keyring=state().keyring)
    return render_template("dashboard/analyst.html", data=data, budget_error=budget_error,
                           form=request.form if budget_error else {}), status


@bp.get("/audit")
def audit() -> str:
    return render_template("dashboard/audit.html",
                           log=q.audit_log(db_session(), forms.page_number(request.args)))


# --- actions --------------------------------------------------------------------------------


@bp.post("/users")
def create_user() -> Any:
    session = db_session()
    try:
        user, key = users_service.create_user(
            session, forms.text(request.form, "name", "Name"),
            forms.text(request.form, "role", "Role"), actor=_admin())
    except DomainError as error:
        session.rollback()
        return _users_page(error.message, dict(request.form)), error.status
    # Rendered, not redirected: the key must never be stored, not even in the signed cookie,
    # so this response is the only place it ever appears (201, no-store).
    return render_template("dashboard/key_created.html", user=user, key=key, new_user=True,
                           user_url=_user_url(user)), 201


@bp.post("/users/<int:user_id>/keys")
def issue_key(user_id: int) -> Any:
    session = db_session()
    user = q.get_user(session, user_id)
    _, key = users_service.issue_key(session, user, actor=_admin())
    return render_template("dashboard/key_created.html", user=user, key=key, new_user=False,
                           user_url=_user_url(user)), 201


@bp.post("/keys/<key_id>/revoke")
def revoke_key(key_id: str) -> Any:
    session = db_session()
    owner_id = q.key_owner(session, key_id)
    if owner_id is None:
        raise NotFound("No such key.")
    users_service.revoke_key(session, key_id, actor=_admin())
    flash(f"Key {key_id} revoked; it stopped working immediately.", "ok")
    return redirect(_user_url(q.get_user(session, owner_id)), 303)


@bp.post("/users/<int:user_id>/disabled")
def set_disabled(user_id: int) -> Any:
    disabled = request.form.get("disabled") == "1"
    # A refusal (disabling yourself) raises: the error page, status 409, the session rolls back.
    user = users_service.set_disabled(db_session(), user_id, disabled, actor=_admin())
    flash(f"{user.name} disabled: their keys and sessions stopped working." if disabled
          else f"{user.name} re-enabled.", "ok")
    return redirect(_user_url(user), 303)


@bp.post("/analysts/<int:user_id>/budgets")
def set_budget(user_id: int) -> Any:
    session = db_session()
    try:
        dataset_id = forms.integer(request.form, "dataset_id", "Dataset")
        epsilon = forms.decimal(request.form, "epsilon", "ε", maximum=forms.MAX_EPSILON)
        delta = forms.decimal(request.form, "delta", "δ", default=Decimal(0))
        # the grant form has these fields; each row's quick "Set" form leaves them as they are
        renewal: Any = budgets_service.UNSET
        cap: Any = budgets_service.UNSET
        if "renewal_period" in request.form:
            renewal = request.form["renewal_period"] or "none"
            renewal = None if renewal == "none" else renewal
        if "lifetime_epsilon_cap" in request.form:
            cap = (forms.decimal(request.form, "lifetime_epsilon_cap", "lifetime ε cap",
                                 maximum=forms.MAX_EPSILON)
                   if request.form["lifetime_epsilon_cap"].strip() else None)
        budgets_service.set_budget(session, _admin(), user_id, dataset_id,
                                   epsilon=epsilon, delta=delta,
                                   max_delta=state().settings.max_budget_delta,
                                   renewal_period=renewal, lifetime_epsilon_cap=cap,
                                   now=state().clock())
    except DomainError as error:
        session.rollback()
        return _analyst_page(user_id, budget_error=_budget_message(error), status=error.status)
    flash(f"Budget on dataset {dataset_id} set to ε {fmt.eps(epsilon)}, δ {fmt.delta(delta)}.", "ok")
    return redirect(url_for(".analyst", user_id=user_id), 303)


def _budget_message(error: DomainError) -> str:
    if error.status == 409 and "epsilon_spent" in error.details:
        spent = error.details
        return (f"A budget cannot be set below what is already spent "
                f"(spent: ε {spent['epsilon_spent']:g}, δ {spent['delta_spent']:g}). "
                "Choose totals at least that large, or freeze the budget to stop spending.")
    return error.message


@bp.post("/analysts/<int:user_id>/budgets/<int:dataset_id>/freeze")
def freeze_budget(user_id: int, dataset_id: int) -> Any:
    session = db_session()
    totals = q.budget_totals(session, user_id, dataset_id)
    if totals is None:
        raise NotFound("No such budget.")
    frozen = request.form.get("frozen") == "1"
    budgets_service.set_budget(session, _admin(), user_id, dataset_id,
                               epsilon=totals[0], delta=totals[1], frozen=frozen,
                               max_delta=state().settings.max_budget_delta)
    flash(f"Budget on dataset {dataset_id} {'frozen' if frozen else 'unfrozen'}.", "ok")
    return redirect(url_for(".analyst", user_id=user_id), 303)


@bp.route("/<path:_path>", methods=["GET", "POST"])
def not_found(_path: str) -> Any:
    # Without this, an unknown /admin/... URL matches no blueprint and gets the API's JSON 404.
    raise NotFound("There is no such dashboard page.")
