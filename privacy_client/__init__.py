"""privacy-api client SDK. Never imports `privacy_api`.

- `Client`: analysts and data owners (queries, estimates, budgets, batched uploads).
- `FederatedClient`: federated clients and federation owners (rounds, encrypted updates).
- `generate_keys`, `encrypt_update`, `decrypt_aggregate`: CKKS secure aggregation helpers.
- Errors: every API failure raises a `PrivacyApiError` subclass carrying status and code.
"""

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
from privacy_client.federated import (
    ContributionMissing,
    FederatedClient,
    ReceiptMismatch,
    VerificationError,
)
from privacy_client.he import (
    PRESETS,
    AggregateSums,
    DistributedGaussian,
    InvalidHEPayload,
    clip_l2,
    decrypt_aggregate,
    decrypt_sums,
    encrypt_update,
    generate_keys,
)

__all__ = [
    "PRESETS",
    "AggregateSums",
    "BudgetExhausted",
    "Client",
    "Conflict",
    "ContributionMissing",
    "DistributedGaussian",
    "FederatedClient",
    "Forbidden",
    "InvalidHEPayload",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PrivacyApiError",
    "RateLimited",
    "ReceiptMismatch",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "UploadFailed",
    "VerificationError",
    "clip_l2",
    "decrypt_aggregate",
    "decrypt_sums",
    "encrypt_update",
    "generate_keys",
]
