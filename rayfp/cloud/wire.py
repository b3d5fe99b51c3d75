"""How a fingerprint travels over HTTP: one module for both the client and the server.

Arrays are JSON lists (small cases) or base64 of little-endian binary: counts as uint32 ("u4",
the default), uint16 ("u2") or uint8 ("u1") when every count fits, feature sums as float64;
optionally zlib-compressed ("compression": "zlib"). A D=512, B=100 query (N=1,000) is 273 KB as
base64 uint32 and ~38 KB as zlib uint8, which is also faster through Ray Serve (BENCHMARKS.md).

The cloud install decodes with pybase64 (SIMD base64) and zlib-ng (the same zlib streams): a
query of N = 10,000 (102 KB of uint16 counts) is decoded and checked in 0.42 ms, not 0.80, on
the AVX2 EPYC of BENCHMARKS.md ("Query decoding"). The light client falls back to the standard
library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rayfp.core.fingerprint import Fingerprint, FingerprintSpace
from rayfp.defaults import MAX_SAMPLES
from rayfp.errors import ConfigError, TooFewImagesError
from rayfp.registry import look_up

try:  # the cloud extra: the same results, faster
    from pybase64 import b64decode, b64encode
except ImportError:  # pragma: no cover - the light client
    from base64 import b64decode, b64encode
try:
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - the light client
    import zlib

COUNT_DTYPES = {"u4": "<u4", "u2": "<u2", "u1": "u1"}
COMPRESSIONS = ("none", "zlib")


def _b64(raw: bytes, compression: str) -> str:
    if compression == "zlib":
        raw = zlib.compress(raw, 1)  # level 1: 4x smaller already, 6x faster than the default
    return b64encode(raw).decode()


def encode_fingerprint(fp: Fingerprint, *, compression: str = "zlib") -> dict[str, Any]:
    """The `fingerprint` object of a request: space_id, counts, feature_sum, n, n_images and
    the privacy record (how the counts were released)."""
    look_up("compression", compression, COMPRESSIONS)
    largest = int(np.max(fp.counts, initial=0))
    counts_dtype = "u1" if largest < 2**8 else "u2" if largest < 2**16 else "u4"
    return {"space_id": fp.space_id,
            "counts": _b64(np.asarray(fp.counts, COUNT_DTYPES[counts_dtype]).tobytes(),
                           compression),
            "feature_sum": _b64(np.asarray(fp.feature_sum, "<f8").tobytes(), compression),
            "counts_dtype": counts_dtype, "compression": compression,
            "n": fp.n_samples, "n_images": fp.n_images, "privacy": dict(fp.privacy)}


def write_fingerprint_file(fp: Fingerprint, path) -> None:
    """A released fingerprint as a file (`rayfp fingerprint --out`): exactly the object a query
    sends, nothing more (released counts, feature sums, n, the privacy record), with its task
    id. The cloud's web page uploads it as a query."""
    import json

    with open(path, "w") as handle:
        json.dump({"task_id": fp.task_id, "fingerprint": encode_fingerprint(fp)}, handle)


def decode_array(value: Any, dtype: str, field: str, *, items: int,
                 compression: str = "none") -> np.ndarray:
    """A JSON list, or base64 of (optionally zlib-compressed) little-endian ``dtype`` values, as
    a 1-D array. ``items`` is the length the space expects: a compressed stream is never
    inflated beyond it (a small request cannot make the server allocate gigabytes)."""
    look_up("compression", compression, COMPRESSIONS)
    if not isinstance(value, str):
        try:
            return np.asarray(value, dtype=float).ravel()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{field}: expected a list of numbers or base64, got "
                              f"{type(value).__name__}") from exc
    kind = np.dtype(dtype)
    try:
        raw = b64decode(value, validate=True)
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


def decode_fingerprint(space: FingerprintSpace, *, task_id: str, counts: Any, feature_sum: Any,
                       n: int, n_images: int | None = None, min_images: int = 1,
                       counts_dtype: str = "u4", compression: str = "none",
                       privacy: Mapping[str, Any] | None = None) -> Fingerprint:
    """A client's fingerprint (the wire form above), validated against its space: shapes,
    non-negative finite integer counts summing to n per dimension, finite sums, n and image
    minimums."""
    look_up("counts_dtype", counts_dtype, COUNT_DTYPES)
    expected = space.dim * space.bins
    flat = decode_array(counts, COUNT_DTYPES[counts_dtype], "counts", items=expected,
                        compression=compression)
    sums = decode_array(feature_sum, "<f8", "feature_sum", items=space.dim,
                        compression=compression)
    if flat.size != expected:
        raise ConfigError(f"counts: expected {space.dim} x {space.bins} = {expected} values "
                          f"(dimension-major) for space {space.space_id}, got {flat.size}")
    if sums.size != space.dim:
        raise ConfigError(f"feature_sum: expected {space.dim} values, got {sums.size}")
    if flat.dtype.kind != "u" and (not np.isfinite(flat).all() or (flat < 0).any()
                                   or (flat != np.round(flat)).any()):  # lists: JSON numbers
        raise ConfigError("counts: expected non-negative finite integers")
    if n < 1:
        raise ConfigError(f"n: expected >= 1 samples, got {n}")
    # Checked before any cast: a count above n can only be wrong, and 2^63 would wrap int64.
    if flat.size and float(flat.max()) > n:
        raise ConfigError(f"counts: a count of {float(flat.max()):.0f} is more than the n = {n} "
                          "samples of its dimension")
    if not np.isfinite(sums).all():
        raise ConfigError("feature_sum: expected finite numbers")
    matrix = flat.astype(np.int64).reshape(space.dim, space.bins)
    row_sums = matrix.sum(axis=1)
    if (row_sums != n).any():
        bad = int(np.argmax(row_sums != n))
        raise ConfigError(f"counts: every dimension must hold n = {n} samples; dimension {bad} "
                          f"holds {int(row_sums[bad])}")
    images = n if n_images is None else n_images
    if images < min_images:
        raise TooFewImagesError(f"n_images = {images} is below this server's minimum of "
                                f"{min_images} distinct images")
    return Fingerprint(task_id=task_id, space_id=space.space_id, counts=matrix,
                       feature_sum=sums.astype(np.float64), n_samples=int(n), n_images=int(images),
                       privacy=dict(privacy or {}))


def encode_replicates(replicates: list[Fingerprint], record: Mapping[str, Any], *,
                      compression: str = "zlib") -> dict[str, Any]:
    """The `replicates` object of a query: R fingerprints of the query's space stacked (counts
    R x D x B, feature sums R x D, one n each) and the record of how they were released."""
    look_up("compression", compression, COMPRESSIONS)
    counts = np.stack([np.asarray(fp.counts) for fp in replicates])
    largest = int(np.max(counts, initial=0))
    counts_dtype = "u1" if largest < 2**8 else "u2" if largest < 2**16 else "u4"
    return {"counts": _b64(counts.astype(COUNT_DTYPES[counts_dtype]).tobytes(), compression),
            "feature_sum": _b64(np.stack([fp.feature_sum for fp in replicates]).astype("<f8")
                                .tobytes(), compression),
            "counts_dtype": counts_dtype, "compression": compression,
            "n": [int(fp.n_samples) for fp in replicates], "privacy": dict(record)}


MAX_REPLICATES = 64


def decode_replicates(space: FingerprintSpace, query: Fingerprint, *, counts: Any,
                      feature_sum: Any, n: list[int], counts_dtype: str = "u4",
                      compression: str = "none") -> list[Fingerprint]:
    """A query's replicates, each validated like a fingerprint (non-negative integer counts,
    n_r samples in every dimension, finite sums)."""
    look_up("counts_dtype", counts_dtype, COUNT_DTYPES)
    r = len(n)
    if not 1 <= r <= MAX_REPLICATES:
        raise ConfigError(f"replicates: expected 1 to {MAX_REPLICATES}, got {r}")
    cells = space.dim * space.bins
    flat = decode_array(counts, COUNT_DTYPES[counts_dtype], "replicates.counts",
                        items=r * cells, compression=compression)
    sums = decode_array(feature_sum, "<f8", "replicates.feature_sum", items=r * space.dim,
                        compression=compression)
    if flat.size != r * cells or sums.size != r * space.dim:
        raise ConfigError(f"replicates: expected {r} x {space.dim} x {space.bins} counts and "
                          f"{r} x {space.dim} sums, got {flat.size} and {sums.size}")
    counts = flat.reshape(r, space.dim, space.bins)
    if flat.dtype.kind != "u" and (not np.isfinite(flat).all() or (flat < 0).any()
                                   or (flat != np.round(flat)).any()):  # lists: JSON numbers
        raise ConfigError("replicates.counts: expected non-negative finite integers")
    n = np.asarray(n, np.int64)
    if (n < 1).any() or (n > MAX_SAMPLES).any():
        raise ConfigError(f"replicates: every n must be in 1..{MAX_SAMPLES}")
    if flat.size and float(flat.max()) > float(n.max()):  # before the cast: 2^63 would wrap
        raise ConfigError(f"replicates.counts: a count of {float(flat.max()):.0f} is more than "
                          "its replicate's n")
    counts = counts.astype(np.int64)
    sums = sums.reshape(r, space.dim)
    if not np.isfinite(sums).all():
        raise ConfigError("replicates.feature_sum: expected finite numbers")
    bad = np.argwhere(counts.sum(axis=2) != n[:, None])
    if len(bad):
        i, d = (int(v) for v in bad[0])
        raise ConfigError(f"replicates[{i}]: counts: every dimension must hold n = {n[i]} "
                          f"samples; dimension {d} holds {int(counts[i, d].sum())}")
    return [Fingerprint(task_id=query.task_id, space_id=space.space_id, counts=counts[i],
                        feature_sum=sums[i].astype(np.float64), n_samples=int(n[i]),
                        n_images=query.n_images, privacy=dict(query.privacy))
            for i in range(r)]
