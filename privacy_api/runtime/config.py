"""Settings read from the environment (``PRIVACY_API_*``); bad secrets fail at start-up."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet


class ConfigError(RuntimeError):
    """Raised at start-up when a setting is missing or unusable."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    master_keys: tuple[bytes, ...]
    environment: str = "development"
    max_content_length: int = 64 * 1024 * 1024
    # Bound on decrypted columns kept in memory (bytes): host-wide for the shared copies,
    # per process when sharing is off.
    cache_max_bytes: int = 2 * 1024 * 1024 * 1024
    # RAM-backed (tmpfs) directory under which the instance's workers share one decrypted copy
    # of each dataset version ("off": each worker keeps its own).
    shared_cache_dir: str = "/dev/shm"
    # Largest epsilon one query may ask for; admins can raise it via env.
    max_query_epsilon: Decimal = Decimal("10")
    # Largest delta a budget may be granted: a budget's delta is a probability of total
    # failure (e.g. releasing a record), so it stays small; admins can raise it via env.
    max_budget_delta: Decimal = Decimal("1e-3")
    decrypt_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # The decryption pool's processes exit once idle this long (seconds): a pool holds
    # ~40 MiB per process while alive (docs/scaling.md).
    decrypt_pool_idle_s: float = 5.0
    rate_limit: str | None = None
    redis_url: str | None = None
    max_update_bytes: int = 64 * 1024 * 1024
    max_context_bytes: int = 8 * 1024 * 1024
    secret_key: str | None = None
    # Edge settings (issue 12): /docs on or off, a forced Secure cookie, HSTS max-age (0 = off).
    docs_enabled: bool = True
    session_cookie_secure: bool = False
    hsts_max_age: int = 0
    # --- the edge (issue 12): fair limits and bounded work per request
    anon_rate_limit: str | None = None
    signin_rate_limit: str | None = None
    # How many reverse proxies in front append to X-Forwarded-For (and set X-Forwarded-Proto);
    # 0 trusts neither header.
    trusted_proxies: int = 0
    # Body cap of every route that takes JSON or a form (uploads and updates have their own).
    max_json_bytes: int = 64 * 1024
    # Queries, estimates and uploads one key may run at once, per process.
    max_concurrent_expensive: int = 2

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _parse_keys(raw: str, source: str) -> tuple[bytes, ...]:
    keys = tuple(k.strip().encode() for k in raw.replace("\n", ",").split(",") if k.strip())
    if not keys:
        raise ConfigError(f"{source} holds no keys")
    for i, key in enumerate(keys):
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: key #{i + 1} is not a valid Fernet key") from exc
    return keys


def read_key_file(path: Path) -> tuple[bytes, ...]:
    if not path.exists():
        raise ConfigError(f"master key file {path} does not exist")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"master key file {path} must not be readable by others (mode 0600)")
    return _parse_keys(path.read_text(), str(path))


def create_dev_key_file(path: Path) -> None:
    """Write a fresh master key readable only by the owner (development only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(Fernet.generate_key().decode() + "\n")


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ConfigError(f"{name} must be on or off, not {raw!r}")
    return value in _TRUE


def _non_negative_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name} must be a whole number of seconds >= 0, not {raw!r}")
    return value


def default_instance_path() -> str:
    """Where the SQLite file and the development key live: $PRIVACY_API_INSTANCE_PATH or ./instance."""
    return os.environ.get("PRIVACY_API_INSTANCE_PATH") or str(Path.cwd() / "instance")


def _int_setting(env: Any, name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} {raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}")
    return value


def load_settings(instance_path: str, overrides: dict[str, Any] | None = None) -> Settings:
    env = os.environ
    overrides = dict(overrides or {})
    environment = overrides.pop("environment", env.get("PRIVACY_API_ENV", "development"))
    url = overrides.pop("database_url", None) or env.get("PRIVACY_API_DATABASE_URL")
    if not url:
        url = f"sqlite:///{Path(instance_path) / 'privacy_api.sqlite3'}"
    keys: tuple[bytes, ...]
    if "master_keys" in overrides:
        raw = overrides.pop("master_keys")
        keys = _parse_keys(raw if isinstance(raw, str) else ",".join(
            k.decode() if isinstance(k, bytes) else k for k in raw), "master_keys")
    elif env.get("PRIVACY_API_MASTER_KEYS"):
        keys = _parse_keys(env["PRIVACY_API_MASTER_KEYS"], "PRIVACY_API_MASTER_KEYS")
    else:
        key_file = env.get("PRIVACY_API_MASTER_KEY_FILE")
        if key_file:
            keys = read_key_file(Path(key_file))
        else:
            default = Path(instance_path) / "master.key"
            if environment == "production" or not default.exists():
                raise ConfigError(
                    "no master keys: set PRIVACY_API_MASTER_KEYS or PRIVACY_API_MASTER_KEY_FILE"
                    + ("" if environment == "production" else " (or run `privacy-api init-dev-key`)")
                )
            keys = read_key_file(default)
    try:
        max_eps = Decimal(env.get("PRIVACY_API_MAX_QUERY_EPSILON", "10"))
    except InvalidOperation as exc:
        raise ConfigError("PRIVACY_API_MAX_QUERY_EPSILON is not a number") from exc
    try:
        max_budget_delta = Decimal(env.get("PRIVACY_API_MAX_BUDGET_DELTA", "1e-3"))
    except InvalidOperation as exc:
        raise ConfigError("PRIVACY_API_MAX_BUDGET_DELTA is not a number") from exc
    if not (max_budget_delta.is_finite() and 0 <= max_budget_delta < 1):
        raise ConfigError("PRIVACY_API_MAX_BUDGET_DELTA must satisfy 0 <= delta < 1")
    settings = Settings(
        database_url=url,
        master_keys=keys,
        environment=environment,
        max_content_length=int(env.get("PRIVACY_API_MAX_CONTENT_LENGTH", 64 * 1024 * 1024)),
        cache_max_bytes=int(env.get("PRIVACY_API_CACHE_MAX_BYTES", 2 * 1024**3)),
        shared_cache_dir=env.get("PRIVACY_API_SHARED_CACHE_DIR", "/dev/shm"),
        decrypt_pool_idle_s=float(env.get("PRIVACY_API_DECRYPT_POOL_IDLE_S", 5.0)),
        max_query_epsilon=max_eps,
        max_budget_delta=max_budget_delta,
        rate_limit=env.get("PRIVACY_API_RATE_LIMIT") or None,
        redis_url=env.get("PRIVACY_API_REDIS_URL") or None,
        secret_key=env.get("PRIVACY_API_SECRET_KEY") or None,
        docs_enabled=_flag("PRIVACY_API_DOCS", True),
        session_cookie_secure=_flag("PRIVACY_API_SESSION_COOKIE_SECURE", False),
        hsts_max_age=_non_negative_int("PRIVACY_API_HSTS_MAX_AGE", 0),
        anon_rate_limit=env.get("PRIVACY_API_ANON_RATE_LIMIT") or None,
        signin_rate_limit=env.get("PRIVACY_API_SIGNIN_RATE_LIMIT") or None,
        trusted_proxies=_int_setting(env, "PRIVACY_API_TRUSTED_PROXIES", 0, minimum=0),
        max_json_bytes=_int_setting(env, "PRIVACY_API_MAX_JSON_BYTES", 64 * 1024, minimum=1024),
        max_concurrent_expensive=_int_setting(env, "PRIVACY_API_MAX_CONCURRENT_EXPENSIVE", 2,
                                              minimum=1),
    )
    if environment == "production" and not settings.secret_key:
        raise ConfigError("PRIVACY_API_SECRET_KEY is required in production")
    return replace(settings, **overrides)
