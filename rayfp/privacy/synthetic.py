"""Synthetic tasks for privacy experiments at scale: correlated Gaussian features with an image
level and a view level, grouped in families of related tasks.

A task's image i has features ``mean + factors @ z_i + image_noise * e_i``; each augmented view
adds ``view_noise * xi``. Tasks of one family share a centre and factors, so a knowledge base of
them has near neighbours (the hard case for a noisy ranking). Numbers drawn here are not real
features; they show how the risk and the utility scale with M, N and ε, and the real-feature
audit (rayfp.cli.audit) checks the same on a backbone's features.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import ndtr

from rayfp.core.fingerprint import Fingerprint, FingerprintSpace, compute_edges
from rayfp.privacy.audit import ViewBank
from rayfp.privacy.postprocess import round_keeping_sum

SYNTHETIC_BACKBONE = "synthetic"


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """One task's feature distribution. mean: (D,); factors: (D, r)."""

    name: str
    family: int
    mean: np.ndarray
    factors: np.ndarray
    image_noise: float
    view_noise: float

    @property
    def dim(self) -> int:
        return len(self.mean)

    def images(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """(count, D) image-level features."""
        latent = rng.standard_normal((count, self.factors.shape[1]))
        return (self.mean + latent @ self.factors.T
                + self.image_noise * rng.standard_normal((count, self.dim)))

    def view_bank(self, count: int, views: int, rng: np.random.Generator) -> ViewBank:
        """``views`` augmented views of each of ``count`` fresh images."""
        images = self.images(count, rng)
        noise = self.view_noise * rng.standard_normal((count, views, self.dim))
        return ViewBank((images[:, None, :] + noise).astype(np.float32))

    def views(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(sum(counts), D) views: ``counts[i]`` views of fresh image i."""
        images = self.images(len(counts), rng)
        repeated = np.repeat(images, counts, axis=0)
        return repeated + self.view_noise * rng.standard_normal(repeated.shape)

    @property
    def marginal_std(self) -> np.ndarray:
        """(D,) standard deviation of one view's features."""
        return np.sqrt((self.factors ** 2).sum(axis=1) + self.image_noise ** 2
                       + self.view_noise ** 2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskFamilies:
    """How synthetic tasks are drawn: ``families`` centres ~ N(0, 1) per dimension; a task's
    mean is its centre plus ``spread`` x N(0, 1); factors (rank ``rank``) per family."""

    dim: int = 512
    families: int = 20
    spread: float = 0.3
    rank: int = 16
    factor_scale: float = 0.6
    image_noise: float = 0.5
    view_noise: float = 0.25
    seed: int = 0

    def draw(self, count: int, *, prefix: str = "task", offset: int = 0) -> list[SyntheticTask]:
        """``count`` tasks, spread round-robin over the families; ``offset`` continues the
        stream (held-out tasks of the same families)."""
        rng = np.random.default_rng(self.seed)
        centres = rng.standard_normal((self.families, self.dim))
        factors = rng.standard_normal((self.families, self.dim, self.rank)) * (
            self.factor_scale / np.sqrt(self.rank))
        tasks = []
        task_rng = np.random.default_rng([self.seed, offset])
        for i in range(count):
            family = (offset + i) % self.families
            mean = centres[family] + self.spread * task_rng.standard_normal(self.dim)
            tasks.append(SyntheticTask(f"{prefix}-{offset + i:05d}", family, mean,
                                       factors[family], self.image_noise, self.view_noise))
        return tasks


def synthetic_space(tasks: list[SyntheticTask], *, bins: int = 100, per_task: int = 200,
                    seed: int = 0) -> FingerprintSpace:
    """A space whose edges are the 5 %/95 % quantiles of views of these reference tasks."""
    rng = np.random.default_rng(seed)
    views = np.concatenate([t.views(np.ones(per_task, np.int64), rng) for t in tasks])
    lo, hi = compute_edges(views)
    return FingerprintSpace(backbone=SYNTHETIC_BACKBONE, weights_sha256="0" * 64,
                            preprocessing={"synthetic": True}, dim=tasks[0].dim, bins=bins,
                            edges_lo=lo, edges_hi=hi, reference="synthetic")


def expected_fingerprint(task: SyntheticTask, space: FingerprintSpace, *, samples: int,
                         n_images: int) -> Fingerprint:
    """The task's fingerprint at its expected bin probabilities (many images): the Gaussian
    marginal integrated over each bin, outside values in the edge bins, rounded keeping n."""
    lo = space.edges_lo.astype(np.float64)[:, None]
    width = (space.edges_hi.astype(np.float64) - space.edges_lo)[:, None]
    inner = lo + width * np.arange(1, space.bins)[None, :] / space.bins
    cdf = ndtr((inner - task.mean[:, None]) / task.marginal_std[:, None])
    probabilities = np.diff(np.c_[np.zeros(space.dim), cdf, np.ones(space.dim)], axis=1)
    counts = round_keeping_sum(probabilities * samples, samples)
    mean = np.clip(task.mean, space.edges_lo, space.edges_hi)
    return Fingerprint(task_id=task.name, space_id=space.space_id, counts=counts,
                       feature_sum=mean * samples, n_samples=samples, n_images=n_images)
