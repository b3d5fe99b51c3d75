"""Fingerprint spaces, partial histogram counts, exact merge and finalise (the sampling of views
is rayfp.core.sampling).

A fingerprint is additive: ``counts`` (D, B) integers, ``feature_sum`` (D,) float64 and ``n``.
Shards, Ray blocks or whole sites compute :class:`PartialCounts` independently; merging is a sum
(docs/design.md §1.3). Nothing here imports torch or Ray.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rayfp.errors import ConfigError, SpaceMismatchError

EDGE_QUANTILES = (0.05, 0.95)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FingerprintSpace:
    """Everything that makes two fingerprints comparable (docs/design.md §1.1).

    ``edges_lo`` / ``edges_hi``: (D,) float32, the per-dimension 5 % / 95 % quantiles of the
    reference features; ``bins`` equal-width bins lie between them.
    """

    backbone: str
    weights_sha256: str
    preprocessing: Mapping[str, Any]
    dim: int
    bins: int
    edges_lo: np.ndarray
    edges_hi: np.ndarray
    reference: str = ""
    created_at: str = dataclasses.field(default_factory=_utc_now)

    def __post_init__(self) -> None:
        lo = np.ascontiguousarray(self.edges_lo, dtype=np.float32)
        hi = np.ascontiguousarray(self.edges_hi, dtype=np.float32)
        object.__setattr__(self, "edges_lo", lo)
        object.__setattr__(self, "edges_hi", hi)
        if self.bins < 2:
            raise ConfigError(f"bins must be >= 2, got {self.bins}")
        if lo.shape != (self.dim,) or hi.shape != (self.dim,):
            raise ConfigError(
                f"edges must have shape ({self.dim},) for dim={self.dim}; "
                f"got edges_lo {lo.shape}, edges_hi {hi.shape}"
            )
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ConfigError("edges must be finite; recompute them from reference features")
        if (hi < lo).any():
            bad = int(np.argmax(hi < lo))
            raise ConfigError(f"edges_hi < edges_lo at dimension {bad}: {hi[bad]} < {lo[bad]}")

    @property
    def space_id(self) -> str:
        """Short hash of (backbone, weights, preprocessing, D, B, edges); not of metadata."""
        h = hashlib.sha256()
        header = json.dumps(
            [self.backbone, self.weights_sha256, dict(self.preprocessing), self.dim, self.bins],
            sort_keys=True,
            separators=(",", ":"),
        )
        h.update(header.encode())
        h.update(self.edges_lo.astype("<f4").tobytes())
        h.update(self.edges_hi.astype("<f4").tobytes())
        return h.hexdigest()[:16]

    def to_record(self) -> dict[str, Any]:
        """Plain values (lists, a dict): a store row, a JSON answer, everything a client needs
        to fingerprint locally in this space."""
        return {"space_id": self.space_id, "backbone": self.backbone,
                "weights_sha256": self.weights_sha256, "preprocessing": dict(self.preprocessing),
                "dim": self.dim, "bins": self.bins, "edges_lo": self.edges_lo.tolist(),
                "edges_hi": self.edges_hi.tolist(), "reference": self.reference,
                "created_at": self.created_at}

    @classmethod
    def from_record(cls, row: Mapping[str, Any]) -> FingerprintSpace:
        """Inverse of :meth:`to_record` (``preprocessing`` may be a JSON string). A given
        ``space_id`` must match the content's hash: anything else was altered."""
        preprocessing = row["preprocessing"]
        space = cls(backbone=row["backbone"], weights_sha256=row["weights_sha256"],
                    preprocessing=json.loads(preprocessing) if isinstance(preprocessing, str)
                    else preprocessing, dim=row["dim"], bins=row["bins"],
                    edges_lo=np.asarray(row["edges_lo"], np.float32),
                    edges_hi=np.asarray(row["edges_hi"], np.float32),
                    reference=row.get("reference") or "",
                    created_at=row.get("created_at") or _utc_now())
        if row.get("space_id") and space.space_id != row["space_id"]:
            raise SpaceMismatchError(f"the space's content hashes to {space.space_id}, not "
                                     f"{row['space_id']}: it was altered (edited, corrupted or "
                                     "changed in transit)")
        return space

    @property
    def degenerate_dims(self) -> np.ndarray:
        """Indices of dimensions with lo == hi (all their mass goes to bin 0)."""
        return np.flatnonzero(self.edges_hi <= self.edges_lo)


def compute_edges(features: np.ndarray, *, quantiles: tuple[float, float] = EDGE_QUANTILES
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension lower/upper bin edges from reference features.

    features: (N, D) float. Returns (lo, hi), each (D,) float32.

    >>> lo, hi = compute_edges(np.arange(100.0)[:, None])
    >>> float(lo[0]), float(hi[0])
    (4.95, 94.05)
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ConfigError(f"features must be (N >= 2, D); got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ConfigError("reference features contain NaN or inf")
    lo, hi = np.quantile(features.astype(np.float64), quantiles, axis=0)
    return lo.astype(np.float32), hi.astype(np.float32)


def clip_to_edges(features: np.ndarray, space: FingerprintSpace) -> np.ndarray:
    """Features clipped into the space's box [lo, hi] per dimension: what a private release sums,
    so one view moves the feature sum by at most ``hi - lo`` per dimension.

    features: (N, D) float -> (N, D) float64."""
    return np.clip(np.asarray(features, np.float64), space.edges_lo.astype(np.float64),
                   space.edges_hi.astype(np.float64))


def bin_indices(features: np.ndarray, space: FingerprintSpace) -> np.ndarray:
    """Bin index of each value: equal-width bins on [lo, hi], values outside clipped into the edge
    bins (torch.histc after clamp). Degenerate dimensions (lo == hi) put everything in bin 0.

    features: (N, D) float. Returns (N, D) int64 in [0, B).
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != space.dim:
        raise SpaceMismatchError(
            f"features have shape {features.shape}; the space expects (N, {space.dim})"
        )
    lo = space.edges_lo.astype(np.float64)
    width = space.edges_hi.astype(np.float64) - lo
    safe_width = np.where(width > 0, width, 1.0)
    scaled = (features - lo) / safe_width * space.bins
    # NaN features would silently land in bin 0: refuse them instead.
    if not np.isfinite(scaled).all():
        raise ConfigError("features contain NaN or inf; the backbone output is broken")
    idx = np.clip(np.floor(scaled), 0, space.bins - 1).astype(np.int64)
    idx[:, width <= 0] = 0
    return idx


@dataclasses.dataclass
class PartialCounts:
    """Additive partial fingerprint: counts (D, B) int64, feature_sum (D,) float64, n samples."""

    space_id: str
    counts: np.ndarray
    feature_sum: np.ndarray
    n: int

    @classmethod
    def empty(cls, space: FingerprintSpace) -> PartialCounts:
        return cls(space.space_id, np.zeros((space.dim, space.bins), np.int64),
                   np.zeros(space.dim, np.float64), 0)

    @classmethod
    def from_features(cls, features: np.ndarray, space: FingerprintSpace, *,
                      clip_sum: bool = False) -> PartialCounts:
        """Histogram a batch of features: (N, D) float -> partial counts. ``clip_sum`` sums the
        features clipped to the space's edges (the private recipe's bounded sum)."""
        idx = bin_indices(features, space)
        n, d = idx.shape
        flat = (np.arange(d, dtype=np.int64) * space.bins + idx).ravel()
        counts = np.bincount(flat, minlength=d * space.bins).reshape(d, space.bins)
        summed = clip_to_edges(features, space) if clip_sum else np.asarray(features, np.float64)
        feature_sum = summed.sum(axis=0)
        return cls(space.space_id, counts.astype(np.int64), feature_sum, n)

    def __add__(self, other: PartialCounts) -> PartialCounts:
        return merge_counts([self, other])


def merge_counts(parts: Iterable[PartialCounts]) -> PartialCounts:
    """Exact merge: integer counts add, feature sums add, n adds. All parts must share a space."""
    parts = list(parts)
    if not parts:
        raise ConfigError("merge_counts needs at least one partial count")
    space_ids = {p.space_id for p in parts}
    if len(space_ids) > 1:
        raise SpaceMismatchError(f"cannot merge counts of different spaces: {sorted(space_ids)}")
    counts = np.sum([p.counts for p in parts], axis=0, dtype=np.int64)
    feature_sum = np.sum([p.feature_sum for p in parts], axis=0, dtype=np.float64)
    return PartialCounts(parts[0].space_id, counts, feature_sum, sum(p.n for p in parts))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fingerprint:
    """A finalised task fingerprint as stored (docs/design.md §2 `fingerprints`)."""

    task_id: str
    space_id: str
    counts: np.ndarray  # (D, B) integer
    feature_sum: np.ndarray  # (D,) float64
    n_samples: int
    n_images: int
    source: str = ""
    privacy: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    created_at: str = dataclasses.field(default_factory=_utc_now)

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 2:
            raise ConfigError(f"counts must be (D, B); got shape {counts.shape}")
        if self.n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {self.n_samples}")
        if np.asarray(self.feature_sum).shape != (counts.shape[0],):
            raise ConfigError(
                f"feature_sum must be ({counts.shape[0]},); got {np.asarray(self.feature_sum).shape}"
            )

    def to_record(self) -> dict[str, Any]:
        """Plain values: counts as a flat dimension-major (D·B,) array (index d·B + b)."""
        return {"task_id": self.task_id, "space_id": self.space_id, "dim": self.dim,
                "bins": self.bins, "counts": np.asarray(self.counts).ravel(),
                "feature_sum": np.asarray(self.feature_sum, np.float64),
                "n_samples": self.n_samples, "n_images": self.n_images,
                "created_at": self.created_at, "source": self.source,
                "privacy": dict(self.privacy)}

    @classmethod
    def from_record(cls, row: Mapping[str, Any]) -> Fingerprint:
        """Inverse of :meth:`to_record` (``privacy`` may be a JSON string)."""
        privacy = row.get("privacy") or {}
        return cls(task_id=row["task_id"], space_id=row["space_id"],
                   counts=np.asarray(row["counts"], np.int64).reshape(row["dim"], row["bins"]),
                   feature_sum=np.asarray(row["feature_sum"], np.float64),
                   n_samples=int(row["n_samples"]), n_images=int(row["n_images"]),
                   source=row.get("source") or "",
                   privacy=json.loads(privacy) if isinstance(privacy, str) else dict(privacy),
                   created_at=row.get("created_at") or _utc_now())

    @property
    def dim(self) -> int:
        return int(self.counts.shape[0])

    @property
    def bins(self) -> int:
        return int(self.counts.shape[1])

    @property
    def probabilities(self) -> np.ndarray:
        """P[d] = counts[d] / n, (D, B) float64 (docs/design.md §1.3 finalise)."""
        return np.asarray(self.counts, dtype=np.float64) / float(self.n_samples)

    @property
    def mean(self) -> np.ndarray:
        """Mean feature vector, (D,) float64."""
        return np.asarray(self.feature_sum, dtype=np.float64) / float(self.n_samples)


def finalize(partial: PartialCounts, *, task_id: str, n_images: int, source: str = "",
             privacy: Mapping[str, Any] | None = None) -> Fingerprint:
    """Turn merged partial counts into a stored fingerprint."""
    if partial.n < 1:
        raise ConfigError(f"task {task_id!r}: no samples were counted")
    return Fingerprint(task_id=task_id, space_id=partial.space_id, counts=partial.counts,
                       feature_sum=partial.feature_sum, n_samples=partial.n, n_images=n_images,
                       source=source, privacy=dict(privacy or {}))


def check_same_space(a: Fingerprint, b: Fingerprint) -> None:
    """Raise SpaceMismatchError unless a and b are comparable."""
    if a.space_id != b.space_id or a.counts.shape != b.counts.shape:
        raise SpaceMismatchError(
            f"fingerprints {a.task_id!r} (space {a.space_id}, {a.counts.shape}) and {b.task_id!r} "
            f"(space {b.space_id}, {b.counts.shape}) are in different spaces; re-fingerprint "
            "one of them in the other's space"
        )


def common_space(fingerprints: Sequence[Fingerprint]) -> Fingerprint:
    """Check that there is at least one fingerprint and all share one space; returns the first
    (whose space_id, dim and bins describe them all)."""
    if not fingerprints:
        raise ConfigError("an index needs at least one source fingerprint")
    first = fingerprints[0]
    for fp in fingerprints[1:]:
        check_same_space(first, fp)
    return first


def task_key(task_id: str) -> str:
    """A filesystem-safe, collision-free key for any task id (96 bits of its sha256, hex): the
    store names a task's files by it and a sharded cloud places the task by it."""
    return hashlib.sha256(task_id.encode()).hexdigest()[:24]
