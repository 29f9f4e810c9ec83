"""privacy-api client SDK. Never imports `privacy_api`.

- `Client`: analysts and data owners (queries, estimates, budgets, batched uploads).
  Needs only httpx, numpy and tqdm; DataFrames (`Client.sql`, `as_frame=True`) need the
  `[pandas]` extra.
- `FederatedClient`: federated clients and federation owners (rounds, encrypted updates).
- `generate_keys`, `encrypt_update`, `decrypt_aggregate`: CKKS secure aggregation helpers.
  These and `FederatedClient` need the `[federated]` extra (TenSEAL, privacy-secagg); they are
  imported on first use (PEP 562), so `import privacy_client` works without it, and using one
  without the extra raises an ImportError naming `pip install 'privacy-client[federated]'`.
- Errors: every API failure raises a `PrivacyApiError` subclass carrying status and code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from privacy_client.client import Client
from privacy_client.errors import (
    BudgetExhausted,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PrivacyApiError,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    UploadFailed,
)

if TYPE_CHECKING:  # the lazy names, for type checkers (`X as X`: an explicit re-export)
    from privacy_client.federated import ContributionMissing as ContributionMissing
    from privacy_client.federated import FederatedClient as FederatedClient
    from privacy_client.federated import ReceiptMismatch as ReceiptMismatch
    from privacy_client.federated import VerificationError as VerificationError
    from privacy_client.he import PRESETS as PRESETS
    from privacy_client.he import AggregateSums as AggregateSums
    from privacy_client.he import DistributedGaussian as DistributedGaussian
    from privacy_client.he import InvalidHEPayload as InvalidHEPayload
    from privacy_client.he import clip_l2 as clip_l2
    from privacy_client.he import decrypt_aggregate as decrypt_aggregate
    from privacy_client.he import decrypt_sums as decrypt_sums
    from privacy_client.he import encrypt_update as encrypt_update
    from privacy_client.he import generate_keys as generate_keys

# name -> the submodule defining it; imported by `__getattr__` on first access.
_LAZY: dict[str, str] = {
    **dict.fromkeys(["ContributionMissing", "FederatedClient", "ReceiptMismatch",
                     "VerificationError"], "privacy_client.federated"),
    **dict.fromkeys(["PRESETS", "AggregateSums", "DistributedGaussian", "InvalidHEPayload",
                     "clip_l2", "decrypt_aggregate", "decrypt_sums", "encrypt_update",
                     "generate_keys"], "privacy_client.he"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'privacy_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


# The core names only: `from privacy_client import *` must work without the extras.
__all__ = [
    "BudgetExhausted",
    "Client",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PrivacyApiError",
    "RateLimited",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "UploadFailed",
]
