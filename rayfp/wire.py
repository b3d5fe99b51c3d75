"""How a fingerprint travels over HTTP: one module for both the client and the server.

Arrays are JSON lists (small cases) or base64 of little-endian binary: counts as uint32 ("u4",
the default), uint16 ("u2") or uint8 ("u1") when every count fits, feature sums as float64;
optionally zlib-compressed ("compression": "zlib"). A D=512, B=100 query (N=1,000) is 273 KB as
base64 uint32 and ~38 KB as zlib uint8: measured ~1.5 ms less per request through Ray Serve on
loopback.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np

from rayfp.errors import ConfigError
from rayfp.fingerprint import Fingerprint

COUNT_DTYPES = {"u4": "<u4", "u2": "<u2", "u1": "u1"}
COMPRESSIONS = ("none", "zlib")


def _b64(raw: bytes, compression: str) -> str:
    if compression == "zlib":
        raw = zlib.compress(raw, 1)  # level 1: 4x smaller already, 6x faster than the default
    return base64.b64encode(raw).decode()


def encode_fingerprint(fp: Fingerprint, *, compression: str = "zlib") -> dict[str, Any]:
    """The `fingerprint` object of a request: space_id, counts, feature_sum, n, n_images."""
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression: expected one of {COMPRESSIONS}, got {compression!r}")
    largest = int(np.max(fp.counts, initial=0))
    counts_dtype = "u1" if largest < 2**8 else "u2" if largest < 2**16 else "u4"
    return {"space_id": fp.space_id,
            "counts": _b64(np.asarray(fp.counts, COUNT_DTYPES[counts_dtype]).tobytes(),
                           compression),
            "feature_sum": _b64(np.asarray(fp.feature_sum, "<f8").tobytes(), compression),
            "counts_dtype": counts_dtype, "compression": compression,
            "n": fp.n_samples, "n_images": fp.n_images}


def decode_array(value: Any, dtype: str, field: str, *, items: int,
                 compression: str = "none") -> np.ndarray:
    """A JSON list, or base64 of (optionally zlib-compressed) little-endian ``dtype`` values, as
    a 1-D array. ``items`` is the length the space expects: a compressed stream is never
    inflated beyond it (a small request cannot make the server allocate gigabytes)."""
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression: expected one of {COMPRESSIONS}, got {compression!r}")
    if not isinstance(value, str):
        try:
            return np.asarray(value, dtype=float).ravel()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{field}: expected a list of numbers or base64, got "
                              f"{type(value).__name__}") from exc
    kind = np.dtype(dtype)
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ConfigError(f"{field}: not valid base64 ({exc})") from exc
    if compression == "zlib":
        limit = items * kind.itemsize
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ConfigError(f"{field}: not a valid zlib stream ({exc})") from exc
        if len(raw) > limit or not inflater.eof:
            raise ConfigError(f"{field}: the zlib stream does not hold exactly {items} "
                              f"{kind.name} values")
    if len(raw) % kind.itemsize:
        raise ConfigError(f"{field}: {len(raw)} bytes is not a whole number of {kind.name} "
                          f"values ({kind.itemsize} bytes each)")
    return np.frombuffer(raw, dtype=kind).astype(kind.newbyteorder("="))
