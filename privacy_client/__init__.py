"""privacy-api client SDK. Never imports `privacy_api`."""

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
    "DistributedGaussian",
    "InvalidHEPayload",
    "clip_l2",
    "decrypt_aggregate",
    "decrypt_sums",
    "encrypt_update",
    "generate_keys",
]
