"""privacy_secagg: spec vectors through the wrappers, Shamir against PyCryptodome, mask
uniformity and exact cancellation, dropout removal, and one negative test per check."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir
from scipy import stats

import privacy_secagg as secagg
from privacy_secagg import RoundSecrets, SecAggError

H = bytes.fromhex
BINDING = secagg.round_binding(7, 42)
# The n8192 preset's data prime and two more primes below 2**62, so every path sees several moduli.
Q60 = 1152921504606830593
MODULI = [Q60, 1152921504606748673, 2**61 - 1]


# -- spec vectors through the wrappers ---------------------------------------------------------


def test_x25519_rfc7748_section_6_1() -> None:
    alice = H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert secagg.x25519_public(alice) == H(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert secagg.x25519_public(bob) == H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert secagg.x25519_shared(alice, secagg.x25519_public(bob)) == shared
    assert secagg.x25519_shared(bob, secagg.x25519_public(alice)) == shared


def test_x25519_refuses_a_low_order_peer_key() -> None:
    with pytest.raises(SecAggError, match="low-order"):
        secagg.x25519_shared(b"\x01" * 32, b"\x00" * 32)


RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_ed25519_rfc8032_section_7_1(secret: str, public: str, message: str, signature: str) -> None:
    key = secagg.IdentityKey.from_private_bytes(H(secret))
    assert key.public_bytes() == H(public)
    assert key.private_bytes() == H(secret)
    assert key.sign(H(message)) == H(signature)
    secagg.verify_signature(H(public), H(message), H(signature))


def test_hkdf_rfc5869_case_1() -> None:
    okm = secagg.hkdf_sha256(
        b"\x0b" * 22, salt=H("000102030405060708090a0b0c"), info=H("f0f1f2f3f4f5f6f7f8f9"), length=42
    )
    assert okm == H("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_fingerprint_is_grouped_sha256() -> None:
    public = secagg.IdentityKey.generate().public_bytes()
    fp = secagg.fingerprint(public)
    import hashlib

    assert fp.replace(" ", "") == hashlib.sha256(public).hexdigest()
    assert len(fp.split(" ")) == 16


# -- signatures and advertisements ------------------------------------------------------------


def _advert(secrets: RoundSecrets, client_id: int, binding: bytes = BINDING) -> bytes:
    return secagg.advertisement_message(binding, client_id, secrets.c_public, secrets.s_public)


def test_advertisement_signature_verifies_and_binds_every_field() -> None:
    identity, secrets = secagg.IdentityKey.generate(), RoundSecrets.generate()
    signature = identity.sign(_advert(secrets, 3))
    secagg.verify_signature(identity.public_bytes(), _advert(secrets, 3), signature)
    other = RoundSecrets.generate()
    altered = [
        _advert(secrets, 4),  # another client id
        _advert(secrets, 3, secagg.round_binding(7, 43)),  # another round
        _advert(secrets, 3, secagg.round_binding(8, 42)),  # another federation
        secagg.advertisement_message(BINDING, 3, other.c_public, secrets.s_public),  # substituted c
        secagg.advertisement_message(BINDING, 3, secrets.c_public, other.s_public),  # substituted s
    ]
    for message in altered:
        with pytest.raises(SecAggError, match="signature check failed"):
            secagg.verify_signature(identity.public_bytes(), message, signature)


def test_bad_signature_is_refused() -> None:
    identity, secrets = secagg.IdentityKey.generate(), RoundSecrets.generate()
    signature = bytearray(identity.sign(_advert(secrets, 3)))
    signature[10] ^= 1
    with pytest.raises(SecAggError, match="signature check failed"):
        secagg.verify_signature(identity.public_bytes(), _advert(secrets, 3), bytes(signature))
    # A valid signature by another identity key (the server's own) is refused too.
    impostor = secagg.IdentityKey.generate()
    with pytest.raises(SecAggError, match="signature check failed"):
        secagg.verify_signature(
            identity.public_bytes(), _advert(secrets, 3), impostor.sign(_advert(secrets, 3))
        )


@pytest.mark.parametrize(
    "call",
    [
        lambda: secagg.verify_signature(b"\x00" * 31, b"m", b"\x00" * 64),
        lambda: secagg.verify_signature(secagg.IdentityKey.generate().public_bytes(), b"m", b"\x00" * 63),
        lambda: secagg.IdentityKey.from_private_bytes(b"\x00" * 33),
        lambda: secagg.advertisement_message(BINDING, 1, b"\x00" * 31, b"\x00" * 32),
        lambda: secagg.advertisement_message(BINDING, 1, b"\x00" * 32, b"\x00" * 33),
        lambda: secagg.x25519_shared(b"\x01" * 31, b"\x09" + b"\x00" * 31),
        lambda: secagg.x25519_public("not bytes"),  # type: ignore[arg-type]
        lambda: RoundSecrets(b"\x01" * 32, b"\x02" * 32, b"\x03" * 16),
        lambda: RoundSecrets.from_bytes(b"\x01" * 96),
        lambda: secagg.expand_mask(b"\x00" * 16, [Q60], 4, b"self"),
        lambda: secagg.advertisement_message(b"not a binding", 1, b"\x00" * 32, b"\x00" * 32),
        lambda: secagg.advertisement_message(BINDING, -1, b"\x00" * 32, b"\x00" * 32),
    ],
    ids=[
        "identity-public-31",
        "signature-63",
        "identity-private-33",
        "c-public-31",
        "s-public-33",
        "x25519-private-31",
        "not-bytes",
        "self-seed-16",
        "stored-secrets-96",
        "mask-seed-16",
        "binding",
        "negative-id",
    ],
)
def test_wrong_length_or_type_is_refused(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SecAggError):
        call()


def test_round_secrets_round_trip_and_version_check() -> None:
    secrets = RoundSecrets.generate()
    assert RoundSecrets.from_bytes(secrets.to_bytes()) == secrets
    assert len({secrets.c_private, secrets.s_private, secrets.self_seed}) == 3
    stored = bytearray(secrets.to_bytes())
    stored[0] = 9
    with pytest.raises(SecAggError, match="protocol version"):
        RoundSecrets.from_bytes(bytes(stored))


def test_pairwise_seed_is_symmetric_and_bound_to_round_and_pair() -> None:
    a, b, c = RoundSecrets.generate(), RoundSecrets.generate(), RoundSecrets.generate()
    ab = secagg.pairwise_seed(a.s_private, b.s_public, BINDING, 1, 2)
    assert ab == secagg.pairwise_seed(b.s_private, a.s_public, BINDING, 2, 1)
    assert ab != secagg.pairwise_seed(a.s_private, b.s_public, secagg.round_binding(7, 43), 1, 2)
    assert ab != secagg.pairwise_seed(a.s_private, b.s_public, BINDING, 1, 3)
    assert ab != secagg.pairwise_seed(a.s_private, c.s_public, BINDING, 1, 2)
    with pytest.raises(SecAggError, match="itself"):
        secagg.pairwise_seed(a.s_private, a.s_public, BINDING, 1, 1)


# -- Shamir ------------------------------------------------------------------------------------


def _split(secret: bytes, t: int, n: int) -> list[tuple[int, bytes]]:
    """A 32-byte split the way share_secrets makes it (through the blobs)."""
    participants = {10 * (i + 1): RoundSecrets.generate() for i in range(n)}
    sender = 10
    mine = RoundSecrets(participants[sender].c_private, participants[sender].s_private, secret)
    participants[sender] = mine
    c_publics = {cid: s.c_public for cid, s in participants.items()}
    blobs = secagg.share_secrets(mine, sender, c_publics, t, BINDING)
    shares = [
        secagg.open_share(blobs[cid], cid, sender, participants[cid], mine.c_public, BINDING)
        for cid in sorted(participants)
    ]
    assert [s.index for s in shares] == [
        secagg.share_index(participants, cid) for cid in sorted(participants)
    ]
    return [(s.index, s.self_seed_share) for s in shares]


def test_any_t_of_n_reconstruct_and_t_minus_1_do_not() -> None:
    secret = bytes(range(32))
    t, n = 3, 5
    shares = _split(secret, t, n)
    for subset in itertools.combinations(shares, t):
        assert secagg.reconstruct(subset, t) == secret
    for subset in itertools.combinations(shares, t + 1):
        assert secagg.reconstruct(subset, t) == secret
    # t - 1 shares, interpolated as if they were enough, give something else: they do not
    # determine the secret (every 16-byte half is consistent with every value).
    for subset in itertools.combinations(shares, t - 1):
        low = Shamir.combine([(i, s[:16]) for i, s in subset])
        high = Shamir.combine([(i, s[16:]) for i, s in subset])
        assert low + high != secret
    with pytest.raises(SecAggError, match="2 shares, 3 needed"):
        secagg.reconstruct(shares[:2], t)


def test_shamir_interoperates_with_pycryptodome_both_ways() -> None:
    secret = bytes(range(100, 132))
    # Ours -> PyCryptodome's combine, per 16-byte half.
    shares = _split(secret, 3, 5)
    picked = [shares[4], shares[0], shares[2]]
    assert Shamir.combine([(i, s[:16]) for i, s in picked]) == secret[:16]
    assert Shamir.combine([(i, s[16:]) for i, s in picked]) == secret[16:]
    # PyCryptodome's split -> our reconstruct.
    low, high = Shamir.split(3, 5, secret[:16]), Shamir.split(3, 5, secret[16:])
    theirs = [(i, a + b) for (i, a), (_, b) in zip(low, high, strict=True)]
    assert secagg.reconstruct(theirs[1:4], 3) == secret


def test_duplicate_share_index_is_refused() -> None:
    shares = _split(b"\x05" * 32, 3, 5)
    with pytest.raises(SecAggError, match="duplicate share index"):
        secagg.reconstruct([shares[0], shares[1], shares[1]], 3)
    with pytest.raises(SecAggError, match="index out of range"):
        secagg.reconstruct([(0, shares[0][1]), shares[1], shares[2]], 3)


def test_inconsistent_share_is_detected_with_more_than_t() -> None:
    shares = _split(b"\x06" * 32, 3, 5)
    index, value = shares[3]
    bad = shares[:3] + [(index, bytes([value[0] ^ 1]) + value[1:])]
    with pytest.raises(SecAggError, match="not consistent"):
        secagg.reconstruct(bad, 3)


def test_reconstructed_s_key_is_checked_against_its_public_key() -> None:
    secrets = RoundSecrets.generate()
    participants = {1: secrets, 2: RoundSecrets.generate(), 3: RoundSecrets.generate()}
    c_publics = {cid: s.c_public for cid, s in participants.items()}
    blobs = secagg.share_secrets(secrets, 1, c_publics, 2, BINDING)
    shares = [secagg.open_share(blobs[c], c, 1, participants[c], secrets.c_public, BINDING) for c in (2, 3)]
    pairs = [(s.index, s.s_key_share) for s in shares]
    assert secagg.reconstruct_s_private(pairs, 2, secrets.s_public) == secrets.s_private
    index, value = pairs[0]
    # (A flip in the low bits of byte 0 could land on bits X25519 clamps away: flip byte 8.)
    wrong = [(index, value[:8] + bytes([value[8] ^ 1]) + value[9:]), pairs[1]]
    with pytest.raises(SecAggError, match="does not match its advertised public key"):
        secagg.reconstruct_s_private(wrong, 2, secrets.s_public)


@pytest.mark.parametrize(("t", "n"), [(1, 3), (2, 4), (3, 6), (4, 3), (2, 2)])
def test_threshold_floors(t: int, n: int) -> None:
    participants = {i: RoundSecrets.generate() for i in range(1, n + 1)}
    with pytest.raises(SecAggError, match="threshold check failed"):
        secagg.share_secrets(participants[1], 1, {c: s.c_public for c, s in participants.items()}, t, BINDING)


# -- share blobs -------------------------------------------------------------------------------


@pytest.fixture
def trio() -> dict[int, RoundSecrets]:
    return {5: RoundSecrets.generate(), 9: RoundSecrets.generate(), 12: RoundSecrets.generate()}


def test_share_blobs_open_only_for_their_recipient_sender_and_round(trio: dict[int, RoundSecrets]) -> None:
    c_publics = {c: s.c_public for c, s in trio.items()}
    blobs = secagg.share_secrets(trio[5], 5, c_publics, 2, BINDING)
    assert set(blobs) == {5, 9, 12}
    assert {len(b) for b in blobs.values()} == {secagg.SHARE_BLOB_BYTES}
    share = secagg.open_share(blobs[9], 9, 5, trio[9], c_publics[5], BINDING)
    assert share.index == 2
    own = secagg.open_share(blobs[5], 5, 5, trio[5], c_publics[5], BINDING)  # the share to itself
    assert own.index == 1
    with pytest.raises(SecAggError, match="does not authenticate"):  # wrong recipient
        secagg.open_share(blobs[9], 12, 5, trio[12], c_publics[5], BINDING)
    with pytest.raises(SecAggError, match="does not authenticate"):  # wrong sender claimed
        secagg.open_share(blobs[9], 9, 12, trio[9], c_publics[12], BINDING)
    with pytest.raises(SecAggError, match="does not authenticate"):  # wrong binding
        secagg.open_share(blobs[9], 9, 5, trio[9], c_publics[5], secagg.round_binding(7, 41))
    with pytest.raises(SecAggError, match="does not authenticate"):  # recipient's blob to another
        secagg.open_share(blobs[12], 9, 5, trio[9], c_publics[5], BINDING)


def test_tampered_share_blob_is_refused(trio: dict[int, RoundSecrets]) -> None:
    c_publics = {c: s.c_public for c, s in trio.items()}
    blob = secagg.share_secrets(trio[5], 5, c_publics, 2, BINDING)[9]
    for position in (0, 11, 12, 40, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[position] ^= 0x80
        with pytest.raises(SecAggError, match="does not authenticate"):
            secagg.open_share(bytes(tampered), 9, 5, trio[9], c_publics[5], BINDING)
    with pytest.raises(SecAggError, match="share blob must be"):
        secagg.open_share(blob[:-1], 9, 5, trio[9], c_publics[5], BINDING)


def test_sender_must_be_a_participant_with_its_own_c_key(trio: dict[int, RoundSecrets]) -> None:
    c_publics = {c: s.c_public for c, s in trio.items()}
    with pytest.raises(SecAggError, match="not among the participants"):
        secagg.share_secrets(trio[5], 6, c_publics, 2, BINDING)
    with pytest.raises(SecAggError, match="not its own"):
        secagg.share_secrets(trio[5], 9, c_publics, 2, BINDING)


# -- masks -------------------------------------------------------------------------------------


def test_expand_mask_is_deterministic_in_range_and_label_separated() -> None:
    seed = bytes(range(32))
    mask = secagg.expand_mask(seed, MODULI, 5000, b"self")
    assert mask.shape == (3, 5000) and mask.dtype == np.uint64
    for row, q in enumerate(MODULI):
        assert int(mask[row].max()) < q
    assert np.array_equal(mask, secagg.expand_mask(seed, MODULI, 5000, b"self"))
    # A longer expansion extends the shorter one: the stream is read in order.
    assert np.array_equal(secagg.expand_mask(seed, MODULI, 7000, b"self")[:, :5000], mask)
    assert not np.array_equal(mask, secagg.expand_mask(seed, MODULI, 5000, b"pair"))
    assert not np.array_equal(mask[0], mask[1])


@pytest.mark.parametrize(
    "q",
    [
        Q60,
        # 3 * 2**15: a 17-bit modulus with residues below 2**15 twice as likely under a naive
        # "word mod q" (2**17 mod q = 2**15), so a biased sampler fails this test.
        3 * 2**15,
        97,
    ],
)
def test_mask_residues_are_uniform_chi_square(q: int) -> None:
    values = secagg.expand_mask(b"\x42" * 32, [q], 200_000, b"self")[0].astype(np.float64)
    bins = 96 if q >= 96 else q
    # Bin by value * bins // q (exact for q = 97: one residue per bin).
    counts = np.bincount(np.floor(values * bins / q).astype(np.int64), minlength=bins)
    expected = np.array([len(range(-(-b * q // bins), -(-(b + 1) * q // bins))) for b in range(bins)])
    expected = expected / q * len(values)
    _, p_value = stats.chisquare(counts, expected)
    assert p_value > 1e-6, (q, p_value)


def _clients(n: int) -> dict[int, RoundSecrets]:
    return {cid: RoundSecrets.generate() for cid in (3, 8, 11, 20, 21)[:n]}


def test_client_masks_cancel_exactly_except_self_masks() -> None:
    clients = _clients(5)
    s_publics = {c: s.s_public for c, s in clients.items()}
    per = 3000
    q = np.asarray(MODULI, dtype=object).reshape(-1, 1)
    total = np.zeros((3, per), dtype=object)
    self_total = np.zeros((3, per), dtype=object)
    for cid, secrets in clients.items():
        total = total + secagg.client_mask(secrets, cid, s_publics, MODULI, per, BINDING).astype(object)
        self_total = self_total + secagg.expand_mask(secrets.self_seed, MODULI, per, b"self").astype(object)
    # Exact arbitrary-precision comparison mod every q: pairwise masks vanish from the sum.
    assert ((total - self_total) % q == 0).all()


@pytest.mark.parametrize("dropped", [(), (8,), (3, 21)])
def test_removal_mask_leaves_exactly_the_plain_sum(dropped: tuple[int, ...]) -> None:
    clients = _clients(5)
    s_publics = {c: s.s_public for c, s in clients.items()}
    per = 2000
    qs = np.asarray(MODULI, dtype=object).reshape(-1, 1)
    rng = np.random.default_rng(1)
    plain = {c: rng.integers(0, 2**40, size=(3, per)).astype(object) for c in clients}
    survivors = [c for c in clients if c not in dropped]
    uploaded = sum(
        (plain[c] + secagg.client_mask(clients[c], c, s_publics, MODULI, per, BINDING).astype(object)) % qs
        for c in survivors
    )
    # Reconstruct through real shares, as the server would (t = 3 of 5, from the survivors).
    c_publics = {c: s.c_public for c, s in clients.items()}
    opened: dict[int, dict[int, secagg.Share]] = {c: {} for c in clients}
    for sender, secrets in clients.items():
        blobs = secagg.share_secrets(secrets, sender, c_publics, 3, BINDING)
        for recipient in survivors:
            opened[sender][recipient] = secagg.open_share(
                blobs[recipient], recipient, sender, clients[recipient], c_publics[sender], BINDING
            )
    seeds = {
        u: secagg.reconstruct([(s.index, s.self_seed_share) for s in opened[u].values()], 3)
        for u in survivors
    }
    keys = {
        v: secagg.reconstruct_s_private(
            [(s.index, s.s_key_share) for s in opened[v].values()], 3, s_publics[v]
        )
        for v in dropped
    }
    removal = secagg.removal_mask(seeds, keys, s_publics, survivors, MODULI, per, BINDING).astype(object)
    assert (((uploaded - removal) - sum(plain[c] for c in survivors)) % qs == 0).all()
    # Without the dropped clients' keys the residue is not the plain sum (the masks matter).
    if dropped:
        partial = secagg.removal_mask(
            seeds,
            {v: clients[survivors[0]].s_private for v in ()},
            {u: s_publics[u] for u in survivors},
            survivors,
            MODULI,
            per,
            BINDING,
        ).astype(object)
        assert not (((uploaded - partial) - sum(plain[c] for c in survivors)) % qs == 0).all()


def test_removal_mask_checks_its_inputs() -> None:
    clients = _clients(4)
    s_publics = {c: s.s_public for c, s in clients.items()}
    seeds = {c: s.self_seed for c, s in clients.items()}
    survivors = [3, 8, 11]
    survivor_seeds = {c: seeds[c] for c in survivors}
    with pytest.raises(SecAggError, match="exactly the survivors"):
        secagg.removal_mask(seeds, {20: clients[20].s_private}, s_publics, survivors, [Q60], 8, BINDING)
    with pytest.raises(SecAggError, match="exactly the dropped"):
        secagg.removal_mask(survivor_seeds, {}, s_publics, survivors, [Q60], 8, BINDING)
    with pytest.raises(SecAggError, match="does not match its public key"):
        secagg.removal_mask(
            survivor_seeds, {20: clients[3].s_private}, s_publics, survivors, [Q60], 8, BINDING
        )
    with pytest.raises(SecAggError, match="no advertised s key"):
        secagg.removal_mask(
            {**survivor_seeds, 99: b"\x00" * 32},
            {20: clients[20].s_private},
            s_publics,
            [*survivors, 99],
            [Q60],
            8,
            BINDING,
        )
    with pytest.raises(SecAggError, match="modulus"):
        secagg.removal_mask(
            survivor_seeds, {20: clients[20].s_private}, s_publics, survivors, [2**63], 8, BINDING
        )


def test_single_masked_upload_reveals_nothing_about_the_update() -> None:
    """An upload is the update plus a mask uniform mod q: two very different updates give
    uploads whose residues are both uniform (a sanity check of the design; the attack suite
    runs the real protocol)."""
    clients = _clients(3)
    s_publics = {c: s.s_public for c, s in clients.items()}
    mask = secagg.client_mask(clients[3], 3, s_publics, [Q60], 50_000, BINDING)[0]
    for update in (np.zeros(50_000, dtype=np.uint64), np.full(50_000, 2**39, dtype=np.uint64)):
        upload = (mask.astype(object) + update.astype(object)) % Q60
        counts = np.bincount((np.asarray(upload, dtype=np.float64) * 64 / Q60).astype(np.int64), minlength=64)
        assert stats.chisquare(counts).pvalue > 1e-6


def test_consistency_message_binds_round_and_both_sets() -> None:
    base = secagg.consistency_message(BINDING, [1, 2, 3], [4])
    assert base == secagg.consistency_message(BINDING, [3, 2, 1], [4])  # canonical order
    assert base != secagg.consistency_message(BINDING, [1, 2], [3, 4])  # a set moved
    assert base != secagg.consistency_message(BINDING, [1, 2, 3], [])  # a dropped client hidden
    assert base != secagg.consistency_message(secagg.round_binding(7, 43), [1, 2, 3], [4])
    identity = secagg.IdentityKey.generate()
    signature = identity.sign(base)
    secagg.verify_signature(identity.public_bytes(), base, signature)
    with pytest.raises(SecAggError, match="signature check failed"):
        secagg.verify_signature(
            identity.public_bytes(), secagg.consistency_message(BINDING, [1, 2], [3, 4]), signature
        )
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        secagg.consistency_message(BINDING, [1, 2, 3], [3])


def test_verify_consistency_needs_t_survivor_signatures_on_the_same_sets() -> None:
    ids = {c: secagg.IdentityKey.generate() for c in (1, 2, 3, 4, 5)}
    pinned = {c: k.public_bytes() for c, k in ids.items()}
    survivors, dropped = [1, 2, 3, 4], [5]
    message = secagg.consistency_message(BINDING, survivors, dropped)
    signatures = {c: ids[c].sign(message) for c in (1, 2, 3)}
    secagg.verify_consistency(BINDING, survivors, dropped, signatures, pinned, 3)
    with pytest.raises(secagg.TooFewSignatures, match="2 survivors signed these sets; 3 needed"):
        secagg.verify_consistency(
            BINDING, survivors, dropped, {1: signatures[1], 2: signatures[2]}, pinned, 3
        )
    # A dropped client's signature does not count.
    with pytest.raises(SecAggError, match="2 survivors"):
        secagg.verify_consistency(
            BINDING,
            survivors,
            dropped,
            {1: signatures[1], 2: signatures[2], 5: ids[5].sign(message)},
            pinned,
            3,
        )
    # Signatures on other sets (a split view) are refused by name.
    other = secagg.consistency_message(BINDING, [1, 2, 3], [4, 5])
    with pytest.raises(SecAggError, match="not on these survivor and dropped sets"):
        secagg.verify_consistency(
            BINDING, survivors, dropped, {**signatures, 4: ids[4].sign(other)}, pinned, 3
        )
    with pytest.raises(SecAggError, match="no pinned identity key"):
        secagg.verify_consistency(BINDING, survivors, dropped, signatures, {1: pinned[1]}, 3)
