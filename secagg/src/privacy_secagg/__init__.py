"""Secure-aggregation primitives: double masking with dropout recovery (Bonawitz et al., CCS 2017).

One implementation for both sides: the SDK masks its ciphertext coefficients and shares its
round secrets with it; the server (``import privacy_secagg as secagg``) reconstructs the
secrets of a round from the survivors' shares and regenerates the masks to remove. Pure: only
`cryptography` (X25519, Ed25519, HKDF-SHA256, AES-GCM, ChaCha20), PyCryptodome's Shamir secret
sharing and numpy. No HTTP, no TenSEAL, nothing from `privacy_api`.

How the pieces fit (one round, clients identified by their integer ids):

* **advertise**: each client makes `RoundSecrets` (two X25519 keys, ``c`` to encrypt shares to
  peers and ``s`` for pairwise masks, plus a 32-byte ``self_seed``) and signs
  `advertisement_message` with its long-term `IdentityKey` (Ed25519). Peers check the signature
  against the identity key they pinned, so a relaying server cannot substitute its own keys.
* **share**: `share_secrets` Shamir-splits (t of n) ``self_seed`` and the ``s`` private key and
  encrypts one share for each peer (AES-GCM, key from X25519(c) + HKDF, bound to the round,
  sender and recipient). The server relays blobs it cannot open.
* **collect**: `client_mask` is the self mask plus the pairwise masks, uniform modulo each
  ciphertext prime. The pairwise masks cancel in the sum over every client that shared.
* **unmask**: each survivor first signs the survivor and dropped sets it is shown
  (`consistency_message`) and goes on only once `verify_consistency` sees t survivors'
  signatures on exactly those sets, so the server cannot show different sets to different
  clients. Then for each survivor the others reveal its self-seed share; for each dropped
  client its s-key share; never both for one client (revealing both for a live client would
  let the server strip all of its masks). `reconstruct` then `removal_mask` give what the
  server subtracts from the sum of survivors' uploads so only the plain ciphertext sum remains.

Why each mask is uniform: `expand_mask` draws from a ChaCha20 keystream by rejection sampling,
so every residue modulo q is exactly equally likely given a uniformly random key; adding a
uniform mask mod q makes an upload (or any partial sum missing one honest client's self mask)
independent of the update, information-theoretically given the PRG.

Every failed check raises `SecAggError` with a message naming the check.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "PROTOCOL_VERSION",
    "IdentityKey",
    "RoundSecrets",
    "SecAggError",
    "Share",
    "TooFewSignatures",
    "advertisement_message",
    "check_threshold",
    "consistency_message",
    "client_mask",
    "expand_mask",
    "fingerprint",
    "hkdf_sha256",
    "open_share",
    "pairwise_seed",
    "reconstruct",
    "reconstruct_s_private",
    "removal_mask",
    "round_binding",
    "share_index",
    "share_secrets",
    "verify_consistency",
    "verify_signature",
    "x25519_public",
    "x25519_shared",
]

PROTOCOL_VERSION: Final = 1
MIN_PARTICIPANTS: Final = 3
KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
_SHARE_HALF: Final = 16  # PyCryptodome's Shamir shares 16-byte secrets (GF(2^128))
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_SHARE_PLAIN = struct.Struct(f"<BI{KEY_BYTES}s{KEY_BYTES}s")  # version, index, seed share, s share
SHARE_BLOB_BYTES: Final = _NONCE_BYTES + _SHARE_PLAIN.size + _TAG_BYTES
_SECRETS = struct.Struct(f"<B{KEY_BYTES}s{KEY_BYTES}s{KEY_BYTES}s")
_MAX_CLIENT_ID: Final = 2**63 - 1
_MAX_MODULUS: Final = 2**62  # masks are added as uint64: two residues must not overflow

# Domain-separation labels: a key or message made for one purpose is useless for another.
_BINDING_TAG: Final = b"privacy-api/secagg/round"
_ADVERT_TAG: Final = b"privacy-api/secagg/advertise"
_CONSISTENCY_TAG: Final = b"privacy-api/secagg/consistency"
_PAIR_INFO: Final = b"privacy-api/secagg/pairwise-seed"
_SHARE_KEY_INFO: Final = b"privacy-api/secagg/share-key"
_SHARE_AD_TAG: Final = b"privacy-api/secagg/share"
_MASK_INFO: Final = b"privacy-api/secagg/mask"
SELF_MASK_LABEL: Final = b"self"
PAIR_MASK_LABEL: Final = b"pair"

Mask = npt.NDArray[np.uint64]


class SecAggError(ValueError):
    """A secure-aggregation check failed; the message names the check."""


class TooFewSignatures(SecAggError):
    """`verify_consistency`: every signature so far is valid, but fewer than t survivors have
    signed yet (wait and ask again, unlike any other SecAggError)."""


# --------------------------------------------------------------------------------------------
# Small checked encodings


def _check_bytes(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise SecAggError(f"{what} must be bytes")
    raw = bytes(value)
    if len(raw) != length:
        raise SecAggError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def _check_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_CLIENT_ID:
        raise SecAggError(f"{what} must be an integer in [0, 2**63)")
    return value


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def _lp(value: bytes) -> bytes:
    """Length-prefixed bytes: concatenations of these are unambiguous."""
    return struct.pack(">I", len(value)) + value


def round_binding(federation_id: int, round_id: int) -> bytes:
    """Canonical bytes naming (protocol version, federation, round). Every signature, key
    derivation and share encryption of a round includes them, so nothing made for one round
    (or federation, or protocol version) is accepted in another."""
    _check_id(federation_id, "federation id")
    _check_id(round_id, "round id")
    return _BINDING_TAG + struct.pack(">HQQ", PROTOCOL_VERSION, federation_id, round_id)


def _check_binding(binding: object) -> bytes:
    if not isinstance(binding, bytes | bytearray) or not bytes(binding).startswith(_BINDING_TAG):
        raise SecAggError("round binding must come from round_binding()")
    raw = bytes(binding)
    if len(raw) != len(_BINDING_TAG) + 18:
        raise SecAggError("round binding has the wrong length")
    return raw


def hkdf_sha256(ikm: bytes, *, info: bytes, length: int = KEY_BYTES, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869), the one key-derivation step every key here goes through."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(bytes(ikm))


# --------------------------------------------------------------------------------------------
# Identity keys (Ed25519)


class IdentityKey:
    """A client's long-term Ed25519 identity key. Its public half is registered at enrolment;
    peers pin it and check every round advertisement's signature against it."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> IdentityKey:
        return cls(Ed25519PrivateKey.from_private_bytes(_check_bytes(data, KEY_BYTES, "identity key")))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes_raw()

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(bytes(message))


def verify_signature(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise SecAggError unless `signature` is `public`'s Ed25519 signature of `message`."""
    key = Ed25519PublicKey.from_public_bytes(_check_bytes(public, KEY_BYTES, "identity public key"))
    try:
        key.verify(_check_bytes(signature, SIGNATURE_BYTES, "signature"), bytes(message))
    except InvalidSignature:
        raise SecAggError("signature check failed: not signed by the pinned identity key") from None


def fingerprint(public: bytes) -> str:
    """SHA-256 of an identity public key as 16 groups of 4 hex digits, for reading aloud."""
    digest = hashlib.sha256(_check_bytes(public, KEY_BYTES, "identity public key")).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


# --------------------------------------------------------------------------------------------
# Round secrets and key agreement (X25519)


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (RFC 7748)."""
    key = X25519PrivateKey.from_private_bytes(_check_bytes(private, KEY_BYTES, "X25519 private key"))
    return key.public_key().public_bytes_raw()


def x25519_shared(private: bytes, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret (RFC 7748); refuses low-order peer keys (all-zero output)."""
    key = X25519PrivateKey.from_private_bytes(_check_bytes(private, KEY_BYTES, "X25519 private key"))
    peer = X25519PublicKey.from_public_bytes(_check_bytes(peer_public, KEY_BYTES, "X25519 public key"))
    try:
        return key.exchange(peer)
    except ValueError:
        raise SecAggError("key agreement check failed: peer key is a low-order point") from None


@dataclass(frozen=True)
class RoundSecrets:
    """One client's secrets for one round. `c_private` decrypts the shares peers send it;
    `s_private` agrees the pairwise mask seeds; `self_seed` seeds the self mask. Fresh per
    round: never reuse them (a reused s key would let the server cancel masks across rounds)."""

    c_private: bytes
    s_private: bytes
    self_seed: bytes

    def __post_init__(self) -> None:
        _check_bytes(self.c_private, KEY_BYTES, "c private key")
        _check_bytes(self.s_private, KEY_BYTES, "s private key")
        _check_bytes(self.self_seed, KEY_BYTES, "self seed")

    @classmethod
    def generate(cls) -> RoundSecrets:
        def raw(key: X25519PrivateKey) -> bytes:
            return key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )

        return cls(raw(X25519PrivateKey.generate()), raw(X25519PrivateKey.generate()), os.urandom(KEY_BYTES))

    @property
    def c_public(self) -> bytes:
        return x25519_public(self.c_private)

    @property
    def s_public(self) -> bytes:
        return x25519_public(self.s_private)

    def to_bytes(self) -> bytes:
        """For the client's own local persistence (a 0600 file): never send these bytes."""
        return _SECRETS.pack(PROTOCOL_VERSION, self.c_private, self.s_private, self.self_seed)

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundSecrets:
        raw = _check_bytes(data, _SECRETS.size, "stored round secrets")
        version, c_private, s_private, self_seed = _SECRETS.unpack(raw)
        if version != PROTOCOL_VERSION:
            raise SecAggError(f"stored round secrets have protocol version {version}")
        return cls(c_private, s_private, self_seed)


def advertisement_message(binding: bytes, client_id: int, c_public: bytes, s_public: bytes) -> bytes:
    """The canonical bytes a client signs to advertise its round keys."""
    return (
        _ADVERT_TAG
        + _lp(_check_binding(binding))
        + _u64(_check_id(client_id, "client id"))
        + _check_bytes(c_public, KEY_BYTES, "c public key")
        + _check_bytes(s_public, KEY_BYTES, "s public key")
    )


def consistency_message(binding: bytes, survivors: Collection[int], dropped: Collection[int]) -> bytes:
    """The canonical bytes a survivor signs before it reveals any unmasking share: the exact
    survivor and dropped sets the server named (Bonawitz et al.'s consistency check). A client
    reveals only after seeing at least t valid signatures on the same bytes from distinct
    survivors, so a server cannot show different sets to different clients (t > n / 2)."""
    living = sorted({_check_id(c, "client id") for c in survivors})
    gone = sorted({_check_id(c, "client id") for c in dropped})
    if set(living) & set(gone):
        raise SecAggError("consistency check failed: a client is named both survivor and dropped")
    return (
        _CONSISTENCY_TAG
        + _lp(_check_binding(binding))
        + _lp(b"".join(_u64(c) for c in living))
        + _lp(b"".join(_u64(c) for c in gone))
    )


def verify_consistency(
    binding: bytes,
    survivors: Collection[int],
    dropped: Collection[int],
    signatures: Mapping[int, bytes],
    pinned: Mapping[int, bytes],
    threshold: int,
) -> None:
    """Before revealing any unmasking share: check that at least `threshold` distinct
    survivors signed exactly these sets (`consistency_message`) with their pinned identity
    keys. Signatures by non-survivors are ignored, and one that does not verify is an error
    (the server relayed something no survivor signed). Raises SecAggError."""
    living = {_check_id(c, "client id") for c in survivors}
    message = consistency_message(binding, survivors, dropped)
    valid = 0
    for signer, signature in sorted(signatures.items()):
        if signer not in living:
            continue
        if signer not in pinned:
            raise SecAggError(f"consistency check failed: survivor {signer} has no pinned identity key")
        try:
            verify_signature(pinned[signer], message, signature)
        except SecAggError:
            raise SecAggError(
                f"consistency check failed: survivor {signer}'s signature is not on these "
                "survivor and dropped sets"
            ) from None
        valid += 1
    if valid < threshold:
        raise TooFewSignatures(
            f"consistency check failed: {valid} survivors signed these sets; {threshold} needed"
        )


def _pair_info(binding: bytes, a: int, b: int) -> bytes:
    low, high = sorted((_check_id(a, "client id"), _check_id(b, "client id")))
    if low == high:
        raise SecAggError("pairwise seed check failed: a client has no pairwise seed with itself")
    return _lp(_check_binding(binding)) + _u64(low) + _u64(high)


def pairwise_seed(s_private: bytes, peer_s_public: bytes, binding: bytes, a: int, b: int) -> bytes:
    """The 32-byte mask seed clients `a` and `b` share: HKDF(X25519(s_a, s_b)), bound to the
    round and the (unordered) pair, so either side (or the server, after reconstructing one
    side's s key) derives the same seed."""
    info = _PAIR_INFO + _pair_info(binding, a, b)
    return hkdf_sha256(x25519_shared(s_private, peer_s_public), info=info)


# --------------------------------------------------------------------------------------------
# Shamir shares of the round secrets, encrypted to each peer


@dataclass(frozen=True)
class Share:
    """One client's share of one peer's secrets: Shamir x-coordinate `index` (>= 1) and the
    32-byte shares of the peer's self seed and of its s private key."""

    index: int
    self_seed_share: bytes
    s_key_share: bytes


def share_index(participants: Collection[int], client_id: int) -> int:
    """The Shamir x-coordinate of `client_id`: its 1-based rank among the round's participants
    (every client that advertised), so sender and server agree on it without a table."""
    ordered = sorted(set(participants))
    if client_id not in participants:
        raise SecAggError(f"share check failed: client {client_id} is not a participant")
    return ordered.index(client_id) + 1


def _share_key(
    my_c_private: bytes, peer_c_public: bytes, binding: bytes, sender: int, recipient: int
) -> bytes:
    info = _SHARE_KEY_INFO + _lp(binding) + _u64(sender) + _u64(recipient)
    return hkdf_sha256(x25519_shared(my_c_private, peer_c_public), info=info)


def _share_ad(binding: bytes, sender: int, recipient: int) -> bytes:
    return _SHARE_AD_TAG + _lp(binding) + _u64(sender) + _u64(recipient)


def _split32(secret: bytes, threshold: int, n: int) -> list[bytes]:
    """Shamir-split a 32-byte secret as two independent 16-byte halves; share i is the
    concatenation of both halves' shares at x = i + 1."""
    low = Shamir.split(threshold, n, secret[:_SHARE_HALF])
    high = Shamir.split(threshold, n, secret[_SHARE_HALF:])
    return [a + b for (_, a), (_, b) in zip(low, high, strict=True)]


def check_threshold(threshold: int, participants: int) -> None:
    """The floors of the protocol: n >= 3, t >= 2 and t > n / 2 (so two disjoint groups of clients
    cannot both reach t: the server cannot get one group to reveal self seeds and another
    the s keys of the same client), and t <= n."""
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise SecAggError("threshold check failed: threshold must be an integer")
    if participants < MIN_PARTICIPANTS:
        raise SecAggError(
            f"threshold check failed: {participants} participants; at least {MIN_PARTICIPANTS} "
            "(with two, each learns the other's update from the aggregate)"
        )
    if threshold < 2 or 2 * threshold <= participants or threshold > participants:
        raise SecAggError(
            f"threshold check failed: t = {threshold} with {participants} participants; "
            "need 2 <= t <= n and t > n / 2"
        )


def share_secrets(
    secrets: RoundSecrets, me: int, peers: Mapping[int, bytes], threshold: int, binding: bytes
) -> dict[int, bytes]:
    """Split this client's self seed and s key t-of-n and encrypt one share to every peer.

    `peers` maps every participant's id (this client included) to its c public key, as taken
    from the verified advertisements. Returns ``{recipient_id: blob}`` (`SHARE_BLOB_BYTES`
    each), including the blob to itself. Raises SecAggError if `me` is not among `peers`, a
    key has the wrong length, or the threshold breaks the floors (`check_threshold`).
    """
    binding = _check_binding(binding)
    _check_id(me, "client id")
    if me not in peers:
        raise SecAggError("share check failed: the sender is not among the participants")
    if peers[me] != secrets.c_public:
        raise SecAggError("share check failed: the sender's advertised c key is not its own")
    ordered = sorted(peers)
    check_threshold(threshold, len(ordered))
    seed_shares = _split32(secrets.self_seed, threshold, len(ordered))
    key_shares = _split32(secrets.s_private, threshold, len(ordered))
    out: dict[int, bytes] = {}
    for position, recipient in enumerate(ordered):
        _check_id(recipient, "recipient id")
        key = _share_key(secrets.c_private, peers[recipient], binding, me, recipient)
        plain = _SHARE_PLAIN.pack(PROTOCOL_VERSION, position + 1, seed_shares[position], key_shares[position])
        nonce = os.urandom(_NONCE_BYTES)
        out[recipient] = nonce + AESGCM(key).encrypt(nonce, plain, _share_ad(binding, me, recipient))
    return out


def open_share(
    blob: bytes, me: int, sender: int, my_secrets: RoundSecrets, sender_c_public: bytes, binding: bytes
) -> Share:
    """Decrypt the share `sender` encrypted to this client. Raises SecAggError if the blob was
    altered, is for another recipient, sender or round, or is malformed."""
    binding = _check_binding(binding)
    raw = _check_bytes(blob, SHARE_BLOB_BYTES, "share blob")
    key = _share_key(my_secrets.c_private, sender_c_public, binding, _check_id(sender, "sender id"), me)
    try:
        plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _share_ad(binding, sender, me))
    except InvalidTag:
        raise SecAggError(
            "share check failed: the blob does not authenticate (altered, or for another "
            "sender, recipient or round)"
        ) from None
    version, index, seed_share, key_share = _SHARE_PLAIN.unpack(plain)
    if version != PROTOCOL_VERSION or index < 1:
        raise SecAggError("share check failed: malformed share")
    return Share(index, seed_share, key_share)


def reconstruct(shares: Iterable[tuple[int, bytes]], threshold: int) -> bytes:
    """Recover a 32-byte secret from ``(index, 32-byte share)`` pairs of one split.

    Needs at least `threshold` shares with distinct indices. With more than `threshold`, the
    secret from the first t is compared with the one from all of them, so a share that is not
    on the polynomial is detected (with exactly t a wrong share gives a wrong secret; callers
    that can, check the result, e.g. `reconstruct_s_private`).
    """
    pairs = [(int(index), _check_bytes(share, KEY_BYTES, "share")) for index, share in shares]
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
        raise SecAggError("reconstruction check failed: threshold must be an integer >= 2")
    indices = [index for index, _ in pairs]
    if any(index < 1 or index >= 2**32 for index in indices):
        raise SecAggError("reconstruction check failed: share index out of range")
    if len(set(indices)) != len(indices):
        raise SecAggError("reconstruction check failed: duplicate share index")
    if len(pairs) < threshold:
        raise SecAggError(f"reconstruction check failed: {len(pairs)} shares, {threshold} needed")

    def combine(subset: Sequence[tuple[int, bytes]]) -> bytes:
        low = Shamir.combine([(i, s[:_SHARE_HALF]) for i, s in subset])
        high = Shamir.combine([(i, s[_SHARE_HALF:]) for i, s in subset])
        return low + high

    secret = combine(pairs[:threshold])
    if len(pairs) > threshold and combine(pairs) != secret:
        raise SecAggError("reconstruction check failed: the shares are not consistent")
    return secret


def reconstruct_s_private(shares: Iterable[tuple[int, bytes]], threshold: int, s_public: bytes) -> bytes:
    """`reconstruct` an s private key and check it against the advertised public key."""
    private = reconstruct(shares, threshold)
    if x25519_public(private) != _check_bytes(s_public, KEY_BYTES, "s public key"):
        raise SecAggError("reconstruction check failed: the s key does not match its advertised public key")
    return private


# --------------------------------------------------------------------------------------------
# Masks


def _check_moduli(moduli: Sequence[int]) -> list[int]:
    values = [int(q) for q in moduli]
    if not values:
        raise SecAggError("mask check failed: no moduli")
    if any(q < 2 or q > _MAX_MODULUS for q in values):
        raise SecAggError("mask check failed: each modulus must be in [2, 2**62]")
    return values


def expand_mask(seed: bytes, moduli: Sequence[int], per_modulus: int, label: bytes) -> Mask:
    """Expand a 32-byte seed into a mask of shape ``(len(moduli), per_modulus)``, row i
    uniform modulo ``moduli[i]``.

    ChaCha20 (key HKDF(seed, label), one nonce per row) is read as little-endian 64-bit words,
    each cut to q's bit length and kept only if below q (rejection sampling: exactly uniform,
    no modulo bias; at least half of the words are kept). Deterministic in its inputs.
    """
    values = _check_moduli(moduli)
    if isinstance(per_modulus, bool) or not isinstance(per_modulus, int) or per_modulus < 0:
        raise SecAggError("mask check failed: per_modulus must be a non-negative integer")
    key = hkdf_sha256(_check_bytes(seed, KEY_BYTES, "mask seed"), info=_MASK_INFO + _lp(bytes(label)))
    out = np.empty((len(values), per_modulus), dtype=np.uint64)
    for row, q in enumerate(values):
        # 16-byte ChaCha20 nonce in `cryptography`: 4-byte block counter, then 12-byte nonce.
        nonce = b"\x00" * 4 + struct.pack("<Q", row) + b"\x00" * 4
        stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
        keep_mask = np.uint64((1 << q.bit_length()) - 1)
        bound = np.uint64(q)
        filled = 0
        while filled < per_modulus:
            # Acceptance is q / 2**bits > 1/2; ask for a little more than the expected need.
            want = per_modulus - filled
            draw = int(want * (2 ** q.bit_length()) / q) + 64
            words = np.frombuffer(stream.update(b"\x00" * (8 * draw)), dtype="<u8") & keep_mask
            accepted = words[words < bound]
            take = min(len(accepted), want)
            out[row, filled : filled + take] = accepted[:take]
            filled += take
    return out


def _add_mod(acc: Mask, term: Mask, q: Mask) -> None:
    np.add(acc, term, out=acc)
    np.minimum(acc, acc - q, out=acc)  # for s < q, s - q wraps to a huge value: min keeps s


def _sub_mod(acc: Mask, term: Mask, q: Mask) -> None:
    np.add(acc, q - term, out=acc)
    np.minimum(acc, acc - q, out=acc)


def _moduli_column(moduli: Sequence[int]) -> Mask:
    return np.asarray(_check_moduli(moduli), dtype=np.uint64).reshape(-1, 1)


def client_mask(
    secrets: RoundSecrets,
    me: int,
    peers_s_public: Mapping[int, bytes],
    moduli: Sequence[int],
    per_modulus: int,
    binding: bytes,
) -> Mask:
    """The mask client `me` adds to its upload's c0 coefficients (mod each q):
    ``PRG(self_seed) + sum_{v > me} PRG(s_{me,v}) - sum_{v < me} PRG(s_{me,v})``.

    `peers_s_public` maps every client whose shares this client accepted (it may include
    `me`, which is skipped) to its verified s public key. Summed over all of them, the
    pairwise terms cancel exactly; only the self masks remain, which the server removes with
    the seeds the survivors reconstruct.
    """
    binding = _check_binding(binding)
    _check_id(me, "client id")
    q = _moduli_column(moduli)
    mask = expand_mask(secrets.self_seed, moduli, per_modulus, SELF_MASK_LABEL)
    for peer in sorted(peers_s_public):
        if peer == me:
            continue
        seed = pairwise_seed(secrets.s_private, peers_s_public[peer], binding, me, peer)
        term = expand_mask(seed, moduli, per_modulus, PAIR_MASK_LABEL)
        (_add_mod if peer > me else _sub_mod)(mask, term, q)
    return mask


def removal_mask(
    survivor_self_seeds: Mapping[int, bytes],
    dropped_s_private: Mapping[int, bytes],
    all_s_public: Mapping[int, bytes],
    survivors: Collection[int],
    moduli: Sequence[int],
    per_modulus: int,
    binding: bytes,
) -> Mask:
    """What the server subtracts (mod each q) from the sum of the survivors' masked c0 so that
    only the plain ciphertext sum remains.

    `all_s_public`: every client whose keys the survivors masked with (those that shared);
    `survivors`: those whose uploads are in the sum; `survivor_self_seeds`: exactly the
    survivors' reconstructed self seeds; `dropped_s_private`: exactly the reconstructed s keys
    of the others (each checked against its public key). The result is
    ``sum_{u in S} PRG(self_u) + sum_{u in S, v in D} sign(v - u) PRG(s_{u,v})``.
    """
    binding = _check_binding(binding)
    living = set(survivors)
    everyone = set(all_s_public)
    dropped = everyone - living
    if not living <= everyone:
        raise SecAggError("removal check failed: a survivor has no advertised s key")
    if set(survivor_self_seeds) != living:
        raise SecAggError("removal check failed: self seeds must be given for exactly the survivors")
    if set(dropped_s_private) != dropped:
        raise SecAggError("removal check failed: s keys must be given for exactly the dropped clients")
    for v, private in dropped_s_private.items():
        if x25519_public(private) != all_s_public[v]:
            raise SecAggError(f"removal check failed: the s key of client {v} does not match its public key")
    q = _moduli_column(moduli)
    total = np.zeros((q.shape[0], per_modulus), dtype=np.uint64)
    for u in sorted(living):
        _add_mod(total, expand_mask(survivor_self_seeds[u], moduli, per_modulus, SELF_MASK_LABEL), q)
    for v in sorted(dropped):
        for u in sorted(living):
            seed = pairwise_seed(dropped_s_private[v], all_s_public[u], binding, u, v)
            term = expand_mask(seed, moduli, per_modulus, PAIR_MASK_LABEL)
            # u's upload carries +PRG(s_uv) if v > u, else -PRG(s_uv): remove the same sign.
            (_add_mod if v > u else _sub_mod)(total, term, q)
    return total
