"""The paper's sampling of augmented views (docs/design.md §1.2) and the keyed plan a private release
needs (docs/privacy.md): which image, crop and flip each of a task's N views gets. Pure numpy.

Why a keyed plan: differential privacy bounds what changes when one unit (an image, a volume,
a patient) is replaced by another. A plan that hands out views by a unit's *place* in the file
list breaks that bound: a replacing file whose name sorts elsewhere moves every unit in between
to another place, with other crops and another number of views. In the keyed plan everything a
unit gets is drawn from a key of the task's seed and the unit's own content, so replacing one
unit changes that unit's views and, at most, who holds one of the N mod M extra views.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence

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
# The first bounded plan: views by the unit's place in the file list. Kept so that old records
# read; its privacy guarantee fails for swaps that reorder files, so nothing releases with it.
BALANCED_PLAN = "balanced"
KEYED_PLAN = "keyed"  # the plan of every private release
PLANS = (PAPER_PLAN, BALANCED_PLAN, KEYED_PLAN)
_KEY_DOMAIN = b"rayfp/keyed-plan/v1"


def sample_plan(n_images: int, n_samples: int, seed: int, *, plan: str = PAPER_PLAN
                ) -> SamplePlan:
    """Draw the augmented views of one task; identical for identical (n_images, n_samples, seed,
    plan).

    ``paper``: images uniformly with replacement (docs/design.md §1.2), so one image may give many more
    than N/M views. ``balanced``: every image gives floor(N/M) or ceil(N/M) views (a seeded
    permutation decides which), so no image contributes more than :func:`views_per_image_cap`;
    the bounded contribution differential privacy needs (docs/design.md §5)."""
    if n_images < 1:
        raise ConfigError(f"a task needs at least one image to sample from, got {n_images}")
    if n_samples < 1:
        raise ConfigError(f"samples must be >= 1, got {n_samples}")
    if plan not in PLANS:
        raise ConfigError(f"unknown sampling plan {plan!r}; expected one of {PLANS}")
    if plan == KEYED_PLAN:
        raise ConfigError("the keyed plan draws from the units' content: use keyed_plan(unit "
                          "keys, ...) (rayfp.io.work.plan_work does)")
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


def unit_key(seed: int, content: bytes) -> bytes:
    """The key a unit's views are drawn from: sha256 of the task's seed and the unit's content
    digest (32 bytes). Public numbers and the unit itself, nothing of the other units."""
    return hashlib.sha256(_KEY_DOMAIN + int(seed).to_bytes(8, "little", signed=True)
                          + content).digest()


def _view_draw(key: bytes, view: int) -> tuple[int, int, bool, float]:
    """View ``view`` of the unit keyed ``key``: (crop top, crop left, flip, slice u). The draw
    of view t is the same whether the unit gets t + 1 views or more, so an extra view only adds."""
    d = hashlib.sha256(key + view.to_bytes(4, "little")).digest()
    offsets = CANONICAL_SIZE - CROP_SIZE + 1
    # 32-bit words modulo 33: a bias below 1e-8, irrelevant for an augmentation.
    return (int.from_bytes(d[0:4], "little") % offsets, int.from_bytes(d[4:8], "little") % offsets,
            bool(d[8] & 1), (int.from_bytes(d[9:16], "little") >> 3) / float(1 << 53))


def extra_views(n_units: int, n_samples: int) -> tuple[int, int]:
    """(q, r): in the keyed plan every unit gets q = floor(N/M) views, and r = N mod M units
    one more."""
    return divmod(n_samples, n_units)


def keyed_plan(contents: Sequence[bytes], n_samples: int, seed: int) -> SamplePlan:
    """The plan of a private release over M units whose content digests are ``contents`` (in
    any order; the plan's image_index refers to that order). Every unit gets floor(N/M) views;
    the N mod M units with the smallest keys get one more (so n = N exactly); each view's crop,
    flip and slice come from the unit's key alone.

    Replacing one unit by another changes that unit's views and moves at most one extra view
    between two other units: per dimension at most cap = ceil(N/M) views leave their bins and
    cap enter others, the bound the mechanism is calibrated for (tests/test_dptest.py
    attacks it with reordered, renamed and crafted files)."""
    if len(contents) < 1:
        raise ConfigError("a task needs at least one image to sample from, got 0")
    if n_samples < 1:
        raise ConfigError(f"samples must be >= 1, got {n_samples}")
    keys = [unit_key(seed, content) for content in contents]
    q, r = extra_views(len(keys), n_samples)
    # Ties (identical content) may go either way: identical units have identical views.
    extra = set(sorted(range(len(keys)), key=lambda i: keys[i])[:r])
    image_index, top, left, flip, slice_u = [], [], [], [], []
    for i, key in enumerate(keys):
        for view in range(q + (i in extra)):
            t, lft, f, u = _view_draw(key, view)
            image_index.append(i)
            top.append(t)
            left.append(lft)
            flip.append(f)
            slice_u.append(u)
    return SamplePlan(image_index=np.asarray(image_index, np.int64),
                      crop_top=np.asarray(top, np.int16), crop_left=np.asarray(left, np.int16),
                      flip=np.asarray(flip, bool), slice_u=np.asarray(slice_u, np.float64))


def views_per_image_cap(n_images: int, n_samples: int, *, plan: str = PAPER_PLAN,
                        seed: int = 0) -> int:
    """The most views any one image gives to the task's N: ceil(N/M) for the keyed (and the
    balanced) plan; for the paper's plan the largest multiplicity its seeded draw happens to
    have. Both depend only on public numbers (M, N, seed), never on the images."""
    if plan in (BALANCED_PLAN, KEYED_PLAN):
        return -(-n_samples // max(1, n_images))
    drawn = sample_plan(n_images, n_samples, seed, plan=plan).image_index
    return int(np.bincount(drawn, minlength=n_images).max())
