"""Fair rate limits (Flask-Limiter), shared across workers through Redis.

Every request counts against exactly one bucket:

- ``key:<key id>`` - a request whose bearer key is *real* (verified against the database, the
  same lookup the view's auth check then reuses): one allowance per API key across all routes,
  whatever worker or address it comes from. Limit ``PRIVACY_API_RATE_LIMIT``.
- ``session:<key id>:<sign-in time>`` - a signed-in dashboard page. The session cookie is
  signed, so it cannot be forged; each sign-in is its own bucket. Same limit as a key.
- ``signin:<address>`` - the dashboard's sign-in form posts. Small:
  ``PRIVACY_API_SIGNIN_RATE_LIMIT`` (default ``10/minute``).
- ``anon:<address>`` - everything else: no key, a malformed key, or a forged or revoked one
  (so forged ``pa_...`` tokens cannot escape the per-address limit). Small:
  ``PRIVACY_API_ANON_RATE_LIMIT`` (default ``60/minute``).

The address is the peer's, or the one a trusted proxy reports: ``PRIVACY_API_TRUSTED_PROXIES``
proxies' worth of ``X-Forwarded-For`` is honoured (Werkzeug's ProxyFix, see create_app) and
no more, so a client cannot pick its own address by sending the header.

``PRIVACY_API_RATE_LIMIT`` is in limits syntax (``"600/minute"``, ``"20/second;600/minute"``).
Unset means no limits at all in development and ``600/minute`` in production; ``off``
disables them. Counts live in Redis when ``PRIVACY_API_REDIS_URL`` is set; otherwise in memory,
per process: N gunicorn workers then allow up to N times each limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from flask import Flask, Response, g, request
from flask import session as cookie_session
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many
from sqlalchemy.exc import SQLAlchemyError

from ..runtime.config import ConfigError, Settings
from . import metrics
from .auth import bearer_user
from .error_responses import error_body

log = logging.getLogger(__name__)

PRODUCTION_DEFAULT = "600/minute"
ANON_DEFAULT = "60/minute"
SIGNIN_DEFAULT = "10/minute"
# the dashboard's cookie fields (privacy_api.dashboard.security); not imported, to keep this
# module free of the dashboard package
_SESSION_KEY_ID = "admin_key_id"
_SESSION_STARTED = "admin_signed_in_at"


def request_bucket() -> tuple[str, str]:
    """(kind, identity) of the bucket this request counts against; see the module docstring."""
    cached: tuple[str, str] | None = g.get("rate_bucket")
    if cached is not None:
        return cached
    address = request.remote_addr or "unknown"
    bucket = ("anon", address)
    if request.endpoint == "dashboard.sign_in" and request.method == "POST":
        bucket = ("signin", address)
    elif request.headers.get("Authorization"):
        try:
            user = bearer_user()
        except SQLAlchemyError:
            # The database is down: count it as anonymous; the view's own auth check will
            # meet the same error and answer 503.
            g.pop("bearer_user", None)
            user = None
        if user is not None:
            bucket = ("key", str(g.bearer_token).split("_")[1])
    elif request.blueprint == "dashboard" and request.cookies:
        key_id = cookie_session.get(_SESSION_KEY_ID)
        started = cookie_session.get(_SESSION_STARTED)
        if isinstance(key_id, str) and isinstance(started, int):
            bucket = ("session", f"{key_id}:{started}")
    g.rate_bucket = bucket
    return bucket


def rate_limit_key() -> str:
    kind, identity = request_bucket()
    return f"{kind}:{identity}"


def effective_limit(settings: Settings) -> str | None:
    raw = settings.rate_limit
    if raw is None:
        return PRODUCTION_DEFAULT if settings.environment == "production" else None
    if raw.strip().lower() in ("off", "none", "0"):
        return None
    try:
        if not parse_many(raw):
            raise ValueError(raw)
    except ValueError as exc:
        raise ConfigError(f"PRIVACY_API_RATE_LIMIT {raw!r} is not a rate limit like '600/minute'") from exc
    return raw


def _checked(raw: str, name: str) -> str:
    try:
        if not parse_many(raw):
            raise ValueError(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} {raw!r} is not a rate limit like '60/minute'") from exc
    return raw


def bucket_limits(settings: Settings) -> dict[str, str] | None:
    """The limit of each bucket kind, or None when rate limiting is off."""
    limit = effective_limit(settings)
    if limit is None:
        return None
    anon = _checked(settings.anon_rate_limit or ANON_DEFAULT, "PRIVACY_API_ANON_RATE_LIMIT")
    signin = _checked(settings.signin_rate_limit or SIGNIN_DEFAULT, "PRIVACY_API_SIGNIN_RATE_LIMIT")
    return {"key": limit, "session": limit, "anon": anon, "signin": signin}


def init_rate_limits(app: Flask, settings: Settings) -> Limiter | None:
    """Install the bucketed limits on every route (an authorised /metrics scrape excepted)."""
    limits_by_kind = bucket_limits(settings)
    if limits_by_kind is None:
        log.debug("rate limiting is off (set PRIVACY_API_RATE_LIMIT to enable it)")
        return None
    limit = limits_by_kind["key"]
    if settings.redis_url:
        storage = settings.redis_url
    else:
        storage = "memory://"
        log.warning("rate limit %s is counted in memory, separately in each process; set "
                    "PRIVACY_API_REDIS_URL to share it across workers", limit)

    def limit_for_request() -> str:
        return limits_by_kind[request_bucket()[0]]

    provider: Callable[[], str] = limit_for_request
    limiter = Limiter(
        rate_limit_key,
        app=app,
        # One bucket per key across all routes (default_limits would count each route apart).
        application_limits=[provider],
        storage_uri=storage,
        strategy="fixed-window",
        key_prefix="privacy-api",
        headers_enabled=False,
        # If Redis goes away, keep serving with per-process counts rather than failing requests.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    # Only a scrape with the metrics token is exempt; guesses at it are counted like any request.
    limiter.request_filter(metrics.scrape_authorised)
    # Its breach lines name the bucket (a key id); our access line already records the 429.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(error: RateLimitExceeded) -> Response:
        metrics.rate_limited()
        current = limiter.current_limit
        retry_after = 1
        if current is not None:
            retry_after = max(1, math.ceil(current.reset_at - time.time()))
        resp = error_body(429, "rate_limited", f"rate limit exceeded ({error.description})",
                          {"limit": error.description, "retry_after": retry_after})
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    return limiter
