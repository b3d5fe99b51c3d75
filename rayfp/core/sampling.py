"""The paper's sampling of augmented views (DESIGN §1.2) and the bounded plan a private release
needs (DESIGN §5): which image, crop and flip each of a task's N views gets. Pure numpy."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from rayfp.errors import ConfigError

# Random crop of 224 out of the 256x256 canonical image: offsets 0..32 inclusive.
CANONICAL_SIZE = 256
CROP_SIZE = 224


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """The paper's sampling: N augmented views drawn uniformly with replacement.

    image_index: (N,) int64 into the task's image list (its sampling units: an image, or a
    volume); crop_top/crop_left: (N,) int16 offsets of the 224 crop in the 256x256 canonical
    image; flip: (N,) bool horizontal flip; slice_u: (N,) uniform [0, 1) that picks the slice
    of a volume (drawn last, so the other draws are those of a plan without volumes).
    """

    image_index: np.ndarray
    crop_top: np.ndarray
    crop_left: np.ndarray
    flip: np.ndarray
    slice_u: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_index)

    def grouped_by_image(self) -> Iterable[tuple[int, np.ndarray]]:
        """Yield (image index, sample indices) so that each image is decoded once."""
        order = np.argsort(self.image_index, kind="stable")
        sorted_images = self.image_index[order]
        starts = np.flatnonzero(np.r_[True, sorted_images[1:] != sorted_images[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts, ends):
            yield int(sorted_images[s]), order[s:e]


PAPER_PLAN = "paper"
BALANCED_PLAN = "balanced"
PLANS = (PAPER_PLAN, BALANCED_PLAN)


def sample_plan(n_images: int, n_samples: int, seed: int, *, plan: str = PAPER_PLAN
                ) -> SamplePlan:
    """Draw the augmented views of one task; identical for identical (n_images, n_samples, seed,
    plan).

    ``paper``: images uniformly with replacement (DESIGN §1.2), so one image may give many more
    than N/M views. ``balanced``: every image gives floor(N/M) or ceil(N/M) views (a seeded
    permutation decides which), so no image contributes more than :func:`views_per_image_cap`;
    the bounded contribution differential privacy needs (DESIGN §5)."""
    if n_images < 1:
        raise ConfigError(f"a task needs at least one image to sample from, got {n_images}")
    if n_samples < 1:
        raise ConfigError(f"samples must be >= 1, got {n_samples}")
    if plan not in PLANS:
        raise ConfigError(f"unknown sampling plan {plan!r}; expected one of {PLANS}")
    rng = np.random.default_rng(seed)
    max_offset = CANONICAL_SIZE - CROP_SIZE + 1
    if plan == BALANCED_PLAN:
        image_index = rng.permutation(n_images)[np.arange(n_samples) % n_images]
    else:
        image_index = rng.integers(0, n_images, size=n_samples, dtype=np.int64)
    return SamplePlan(
        image_index=image_index.astype(np.int64),
        crop_top=rng.integers(0, max_offset, size=n_samples).astype(np.int16),
        crop_left=rng.integers(0, max_offset, size=n_samples).astype(np.int16),
        flip=rng.random(n_samples) < 0.5,
        slice_u=rng.random(n_samples),
    )


def views_per_image_cap(n_images: int, n_samples: int, *, plan: str = PAPER_PLAN,
                        seed: int = 0) -> int:
    """The most views any one image gives to the task's N: ceil(N/M) for the balanced plan; for
    the paper's plan the largest multiplicity its seeded draw happens to have. Both depend only
    on public numbers (M, N, seed), never on the images."""
    if plan == BALANCED_PLAN:
        return -(-n_samples // max(1, n_images))
    drawn = sample_plan(n_images, n_samples, seed, plan=plan).image_index
    return int(np.bincount(drawn, minlength=n_images).max())
