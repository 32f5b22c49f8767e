"""How an import worker sends its prepared rows back: msgpack, decoded into the same types.

A chunk's results are thousands of small dataclasses. Pickling them, even with compact
`__reduce__` hooks, cost the worker about 14 µs and the importing process about 22 µs per
record; msgpack with msgspec costs 3.6 µs to encode and 9.6 µs to decode (measured on the
benchmark's customers, 20 chunks of 1,000). msgpack cannot carry an integer beyond 64 bits,
which a trait may hold (a long loyalty or card number read from a CSV file): such a chunk, or
one holding anything else msgpack cannot carry, travels as a pickle instead, so every value
arrives as it was read.
"""

from __future__ import annotations

import pickle

import msgspec

from cdp.errors import FieldError
from cdp.profiles.service import Prepared

# (row number, the prepared record or None, the row's errors or None), as importer.prepare_rows
Results = list[tuple[int, Prepared | None, list[FieldError] | None]]

_MSGPACK, _PICKLE = b"M", b"P"
_encoder = msgspec.msgpack.Encoder(uuid_format="bytes")
_decoder = msgspec.msgpack.Decoder(Results)


def encode_results(results: Results) -> bytes:
    try:
        return _MSGPACK + _encoder.encode(results)
    except Exception:  # e.g. OverflowError: anything msgpack cannot hold
        return _PICKLE + pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)


def decode_results(data: bytes) -> Results:
    """Results that `encode_results` made, in a worker process of this import."""
    if data[:1] == _PICKLE:
        return pickle.loads(memoryview(data)[1:])
    return _decoder.decode(memoryview(data)[1:])
