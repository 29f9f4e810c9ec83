"""Per-API-key rate limits (Flask-Limiter), shared across workers through Redis.

The limit is ``PRIVACY_API_RATE_LIMIT`` (limits syntax: ``"600/minute"``,
``"20/second;600/minute"``). Unset means no limit in development and ``600/minute`` in
production; ``off`` disables it explicitly. Counts live in Redis when
``PRIVACY_API_REDIS_URL`` is set (every worker and host shares them); otherwise in memory,
which is per process: N gunicorn workers then allow up to N times the limit.

A request is counted against the bearer token it carries (``pa_<key_id>_...``): the bucket
is the key id plus a digest of the whole token, so all requests made with one key share one
bucket whatever worker or address they come from, while forged tokens naming someone's key
id land in buckets of their own and cannot spend that key's allowance. This needs no
database hit (the limit is checked before authentication). Requests without such a token
are counted per remote address.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time

from flask import Flask, Response, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many

from . import metrics
from .auth import KEY_PREFIX
from .config import ConfigError, Settings
from .errors import error_body

log = logging.getLogger(__name__)

PRODUCTION_DEFAULT = "600/minute"
_KEY_ID = re.compile(r"[0-9a-f]{16}")


def rate_limit_key() -> str:
    """The bucket a request counts against: ``key:<key id>:<token digest>`` or
    ``addr:<remote address>``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        parts = token.strip().split("_", 2)
        if len(parts) == 3 and parts[0] == KEY_PREFIX and _KEY_ID.fullmatch(parts[1]):
            return f"key:{parts[1]}:{hashlib.sha256(token.strip().encode()).hexdigest()[:16]}"
    return f"addr:{request.remote_addr or 'unknown'}"


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


def init_rate_limits(app: Flask, settings: Settings) -> Limiter | None:
    """Install the per-key limit on every route (an authorised /metrics scrape excepted)."""
    limit = effective_limit(settings)
    if limit is None:
        log.debug("rate limiting is off (set PRIVACY_API_RATE_LIMIT to enable it)")
        return None
    if settings.redis_url:
        storage = settings.redis_url
    else:
        storage = "memory://"
        log.warning("rate limit %s is counted in memory, separately in each process; set "
                    "PRIVACY_API_REDIS_URL to share it across workers", limit)
    limiter = Limiter(
        rate_limit_key,
        app=app,
        # One bucket per key across all routes (default_limits would count each route apart).
        application_limits=[limit],
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
