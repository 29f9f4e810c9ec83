"""The optional extras: which modules each one brings, and the error that names the missing one."""

from __future__ import annotations

# The top-level modules each extra installs (as `ImportError.name` reports them).
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "pandas": frozenset({"pandas"}),
    "federated": frozenset({"tenseal", "privacy_secagg", "cryptography", "Crypto"}),
}


def require_extra(extra: str, what: str, exc: ImportError) -> None:
    """Call in an `except ImportError`: if the missing module is one `extra` installs, raise
    an ImportError naming the pip command; otherwise return, and the caller re-raises `exc`
    (a broken installation is not a missing extra)."""
    name = (exc.name or "").partition(".")[0]
    if name in EXTRA_MODULES[extra]:
        raise ImportError(f"{what}: install the [{extra}] extra ({name} is not installed): "
                          f"pip install 'privacy-client[{extra}]'", name=exc.name) from exc
