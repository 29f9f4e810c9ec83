"""The batched Fernet codec is exactly Fernet: interoperable both ways, and it rejects every
token cryptography's Fernet would reject (a whole batch fails on one bad token)."""

from __future__ import annotations

import base64
import hmac
import random

import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy_api.crypto import fernet_batch
from privacy_api.crypto.fernet_batch import _HmacSha256
from privacy_api.storage.columns import CorruptRecord, decrypt_tokens, encrypt_plaintexts

SEED = 20240611
KEY = base64.urlsafe_b64encode(random.Random(SEED).randbytes(32))
OTHER_KEY = base64.urlsafe_b64encode(random.Random(SEED + 1).randbytes(32))


def _messages(count: int = 400, seed: int = SEED) -> list[bytes]:
    """Every length 0..200 (so every padding 1..16, exact block multiples included), then
    random lengths and contents."""
    rnd = random.Random(seed)
    out = [rnd.randbytes(n) for n in range(201)]
    out += [rnd.randbytes(rnd.randint(0, 200)) for _ in range(count - len(out))]
    return out


def _raw(token: bytes) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token))


def _token(raw: bytes | bytearray) -> bytes:
    return base64.urlsafe_b64encode(bytes(raw))


def _rejects(keys: list[bytes], tokens: list[bytes]) -> None:
    with pytest.raises(InvalidToken):
        fernet_batch.decrypt(keys, tokens)
    with pytest.raises(CorruptRecord):
        decrypt_tokens(keys, tokens)


def test_decrypts_tokens_made_by_cryptography() -> None:
    messages = _messages()
    f = Fernet(KEY)
    tokens = [f.encrypt(m) for m in messages]
    assert fernet_batch.decrypt([KEY], tokens).tolist() == messages
    assert decrypt_tokens([KEY], tokens) == messages


def test_tokens_it_makes_decrypt_with_cryptography() -> None:
    messages = _messages()
    tokens = fernet_batch.encrypt(KEY, messages, current_time=1_700_000_000)
    f = Fernet(KEY)
    assert [f.decrypt(t) for t in tokens] == messages
    assert all(f.extract_timestamp(t) == 1_700_000_000 for t in tokens)
    assert fernet_batch.decrypt([KEY], tokens).tolist() == messages
    assert len({_raw(t)[9:25].hex() for t in tokens}) == len(tokens)  # a fresh IV per token
    # the service's entry point, too
    assert [f.decrypt(t) for t in encrypt_plaintexts(KEY, messages)] == messages


def test_encrypt_uses_the_current_time_by_default() -> None:
    import time

    before = int(time.time())
    token = fernet_batch.encrypt(KEY, [b"x"])[0]
    assert before <= Fernet(KEY).extract_timestamp(token) <= int(time.time())


@pytest.mark.parametrize("n", [0, 1, 2, 17])
def test_small_batches(n: int) -> None:
    messages = _messages()[:n]
    tokens = fernet_batch.encrypt(KEY, messages)
    assert len(tokens) == n
    assert fernet_batch.decrypt([KEY], tokens).tolist() == messages


def test_hmac_is_hmac_sha256() -> None:
    rnd = random.Random(SEED)
    for key_len in (0, 1, 16, 32, 64, 65, 100):
        key = rnd.randbytes(key_len)
        data = rnd.randbytes(500)
        spans = [(a, a + n) for a, n in ((rnd.randint(0, 250), rnd.randint(0, 250)) for _ in range(30))]
        assert _HmacSha256(key).digests(data, spans) == [
            hmac.digest(key, data[a:b], "sha256") for a, b in spans
        ]


def test_tokens_under_two_keys_decode_in_order() -> None:
    messages = _messages()
    old, new = Fernet(KEY), Fernet(OTHER_KEY)
    tokens = [(new if i % 3 else old).encrypt(m) for i, m in enumerate(messages)]
    assert fernet_batch.decrypt([OTHER_KEY, KEY], tokens).tolist() == messages
    assert fernet_batch.decrypt([KEY, OTHER_KEY], tokens).tolist() == messages
    assert MultiFernet([new, old]).decrypt(tokens[1]) == messages[1]
    _rejects([OTHER_KEY], tokens)  # the old key is gone: the old records are unreadable


def test_join_writes_separators_over_the_padding() -> None:
    messages = _messages()
    plain = fernet_batch.decrypt([KEY], [Fernet(KEY).encrypt(m) for m in messages])
    assert plain.join(b"\x00", b"\x01") == b"".join(
        m + (b"\x00" if i < len(messages) - 1 else b"\x01") + b" " * (15 - len(m) % 16)
        for i, m in enumerate(messages)
    )
    empty = fernet_batch.decrypt([KEY], [])
    assert empty.tolist() == [] and empty.join(b",", b"]") == b""


def test_non_canonical_base64_is_read_as_fernet_reads_it() -> None:
    # urlsafe_b64decode ignores characters outside the alphabet; so does Fernet
    tokens = [Fernet(KEY).encrypt(m) for m in _messages(250)]
    odd = [t + b"\n" if i % 2 else t for i, t in enumerate(tokens)]
    assert fernet_batch.decrypt([KEY], odd).tolist() == [Fernet(KEY).decrypt(t) for t in odd]


# --- rejection --------------------------------------------------------------------------------

def _batch_with(bad: bytes, seed: int = 0) -> list[bytes]:
    """`bad` hidden at a random place among valid tokens."""
    good = fernet_batch.encrypt(KEY, _messages(60, seed=seed))
    at = random.Random(seed).randrange(len(good) + 1)
    return good[:at] + [bad] + good[at:]


def test_every_flipped_bit_is_rejected() -> None:
    token = Fernet(KEY).encrypt(b"a record of some length, 37 bytes..")
    raw = _raw(token)
    for i in range(len(raw)):  # version, timestamp, iv, ciphertext and mac bytes
        for bit in range(8):
            tampered = raw.copy()
            tampered[i] ^= 1 << bit
            _rejects([KEY], _batch_with(_token(tampered), seed=i))


def test_every_changed_character_is_rejected() -> None:
    token = Fernet(KEY).encrypt(b"0123456789abcdef")  # 73 bytes: the text ends in "="
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rnd = random.Random(SEED)
    for i in range(len(token)):
        tampered = bytearray(token)
        tampered[i] = rnd.choice([c for c in alphabet if c != token[i]])
        candidate = bytes(tampered)
        try:
            # a change in the unused low bits of the last character decodes to the same bytes:
            # Fernet accepts that too, so the batch must agree with it
            expected = Fernet(KEY).decrypt(candidate)
        except InvalidToken:
            _rejects([KEY], _batch_with(candidate, seed=i))
        else:
            assert fernet_batch.decrypt([KEY], [candidate]).tolist() == [expected]


def test_truncated_and_extended_tokens_are_rejected() -> None:
    token = Fernet(KEY).encrypt(b"x" * 40)
    raw = _raw(token)
    for size in range(len(raw)):
        _rejects([KEY], _batch_with(_token(raw[:size]), seed=size))
    for size in range(1, len(token)):
        _rejects([KEY], _batch_with(token[:size], seed=size))
    _rejects([KEY], _batch_with(_token(raw + b"\x00" * 16)))
    _rejects([KEY], _batch_with(_token(raw[:25] + raw[41:])))  # one ciphertext block less


@pytest.mark.parametrize("bad", [b"", b"=", b"====", b"!!!!", b"abc", b"\xff\xfe\xfd\xfc",
                                 b"gAAAAA", base64.urlsafe_b64encode(b"\x80" + b"\x00" * 100)])
def test_garbage_is_rejected(bad: bytes) -> None:
    _rejects([KEY], [bad])
    _rejects([KEY], _batch_with(bad))


def test_wrong_key_is_rejected() -> None:
    tokens = [Fernet(OTHER_KEY).encrypt(m) for m in _messages(250)]
    _rejects([KEY], tokens)
    _rejects([KEY], _batch_with(tokens[7]))


def test_one_bad_token_fails_the_whole_batch() -> None:
    tokens = fernet_batch.encrypt(KEY, [b"[1,2,3]"] * 5000)
    raw = _raw(tokens[4321])
    raw[-1] ^= 0x01
    tokens[4321] = _token(raw)
    _rejects([KEY], tokens)
    _rejects([KEY, OTHER_KEY], tokens)


def _signed_token(key: bytes, padded_plaintext: bytes, version: int = 0x80) -> bytes:
    """A correctly authenticated token, padded or not, of any version byte."""
    raw_key = base64.urlsafe_b64decode(key)
    iv = bytes(16)
    enc = Cipher(algorithms.AES(raw_key[16:]), modes.CBC(iv)).encryptor()
    body = (bytes([version]) + (0).to_bytes(8, "big") + iv + enc.update(padded_plaintext)
            + enc.finalize())
    return _token(body + hmac.digest(raw_key[:16], body, "sha256"))


@pytest.mark.parametrize("plaintext", [
    b"A" * 15 + b"\x00",  # pad length 0
    b"A" * 15 + b"\x11",  # pad length 17
    b"A" * 14 + b"\x01\x02",  # pad bytes disagree
    b"A" * 13 + b"\x04\x03\x03",
    b"A" * 16 + b"\x10" * 15 + b"\x0f",
    b"\x20" * 16,  # pad length 32 in a single block
])
def test_authenticated_but_badly_padded_tokens_are_rejected(plaintext: bytes) -> None:
    token = _signed_token(KEY, plaintext)
    with pytest.raises(InvalidToken):
        Fernet(KEY).decrypt(token)
    _rejects([KEY], _batch_with(token))


def test_well_padded_handmade_tokens_are_accepted() -> None:
    padder = padding.PKCS7(128).padder()
    plaintext = b"hand-made"
    token = _signed_token(KEY, padder.update(plaintext) + padder.finalize())
    assert Fernet(KEY).decrypt(token) == plaintext
    assert fernet_batch.decrypt([KEY], _batch_with(token)).tolist().count(plaintext) == 1


@pytest.mark.parametrize("version", [0x00, 0x7F, 0x81, 0xFF])
def test_authenticated_tokens_of_another_version_are_rejected(version: int) -> None:
    token = _signed_token(KEY, b"0123456789abcde\x01", version=version)
    with pytest.raises(InvalidToken):
        Fernet(KEY).decrypt(token)
    _rejects([KEY], _batch_with(token))


@pytest.mark.parametrize("extra", [1, 15, 17, 31])
def test_authenticated_tokens_with_partial_blocks_are_rejected(extra: int) -> None:
    # a well-padded first block, then bytes that do not fill a block
    raw_key = base64.urlsafe_b64decode(KEY)
    enc = Cipher(algorithms.AES(raw_key[16:]), modes.CBC(bytes(16))).encryptor()
    ct = enc.update(b"0123456789abcde\x01") + enc.finalize()
    body = b"\x80" + bytes(8) + bytes(16) + ct + random.Random(extra).randbytes(extra)
    token = _token(body + hmac.digest(raw_key[:16], body, "sha256"))
    with pytest.raises(InvalidToken):
        Fernet(KEY).decrypt(token)
    _rejects([KEY], _batch_with(token))
    for short in range(16):  # and no whole block at all
        body = b"\x80" + bytes(8) + bytes(16) + ct[:short]
        _rejects([KEY], [_token(body + hmac.digest(raw_key[:16], body, "sha256"))])


def test_keys_are_checked() -> None:
    with pytest.raises(ValueError):
        fernet_batch.decrypt([], [Fernet(KEY).encrypt(b"x")])
    with pytest.raises(ValueError):
        fernet_batch.encrypt(base64.urlsafe_b64encode(b"short"), [b"x"])
