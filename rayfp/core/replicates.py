"""Per-view records a site keeps for itself, and the replicates made from them.

A fingerprint is a sum over views; keeping each view's bin indices and its image (locally, never
sent) makes resampling cheap: a replicate is the same views re-weighted by how often a
resampling drew their image, histogrammed by one sparse product instead of a new forward pass.

- bootstrap replicates (images drawn with replacement, M of M): the sampling uncertainty of a
  fingerprint, for per-query confidence;
- subsamples (m of M images without replacement): how a smaller task would have looked, for
  `rayfp stability`.

Exact replicates draw multinomial weights from (M, R, seed). Private replicates draw each
image's multiplicities from that image's own key (Poisson(1), truncated to a public norm bound):
replacing one image then changes its own multiplicities only, whatever the file order, and the
service checks the noise against the public bound (docs/privacy.md, "Replicates").
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.npzfile import load_npz, save_npz
from rayfp.errors import ConfigError, SpaceMismatchError

FORMAT = "rayfp-views-1"


@dataclasses.dataclass(frozen=True)
class ViewTable:
    """The views behind one fingerprint: view v is of image ``image_of_view[v]`` and falls in bin
    ``bins[v, d]`` of dimension d; ``image_sums[i]`` is the sum of image i's view features (the
    same clipping as the fingerprint's sum)."""

    space_id: str
    task_id: str
    images: tuple[str, ...]
    image_of_view: np.ndarray  # (V,) int32
    bins: np.ndarray  # (V, D) uint8 (B <= 256) or uint16
    image_sums: np.ndarray  # (M, D) float64

    def __post_init__(self) -> None:
        if self.bins.ndim != 2 or len(self.bins) != len(self.image_of_view):
            raise ConfigError("views: bins must be (V, D) with one image per view")
        if len(self.image_sums) != len(self.images):
            raise ConfigError("views: one feature sum per image expected")

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_views(self) -> int:
        return len(self.image_of_view)

    @classmethod
    def from_batches(cls, space: FingerprintSpace, task_id: str,
                     batches: list[tuple[list[str], np.ndarray, np.ndarray]],
                     images: list[str] | None = None) -> ViewTable:
        """From (image key per view, bin indices (V, D), summed features (V, D)) batches.
        ``images``: every image of the task (the paper's plan leaves some without a view; a
        bootstrap resamples all M); default: those that have views."""
        keys = [k for batch in batches for k in batch[0]]
        images = tuple(images) if images is not None else tuple(sorted(set(keys)))
        row = {key: i for i, key in enumerate(images)}
        missing = set(keys) - set(row)
        if missing:
            raise ConfigError(f"views of images not in the task: {sorted(missing)[:3]}")
        image_of_view = np.array([row[k] for k in keys], np.int32)
        dtype = np.uint8 if space.bins <= 256 else np.uint16
        bins = (np.concatenate([b[1] for b in batches]).astype(dtype) if batches
                else np.zeros((0, space.dim), dtype))
        features = (np.concatenate([b[2] for b in batches]) if batches
                    else np.zeros((0, space.dim)))
        sums = np.zeros((len(images), space.dim))
        np.add.at(sums, image_of_view, features.astype(np.float64))
        return cls(space.space_id, task_id, images, image_of_view, bins, sums)

    def anonymised(self) -> ViewTable:
        """The same table with each image named by a random nonce instead of its file name: what
        a store keeps (no file names, no content hashes), and the key private replicates draw
        an image's multiplicities from."""
        return dataclasses.replace(self, images=tuple(os.urandom(16).hex() for _ in self.images))

    def save(self, path: str | os.PathLike) -> Path:
        return save_npz(path, FORMAT, {"space_id": self.space_id, "task_id": self.task_id,
                                       "images": list(self.images)},
                        image_of_view=self.image_of_view, bins=self.bins,
                        image_sums=self.image_sums)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ViewTable:
        meta, arrays = load_npz(path, FORMAT, "view table")
        try:
            return cls(meta["space_id"], meta["task_id"], tuple(meta["images"]),
                       arrays["image_of_view"], arrays["bins"], arrays["image_sums"])
        except KeyError as exc:
            raise ConfigError(f"{path}: unreadable view table (no {exc})") from None

    # -- resampling -------------------------------------------------------------------------
    def _one_hot(self, space: FingerprintSpace):
        """(D*B, V) 0/1 sparse: column v marks view v's bin in every dimension."""
        import scipy.sparse

        if self.space_id != space.space_id:
            raise SpaceMismatchError(f"views of space {self.space_id} used in {space.space_id}")
        v, d = self.bins.shape
        flat = (np.arange(d, dtype=np.int64)[None, :] * space.bins + self.bins).ravel()
        views = np.repeat(np.arange(v), d)
        return scipy.sparse.csr_matrix((np.ones(v * d, np.float64), (flat, views)),
                                       shape=(d * space.bins, v))

    def weighted(self, space: FingerprintSpace, image_weights: np.ndarray
                 ) -> list[PartialCounts]:
        """One partial count per row of image_weights (R, M): each view counted as often as
        its image's weight (integers)."""
        weights = np.asarray(image_weights, np.int64)
        if weights.ndim != 2 or weights.shape[1] != self.n_images:
            raise ConfigError(f"image weights must be (R, {self.n_images})")
        per_view = weights[:, self.image_of_view].astype(np.float64)  # (R, V)
        counts = (self._one_hot(space) @ per_view.T).T  # (R, D*B), exact small integers
        views_per_image = np.bincount(self.image_of_view, minlength=self.n_images)
        n = weights @ views_per_image
        sums = weights.astype(np.float64) @ self.image_sums
        return [PartialCounts(space.space_id,
                              np.rint(c).astype(np.int64).reshape(space.dim, space.bins),
                              s, int(k)) for c, s, k in zip(counts, sums, n)]


def bootstrap_weights(n_images: int, replicates: int, seed: int) -> np.ndarray:
    """(R, M) multiplicities: each replicate draws M images with replacement."""
    if replicates < 1 or n_images < 1:
        raise ConfigError(f"need replicates >= 1 and images >= 1, got {replicates}, {n_images}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=replicates)


def poisson_bound(replicates: int) -> float:
    """The public bound L on an image's multiplicity norm ||c_i||_2 over R keyed Poisson
    replicates: E||c||^2 = 2R, sd sqrt(11R); L^2 = 2R + 4 sd (draws above it are redrawn)."""
    return math.sqrt(2 * replicates + 4 * math.sqrt(11 * replicates))


def keyed_poisson_weights(image_keys: Sequence[str], replicates: int, seed: int) -> np.ndarray:
    """(R, M) multiplicities of a private release's replicates: image i's R multiplicities are
    Poisson(1) draws from (its key, seed) alone, redrawn until their L2 norm is at most
    :func:`poisson_bound` (R). ``image_keys``: the view table's per-image keys (random
    nonces made when the views were kept, so no content hash is stored)."""
    if replicates < 1 or not image_keys:
        raise ConfigError(f"need replicates >= 1 and images >= 1, got {replicates}, "
                          f"{len(image_keys)}")
    bound2 = poisson_bound(replicates) ** 2
    out = np.zeros((replicates, len(image_keys)), np.int64)
    for i, key in enumerate(image_keys):
        digest = hashlib.sha256(f"rayfp/replicates/v1/{seed}/{key}".encode()).digest()
        rng = np.random.default_rng(np.frombuffer(digest, np.uint32))
        while True:
            c = rng.poisson(1.0, replicates)
            if c @ c <= bound2:
                break
        out[:, i] = c
    return out


def subsample_weights(n_images: int, size: int, draws: int, seed: int) -> np.ndarray:
    """(draws, M) 0/1: each draw keeps ``size`` of the M images."""
    if not 1 <= size <= n_images:
        raise ConfigError(f"subsample size must be in 1..{n_images}, got {size}")
    rng = np.random.default_rng(seed)
    out = np.zeros((draws, n_images), np.int64)
    for row in out:
        row[rng.choice(n_images, size, replace=False)] = 1
    return out


def multiplicity_norm(weights: np.ndarray) -> float:
    """max over images of the L2 norm of its multiplicities across replicates: how much more
    one image can move all replicates together than one fingerprint."""
    return float(np.sqrt((np.asarray(weights, np.float64) ** 2).sum(axis=0)).max())
