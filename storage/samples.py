"""Raw latency samples as one compact blob per run, so history keeps every iteration without a row each.

A run holds thousands of float64 latencies. One row per iteration would make the samples table the
largest and slowest part of the database; one blob per run is written and read in a single step.
Bytes are shuffled (all first bytes, then all second bytes, ...) before zlib: the sign, exponent and
high mantissa bytes of similar latencies repeat, so they compress well once grouped together.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

ENCODING_F64LE_SHUFFLE_ZLIB = "f64le-shuffle-zlib"
_WIDTH = 8  # bytes per float64


@dataclass(frozen=True, slots=True)
class EncodedSamples:
    """What the samples row stores: the encoding names the layout so that it can change later."""

    encoding: str
    count: int
    data: bytes


def encode_samples(values: Sequence[float]) -> EncodedSamples:
    floats = array("d", values)
    if sys.byteorder == "big":
        # The stored layout is little-endian whatever host wrote it.
        floats.byteswap()
    raw = floats.tobytes()
    shuffled = b"".join(raw[i::_WIDTH] for i in range(_WIDTH))
    return EncodedSamples(ENCODING_F64LE_SHUFFLE_ZLIB, len(floats), zlib.compress(shuffled, 6))


def decode_samples(encoded: EncodedSamples) -> list[float]:
    if encoded.encoding != ENCODING_F64LE_SHUFFLE_ZLIB:
        raise ValueError(f"unknown samples encoding {encoded.encoding!r}")
    shuffled = zlib.decompress(encoded.data)
    if len(shuffled) != encoded.count * _WIDTH:
        raise ValueError(f"samples blob holds {len(shuffled)} bytes, expected {encoded.count} float64")
    raw = bytearray(len(shuffled))
    for i in range(_WIDTH):
        raw[i::_WIDTH] = shuffled[i * encoded.count : (i + 1) * encoded.count]
    floats = array("d", bytes(raw))
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()
