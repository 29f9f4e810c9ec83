"""The outer protobuf framing of each ciphertext chunk: our reader beside google.protobuf.

`privacy_api.crypto.he` reads each chunk's TenSEAL `CKKSVectorProto` (sizes, one ciphertext,
scale) with its own bounds-checked reader. This measures that reader against the protobuf
runtime's (upb) parsing of the same message, built from TenSEAL's tensors.proto at run time,
and against the whole `parse_update` it is part of. The protobuf column needs the `protobuf`
package, which is not a dependency (TenSEAL does not install it): without it, it reads "-".

Run: `.venv/bin/python bench/bench_he_framing.py`.
"""

from __future__ import annotations

import struct
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table  # noqa: E402
from privacy_api.crypto import he as server  # noqa: E402
from privacy_client import he as sdk  # noqa: E402

LENGTH = 100_000


def protobuf_reader() -> Callable[[bytes], Any] | None:
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        return None
    fdp = descriptor_pb2.FileDescriptorProto(name="tensors.proto", package="tenseal", syntax="proto3")
    msg = fdp.message_type.add(name="CKKSVectorProto")
    field = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="sizes", number=1, type=field.TYPE_UINT32, label=field.LABEL_REPEATED)
    msg.field.add(name="ciphertexts", number=2, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    msg.field.add(name="scale", number=3, type=field.TYPE_DOUBLE, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("tenseal.CKKSVectorProto"))

    def read(chunk: bytes) -> Any:
        parsed = cls.FromString(chunk)
        return list(parsed.sizes), memoryview(parsed.ciphertexts[0]), parsed.scale

    return read


def chunks_of(payload: bytes) -> list[bytes]:
    count, pos, out = struct.unpack_from("<I", payload, 16)[0], 20, []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", payload, pos)
        out.append(payload[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def best_ms(fn: Callable[[], Any], number: int = 20) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e3


def measure(preset: str, library: Callable[[bytes], Any] | None) -> list[Any]:
    secret, public = sdk.generate_keys(preset)
    ctx = server.load_public_context(public)
    payload = sdk.encrypt_update(secret, np.random.default_rng(1).uniform(-1, 1, LENGTH), 2.0)
    chunks = chunks_of(payload)
    views = [memoryview(c) for c in chunks]
    bound = server.update_size_bound(ctx, LENGTH)

    def ours() -> None:
        for v in views:
            fields = server._proto_fields(v, "chunk")
            server._packed_varints(fields[1][1][0], "chunk")  # type: ignore[arg-type]

    def whole() -> None:
        server.parse_update(ctx, payload, vector_length=LENGTH, max_bytes=bound)

    lib_ms = best_ms(lambda: [library(c) for c in chunks]) if library else None
    return [preset, len(chunks), len(chunks[0]), best_ms(ours) * 1e3 / len(chunks),
            "-" if lib_ms is None else lib_ms * 1e3 / len(chunks), best_ms(whole)]


def main() -> None:
    library = protobuf_reader()
    rows = [measure(preset, library) for preset in ("n8192", "n4096")]
    print_table(f"CKKSVectorProto framing, {LENGTH:,}-parameter update (best of 5)",
                ["preset", "chunks", "bytes/chunk", "ours us/chunk", "protobuf us/chunk",
                 "parse_update ms"], rows)


if __name__ == "__main__":
    main()
