"""The application factory (re-exported lazily as `privacy_api.create_app`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from typing import Any

from apiflask import APIFlask
from sqlalchemy.exc import OperationalError, ProgrammingError
from threadpoolctl import threadpool_limits
from werkzeug.middleware.proxy_fix import ProxyFix

from .. import __version__
from ..crypto.keyring import MasterKeyring
from ..http.error_responses import register_error_handlers
from ..http.memory import limit_malloc_arenas
from ..http.strict_json import StrictJSONProvider
from ..runtime.config import ConfigError, default_instance_path, load_settings
from ..runtime.state import AppState
from ..storage.columns import ColumnCache
from ..storage.db import Database
from ..storage.instance_dir import shared_cache_dir

log = logging.getLogger(__name__)


def _derived_secret(master_key: bytes) -> bytes:
    # Every worker must sign sessions alike; derive from the master key instead of random.
    return hmac.new(master_key, b"privacy-api session signing v1", hashlib.sha256).digest()


def _check_master_keys(db: Database, keyring: MasterKeyring) -> None:
    """Refuse to start (ConfigError) when the master keys cannot unwrap the stored data keys."""
    from ..domain.errors import MasterKeyMismatch
    from ..services.datasets import verify_master_keyring

    try:
        with db.engine.connect() as conn:
            verify_master_keyring(conn, keyring)
    except MasterKeyMismatch as exc:
        db.dispose()
        raise ConfigError(exc.message) from None
    except (OperationalError, ProgrammingError) as exc:
        # Not migrated yet (no such table) or the database is down: nothing to check against
        # now; the first new data key is checked before it is wrapped (services.datasets).
        log.warning("master keys not checked at start-up: %s", type(exc).__name__)


def create_app(config: dict[str, Any] | None = None, *,
               clock: Callable[[], dt.datetime] | None = None) -> APIFlask:
    """Application factory. `config` overrides settings fields (tests pass database_url etc.);
    `clock` replaces the wall clock the ledger reads (tests cross renewal periods with it)."""
    # docs_path=None: APIFlask's /docs loads Swagger UI from a CDN; api_docs serves a vendored copy.
    app = APIFlask("privacy_api", title="privacy-api", version=__version__,
                   instance_path=default_instance_path(), docs_path=None)
    os.makedirs(app.instance_path, exist_ok=True)
    settings = load_settings(app.instance_path, config)
    app.config.update(
        # The largest body any route takes; each route narrows it (privacy_api.http.work_limits).
        MAX_CONTENT_LENGTH=max(settings.max_content_length, settings.max_update_bytes,
                               settings.max_context_bytes * 4 // 3 + settings.max_json_bytes),
        SECRET_KEY=settings.secret_key or _derived_secret(settings.master_keys[0]),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        JSON_SORT_KEYS=False,
        # APIFlask 3 defaults to OpenAPI 3.1, where JSON Schema's "integer" admits 1.0; our
        # marshmallow Integer fields refuse it. The published contract stays 3.0.3, which says
        # what the validators do (tests/hardening/test_fuzz.py sends only schema-valid bodies).
        OPENAPI_VERSION="3.0.3",
        AUTH_ERROR_STATUS_CODE=401,
        VALIDATION_ERROR_STATUS_CODE=422,
        DESCRIPTION="Differentially private aggregates, encrypted storage and HE federated "
        "aggregation. Errors: `{code, message, details}`.",
    )
    app.json = StrictJSONProvider(app)  # NaN/Infinity are a 500, never an invalid body
    app.security_schemes = {"ApiKeyAuth": {"type": "http", "scheme": "bearer"}}
    # One BLAS thread per process. A query's dot products are memory-bound and take ~1 ms;
    # OpenBLAS's extra threads spin-wait after each call, burning a core (measured: ~14 ms
    # of CPU per mean query on 2 cores) that the other requests and workers need.
    threadpool_limits(1, user_api="blas")
    limit_malloc_arenas()  # before the server's request threads exist (http/memory.py)
    db = Database(settings.database_url)
    cache = ColumnCache(db.engine, settings.database_url, max_bytes=settings.cache_max_bytes,
                        workers=settings.decrypt_workers,
                        pool_idle_s=settings.decrypt_pool_idle_s,
                        shared_dir=shared_cache_dir(settings.shared_cache_dir,
                                                    settings.database_url))
    keyring = MasterKeyring(settings.master_keys)
    _check_master_keys(db, keyring)
    app.extensions["privacy_api"] = AppState(settings, db, keyring, cache,
                                             **({"wall_clock": clock} if clock else {}))

    from ..api import register_blueprints
    from ..api_docs import init_api_docs
    from ..dashboard import init_dashboard
    from ..http.json_bodies import init_json_bodies
    from ..http.limits import init_rate_limits
    from ..http.metrics import init_metrics
    from ..http.openapi import init_openapi
    from ..http.security_headers import init_strict_transport_security
    from ..http.session import init_request_session
    from ..http.work_limits import init_work_limits
    from .logging_setup import configure_logging, init_request_logging

    configure_logging()
    # First: their hooks must see every request, including ones refused by later hooks.
    init_request_logging(app)
    init_metrics(app)
    init_openapi(app)
    register_error_handlers(app)
    init_json_bodies()
    init_request_session(app)
    register_blueprints(app)
    init_dashboard(app)
    init_api_docs(app, enabled=settings.docs_enabled)
    init_strict_transport_security(app, settings.hsts_max_age)
    init_rate_limits(app, settings)
    # After the rate limiter's hook: a request refused by a limit takes no slot.
    init_work_limits(app, settings)
    if settings.trusted_proxies:
        # Only the last N hops of X-Forwarded-For (those our own proxies appended) are
        # believed; a client's own X-Forwarded-For entries lie further left and are ignored.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)
    return app
