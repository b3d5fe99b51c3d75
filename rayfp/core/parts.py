"""A task fingerprinted in parts, one per site, merged exactly.

The sites announce their image counts M_1..M_K and agree on one seed.

- Private parts use the keyed plan (rayfp.core.sampling): every unit of the task gets
  q = floor(N/M) views drawn from its own key, and the r = N mod M extra views are shared out
  over the parts by their sizes (largest remainders, a public rule), so part k holds
  N_k = q·M_k + r_k views and no part needs another site's images. Replacing a unit changes
  only its own part, within the bound of a single-site release (cap = ceil(N/M)). When M
  divides N the merge equals a single site's keyed fingerprint of the union (tested).
- Exact parts keep the paper's plan: the single-site plan of all M images in part order (part
  1's images first), every site keeping the views of its own images; the merged counts equal a
  single site's fingerprint of the union taken in that order (tested).

With differential privacy each part carries noisy counts over the release bins, not yet
projected (projection is not additive); the merge sums them, then projects and spreads once.
Noise per part (``noise_share``): "full" gives every part the whole σ, so each part is
(ε, δ)-DP on its own, whoever sees it, and the merged one too (every image is in one part) with
√K times the noise; "split" gives every part σ/√K so the merged fingerprint has exactly σ, but a
single part is then only protected by the others' noise: use it only when parts are summed
before anyone sees them (secure aggregation), which this cloud does not do.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayfp import defaults
from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.npzfile import load_npz, save_npz
from rayfp.core.release import Release, is_private
from rayfp.core.sampling import (
    KEYED_PLAN,
    PLANS,
    SamplePlan,
    extra_views,
    keyed_plan,
    sample_plan,
)
from rayfp.errors import ConfigError, SpaceMismatchError

FORMAT = "rayfp-part-1"
NOISE_SHARES = ("full", "split")


@dataclasses.dataclass(frozen=True)
class PartPlan:
    """What all sites of one task agree on before anyone fingerprints."""

    task_id: str
    image_counts: tuple[int, ...]  # M_k of parts 1..K
    samples: int
    seed: int
    plan: str  # the sampling plan (paper for exact parts, keyed for private ones)

    def __post_init__(self) -> None:
        if not 1 <= len(self.image_counts) <= defaults.MAX_PARTS:
            raise ConfigError(f"a task has 1 to {defaults.MAX_PARTS} parts, got "
                              f"{len(self.image_counts)}")
        if min(self.image_counts) < 1 or sum(self.image_counts) > defaults.MAX_IMAGES:
            raise ConfigError(f"every part needs at least one image, and a task at most "
                              f"{defaults.MAX_IMAGES}; got {list(self.image_counts)[:8]}")
        if not 1 <= self.samples <= defaults.MAX_SAMPLES:
            raise ConfigError(f"samples must be in 1..{defaults.MAX_SAMPLES}, got {self.samples}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"the plan's seed must be in 0..2^63-1, got {self.seed}")
        if self.plan not in PLANS:
            raise ConfigError(f"unknown sampling plan {self.plan!r}; expected one of {PLANS}")

    @property
    def parts(self) -> int:
        return len(self.image_counts)

    @property
    def total_images(self) -> int:
        return sum(self.image_counts)

    def offset(self, part: int) -> int:
        self.check_part(part)
        return sum(self.image_counts[:part - 1])

    def check_part(self, part: int) -> None:
        if not 1 <= part <= self.parts:
            raise ConfigError(f"part must be in 1..{self.parts}, got {part}")

    def views_in(self, part: int) -> int:
        """How many of the task's N views part ``part`` holds (public: from M_k, N, seed)."""
        self.check_part(part)
        if self.plan != KEYED_PLAN:
            return len(self.views_of(part))
        q, r = extra_views(self.total_images, self.samples)
        return q * self.image_counts[part - 1] + self._extra_shares(r)[part - 1]

    def _extra_shares(self, r: int) -> list[int]:
        """r extra views over the parts in proportion to M_k, largest remainders first (ties
        to the earlier part); never more than M_k to a part since r < M."""
        exact = [r * m / self.total_images for m in self.image_counts]
        shares = [int(x) for x in exact]
        by_remainder = sorted(range(self.parts), key=lambda k: (-(exact[k] - shares[k]), k))
        for k in by_remainder[:r - sum(shares)]:
            shares[k] += 1
        return shares

    def views_of(self, part: int, contents: Sequence[bytes] | None = None) -> SamplePlan:
        """Part ``part``'s share of the task's views, indexed into its own unit list.
        ``contents``: its units' content digests (the keyed plan draws from them)."""
        self.check_part(part)
        if self.plan == KEYED_PLAN:
            if contents is None or len(contents) != self.image_counts[part - 1]:
                raise ConfigError(f"part {part} of {self.task_id!r}: the keyed plan needs the "
                                  f"content of its {self.image_counts[part - 1]} units")
            return keyed_plan(contents, self.views_in(part), self.seed)
        whole = sample_plan(self.total_images, self.samples, self.seed, plan=self.plan)
        start = self.offset(part)
        mine = (whole.image_index >= start) & (whole.image_index < start + self.image_counts[
            part - 1])
        return SamplePlan(image_index=whole.image_index[mine] - start,
                          crop_top=whole.crop_top[mine], crop_left=whole.crop_left[mine],
                          flip=whole.flip[mine], slice_u=whole.slice_u[mine])

    def to_record(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "image_counts": list(self.image_counts),
                "samples": self.samples, "seed": self.seed, "plan": self.plan}

    @classmethod
    def from_record(cls, row: dict[str, Any]) -> PartPlan:
        return cls(str(row["task_id"]), tuple(int(m) for m in row["image_counts"]),
                   int(row["samples"]), int(row["seed"]), str(row["plan"]))


def parse_part(text: str) -> tuple[int, int]:
    """'2/3' -> (2, 3)."""
    try:
        k, total = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--part expects k/K (e.g. 2/3), got {text!r}") from None
    if not 1 <= k <= total:
        raise ConfigError(f"--part {text}: k must be in 1..K")
    return k, total


def part_file_name(task_id: str, part: int, parts: int) -> str:
    """Where a site writes its part (``rayfp fingerprint --part``, the archive job)."""
    return f"{task_id}-part-{part}-of-{parts}.npz"


def read_site_parts(path: str | os.PathLike, *, samples: int, seed: int, plan: str
                    ) -> dict[str, tuple[PartPlan, int]]:
    """A site's share of pooled tasks, for the archive job: a JSON object
    ``{"task_id": {"part": k, "image_counts": [M_1, ..., M_K]}, ...}`` -> task -> (the task's
    plan, this site's part k). Samples, seed and plan are the job's, as every site's must be."""
    import json

    try:
        rows = json.loads(Path(path).read_text())
        out = {}
        for task_id, row in rows.items():
            task_plan = PartPlan(str(task_id), tuple(int(m) for m in row["image_counts"]),
                                 samples, seed, plan)
            task_plan.check_part(int(row["part"]))
            out[str(task_id)] = (task_plan, int(row["part"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{path}: expected a JSON object {{task_id: {{\"part\": k, "
                          f"\"image_counts\": [M_1, ..., M_K]}}}}; {exc!r}") from None
    return out


@dataclasses.dataclass(frozen=True)
class TaskPart:
    """One site's share of a task: exact integer counts (D, B), or, for a private task, noisy
    real counts over the release bins (D, release_bins) and the record of that noise."""

    space_id: str
    part: int
    plan: PartPlan
    counts: np.ndarray
    n_views: int
    feature_sum: np.ndarray
    privacy: dict[str, Any]  # {"dp": {...} or None, "noise_share": ...}

    def __post_init__(self) -> None:
        self.plan.check_part(self.part)

    @property
    def task_id(self) -> str:
        return self.plan.task_id

    @property
    def private(self) -> bool:
        return is_private(self.privacy)

    def save(self, path: str | os.PathLike, *, exclusive: bool = False) -> Path:
        return save_npz(path, FORMAT, {"space_id": self.space_id, "part": self.part,
                                       "plan": self.plan.to_record(), "n_views": self.n_views,
                                       "privacy": self.privacy}, exclusive=exclusive,
                        counts=self.counts, feature_sum=self.feature_sum)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskPart:
        meta, arrays = load_npz(path, FORMAT, "task part")
        try:
            return cls(meta["space_id"], int(meta["part"]), PartPlan.from_record(meta["plan"]),
                       arrays["counts"], int(meta["n_views"]), arrays["feature_sum"],
                       meta["privacy"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable task part ({exc!r})") from None

    def to_record(self) -> dict[str, Any]:
        """JSON for the wire (POST /v1/tasks/{id}/parts)."""
        return {"space_id": self.space_id, "part": self.part, "plan": self.plan.to_record(),
                "counts": np.asarray(self.counts, np.float64).ravel().tolist(),
                "shape": list(self.counts.shape), "n_views": self.n_views,
                "feature_sum": np.asarray(self.feature_sum, np.float64).tolist(),
                "privacy": self.privacy}

    @classmethod
    def from_record(cls, row: dict[str, Any]) -> TaskPart:
        try:
            shape = tuple(int(v) for v in row["shape"])
            counts = np.asarray(row["counts"], np.float64).reshape(shape)
            privacy = dict(row["privacy"] or {})
            if not isinstance(privacy.get("dp"), dict | None):
                raise ValueError(f"privacy.dp must be a record or null, got "
                                 f"{type(privacy['dp']).__name__}")
            return cls(str(row["space_id"]), int(row["part"]),
                       PartPlan.from_record(row["plan"]), counts, int(row["n_views"]),
                       np.asarray(row["feature_sum"], np.float64), privacy)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"a task part must carry space_id, part, plan, counts, shape, "
                              f"n_views, feature_sum and privacy ({exc})") from None


def validate_part(part: TaskPart, space: FingerprintSpace) -> None:
    """Raise ConfigError unless a part received from elsewhere fits its space and its plan:
    the view count its plan gives it, counts of the right shape (exact: D x B non-negative
    integers, n_views per dimension; private: D x release bins, finite)."""
    if part.space_id != space.space_id:
        raise SpaceMismatchError(f"part {part.part} is in space {part.space_id}, not "
                                 f"{space.space_id}")
    expected = part.plan.views_in(part.part)
    if part.n_views != expected:
        raise ConfigError(f"part {part.part} of {part.task_id!r} holds {part.n_views} views; "
                          f"its plan gives it {expected}")
    counts = np.asarray(part.counts)
    if part.private:
        bins = Release.of(part.privacy).release_bins or space.bins
        if not isinstance(bins, int) or not 2 <= bins <= space.bins or space.bins % bins:
            raise ConfigError(f"part {part.part}: release_bins must be a whole divisor of the "
                              f"space's {space.bins} bins, got {bins!r}")
        if counts.shape != (space.dim, bins) or not np.isfinite(counts).all():
            raise ConfigError(f"part {part.part}: expected finite noisy counts of shape "
                              f"({space.dim}, {bins}), got {counts.shape}")
        return
    if counts.shape != (space.dim, space.bins):
        raise ConfigError(f"part {part.part}: expected counts of shape ({space.dim}, "
                          f"{space.bins}), got {counts.shape}")
    if (counts < 0).any() or (counts != np.round(counts)).any() or (
            counts.sum(axis=1) != part.n_views).any():
        raise ConfigError(f"part {part.part}: exact counts must be non-negative integers with "
                          f"{part.n_views} views in every dimension")
    if np.asarray(part.feature_sum).shape != (space.dim,):
        raise ConfigError(f"part {part.part}: expected {space.dim} feature sums")


def check_parts(parts: Sequence[TaskPart]) -> None:
    """Raise unless the parts are all K parts, once each, of one task, plan and space."""
    check_compatible(parts)
    first = parts[0]
    missing = sorted(set(range(1, first.plan.parts + 1)) - {p.part for p in parts})
    if missing:
        raise ConfigError(f"{first.task_id!r} is still missing part(s) {missing} of "
                          f"{first.plan.parts}")


def check_compatible(parts: Sequence[TaskPart]) -> None:
    """Raise unless the parts (some or all) belong together: one task, plan, space and kind of
    release, no part twice."""
    if not parts:
        raise ConfigError("no parts to merge")
    first = parts[0]
    for p in parts:
        if p.space_id != first.space_id:
            raise SpaceMismatchError(f"part {p.part} of {p.task_id!r} is in space {p.space_id}, "
                                     f"part {first.part} in {first.space_id}")
        if p.plan != first.plan:
            raise ConfigError(f"part {p.part} of {p.task_id!r} was made with another plan "
                              f"({p.plan.to_record()}) than part {first.part} "
                              f"({first.plan.to_record()})")
        if p.private != first.private or p.privacy.get("noise_share") != first.privacy.get(
                "noise_share"):
            raise ConfigError(f"parts of {p.task_id!r} were released differently (exact / "
                              "private, noise share): release them all alike")
    check_same_release(parts)
    numbers = sorted(p.part for p in parts)
    twice = sorted({a for a, b in zip(numbers, numbers[1:]) if a == b})
    if twice:
        raise ConfigError(f"part(s) {twice} of {first.task_id!r} arrived twice")


# What every part of one private task must state alike: a merge is as private as its weakest
# part, so parts released differently (another ε, less noise, another cap) are refused.
RELEASE_FIELDS = ("mechanism", "epsilon", "delta", "unit", "plan", "views_per_image_cap",
                  "release_bins", "mean", "sigma_counts", "sigma_part")


def check_same_release(parts: Sequence[TaskPart]) -> None:
    """Raise ConfigError unless every private part's record states the same release."""
    private = [p for p in parts if p.private]
    if not private:
        return
    first = private[0]
    for p in private[1:]:
        for field in RELEASE_FIELDS:
            a, b = Release.of(first.privacy).get(field), Release.of(p.privacy).get(field)
            same = (math.isclose(float(a), float(b), rel_tol=1e-9)
                    if isinstance(a, int | float) and isinstance(b, int | float) else a == b)
            if not same:
                raise ConfigError(
                    f"parts {first.part} and {p.part} of {p.task_id!r} state another release "
                    f"({field}: {a!r} and {b!r}); every part must be released with the same "
                    "ε, δ, plan and noise: release the odd one again")


def merge_exact_parts(parts: Sequence[TaskPart], space: FingerprintSpace) -> PartialCounts:
    """All K exact parts -> the task's counts: integer counts, sums and n add."""
    check_parts(parts)
    first = parts[0]
    if first.space_id != space.space_id:
        raise SpaceMismatchError(f"parts of space {first.space_id} merged in {space.space_id}")
    if first.private:
        raise ConfigError("private parts are merged by rayfp.privacy.parts.merge_parts")
    n = sum(p.n_views for p in parts)
    if n != first.plan.samples:
        raise ConfigError(f"the parts hold {n} views, the plan {first.plan.samples}")
    counts = np.sum([np.asarray(p.counts, np.int64) for p in parts], axis=0)
    feature_sum = np.sum([p.feature_sum for p in parts], axis=0)
    return PartialCounts(space.space_id, counts, feature_sum, n)


def split_sigma(sigma: float, parts: int, noise_share: str) -> float:
    """The noise each part adds: all of σ ("full") or σ/√K ("split")."""
    if noise_share not in NOISE_SHARES:
        raise ConfigError(f"noise_share must be one of {NOISE_SHARES}, got {noise_share!r}")
    return sigma if noise_share == "full" else sigma / math.sqrt(parts)
