"""Private release and merge of a task's parts (rayfp.core.parts has the plan and the exact
merge). A part's noise is the Gaussian mechanism of a whole task's release (same σ, from the
cap of the task's plan over all M images), taken over the release bins and left unprojected;
the merge sums the parts, then projects and spreads once. docs/privacy.md, "Tasks in parts"."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.parts import PartPlan, TaskPart, check_parts, merge_exact_parts, split_sigma
from rayfp.core.release import Release
from rayfp.core.sampling import views_per_image_cap
from rayfp.errors import ConfigError
from rayfp.privacy.mechanism import (
    PrivacySpec,
    add_noise,
    calibrate,
    finish_counts,
    privacy_record,
    release_record,
)
from rayfp.privacy.noise import noise_source
from rayfp.privacy.postprocess import coarsen


def release_part(partial: PartialCounts, space: FingerprintSpace, *, plan: PartPlan, part: int,
                 spec: PrivacySpec, noise_share: str = "full") -> TaskPart:
    """Site ``part``'s share of the task, ready to send: exact counts, or noisy release-bin
    counts with its share of the noise."""
    if partial.space_id != space.space_id:
        raise ConfigError(f"counts of space {partial.space_id} released in {space.space_id}")
    if plan.plan != spec.plan:
        raise ConfigError(f"the parts' plan is {plan.plan!r}; a release at ε = {spec.epsilon:g} "
                          f"needs the {spec.plan!r} plan")
    if not spec.private:
        return TaskPart(space.space_id, part, plan, np.asarray(partial.counts, np.int64),
                        partial.n, np.asarray(partial.feature_sum, np.float64),
                        {"dp": None, "noise_share": None})
    if spec.seed is not None:  # tests: each part its own noise
        digest = hashlib.sha256(f"{plan.task_id}/part-{part}".encode()).digest()
        spec = dataclasses.replace(spec, seed=int.from_bytes(digest[:8], "little") ^ spec.seed)
    cap = views_per_image_cap(plan.total_images, plan.samples, plan=plan.plan)
    scale = calibrate(spec, space, cap)
    sigma = split_sigma(scale.sigma_counts, plan.parts, noise_share)
    bins = spec.bins_for(space)
    noise = noise_source(spec.seed)
    coarse = add_noise(coarsen(np.asarray(partial.counts, np.float64), bins), space,
                       sigma=sigma, noise=noise)
    record = release_record(spec, scale, release_bins=bins, noise=noise.name)
    return TaskPart(space.space_id, part, plan, coarse, partial.n,
                    np.zeros(space.dim), {"dp": {**record, "sigma_part": sigma},
                                          "noise_share": noise_share})


def merge_parts(parts: Sequence[TaskPart], space: FingerprintSpace, *, min_images: int
                ) -> tuple[PartialCounts, dict[str, Any]]:
    """All K parts -> the task's counts and its `privacy` record. Exact parts add exactly.
    Private parts: the summed noisy counts are projected onto non-negative counts summing to
    N and spread over the space's bins; the record states the merged noise (σ_part · √K) and
    the task's (ε, δ), which the service checks like any fingerprint's."""
    check_parts(parts)
    first = parts[0]
    if not first.private:
        record = privacy_record(PrivacySpec.none(), min_images=min_images, release=None)
        return merge_exact_parts(parts, space), {**record, "parts": first.plan.parts}
    n = sum(p.n_views for p in parts)
    if n != first.plan.samples:
        raise ConfigError(f"the parts hold {n} views, the plan {first.plan.samples}")
    dp = dict(Release.of(first.privacy).record)
    coarse = np.sum([np.asarray(p.counts, np.float64) for p in parts], axis=0)
    counts, mean = finish_counts(coarse, n, space)
    merged_sigma = float(dp["sigma_part"]) * math.sqrt(first.plan.parts)
    dp.update({"sigma_counts": merged_sigma, "parts": first.plan.parts,
               "noise_share": first.privacy["noise_share"]})
    spec = PrivacySpec(epsilon=float(dp["epsilon"]), delta=float(dp["delta"]),
                       release_bins=dp.get("release_bins"))
    record = {**privacy_record(spec, min_images=min_images, release=dp),
              "parts": first.plan.parts}
    return PartialCounts(space.space_id, counts, mean * n, n), record
