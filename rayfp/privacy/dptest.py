"""A stochastic test of the differential-privacy guarantee, built the way an attacker would:
its statistics (the neighbouring file sets and their counts: rayfp.extract.neighbours).

`rayfp audit` (rayfp.privacy.audit) attacks membership with views it swaps in place; it cannot
see a leak that comes from *how the plan hands out views*. This test works at the level where
that leak lives: files on disk. It builds neighbouring datasets that differ in one unit (one
file swapped for another whose name sorts first, last, or at every place between, or whose
content changes under the same name; N mod M = 0, != 0 and N < M), runs the real inventory and
sampling plan (rayfp.io.inventory, rayfp.io.work) on both, and measures:

1. **The direct bound.** The L2 difference of the two exact count matrices, over the calibrated
   sensitivity cap·√(2D'). DP needs it <= 1 for every pair.
2. **An empirical lower bound on ε** (in the spirit of Google's DP Stochastic Tester and of
   Jagielski et al. 2020 / Nasr et al. 2021): both datasets released many times by the real
   mechanism (rayfp.privacy.mechanism.privatize) with fresh noise; the optimal test for two
   Gaussians (the projection on their difference); a threshold chosen on held-out releases;
   Clopper-Pearson bounds on its error rates. The bound must stay below the claimed ε.

The backbone is replaced by a fixed probe (grid means of the crop): sensitivity is a property
of the plan and the mechanism, not of the features, and the probe makes crops and flips visible
in the counts, which is what a position-keyed plan leaks.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.sampling import views_per_image_cap
from rayfp.privacy.mechanism import PrivacySpec, active_dims, privatize
from rayfp.privacy.postprocess import coarsen

PROBE_DIM = 16  # the probe's features (rayfp.extract.neighbours.probe_features)


def probe_space(bins: int = 20) -> FingerprintSpace:
    """The probe's space: intensities in [0.25, 0.75] (smooth random fields stay mostly inside;
    values outside fall in the edge bins, as in any space)."""
    return FingerprintSpace(backbone="dp-test-probe", weights_sha256="0" * 64,
                            preprocessing={"kind": "dp-test-probe"}, dim=PROBE_DIM, bins=bins,
                            edges_lo=np.full(PROBE_DIM, 0.25, np.float32),
                            edges_hi=np.full(PROBE_DIM, 0.75, np.float32))


def sensitivity_ratio(a: PartialCounts, b: PartialCounts, space: FingerprintSpace,
                      n_images: int) -> float:
    """||counts_b - counts_a||_2 over the noised dimensions / (cap·√(2D')): DP needs <= 1."""
    active = active_dims(space)
    diff = (b.counts - a.counts)[active].astype(np.float64)
    cap = views_per_image_cap(n_images, max(a.n, b.n), plan="keyed")
    return float(np.linalg.norm(diff) / (cap * math.sqrt(2 * int(active.sum()))))


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) interval for a binomial proportion k/n."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def epsilon_at(k_a: int, k_b: int, n: int, delta: float, alpha: float) -> float:
    """Lower bound on ε from a test that says "b" k_b of n times on b and k_a of n on a."""
    tpr_lo, _ = clopper_pearson(k_b, n, alpha)
    _, fpr_hi = clopper_pearson(k_a, n, alpha)
    if tpr_lo - delta <= 0:
        return 0.0
    return max(0.0, math.log((tpr_lo - delta) / fpr_hi))


def empirical_epsilon(a: PartialCounts, b: PartialCounts, space: FingerprintSpace, *,
                      n_images: int, spec: PrivacySpec, releases: int, seed: int | None,
                      alpha: float = 0.05) -> dict[str, float]:
    """Release a and b ``releases`` times each with fresh noise and bound ε from below.

    The statistic is the optimal one for two Gaussians with these means: the released coarse
    counts projected on the direction from a to b (both orientations are tried). A threshold
    is chosen on the first half of the releases, then judged on the second half only, with
    Clopper-Pearson bounds at level ``alpha`` (so the bound holds with probability 1 - alpha)."""
    bins = spec.bins_for(space)
    start, stop = coarsen(a.counts.astype(np.float64), bins), coarsen(
        b.counts.astype(np.float64), bins)
    direction = (stop - start).ravel()
    if not np.any(direction):
        return {"epsilon_lower_bound": 0.0, "releases": releases}
    rng = np.random.default_rng(seed)

    def statistics(counts: PartialCounts) -> np.ndarray:
        out = []
        for _ in range(releases):
            noise_seed = None if seed is None else int(rng.integers(2**62))
            released = privatize(counts, space, n_images=n_images,
                                 spec=dataclasses.replace(spec, seed=noise_seed))
            out.append(float((coarsen(released.partial.counts.astype(np.float64), bins)
                              - start).ravel() @ direction))
        return np.asarray(out)

    s_a, s_b = statistics(a), statistics(b)
    half = releases // 2
    best = (0.0, math.inf, 1)
    for sign in (1, -1):  # "says b" when sign * s > threshold
        pooled = np.sort(np.r_[s_a[:half], s_b[:half]] * sign)
        for threshold in pooled[::max(1, len(pooled) // 400)]:
            k_a = int((sign * s_a[:half] > threshold).sum())
            k_b = int((sign * s_b[:half] > threshold).sum())
            # Judged as it will be judged on the held-out half: by its confidence bound, so
            # a threshold far in the tail (few counts, wide intervals) does not win by luck.
            found = epsilon_at(k_a, k_b, half, spec.delta, alpha)
            if found > best[0]:
                best = (found, float(threshold), sign)
    _, threshold, sign = best
    held_a, held_b = s_a[half:] * sign, s_b[half:] * sign
    n = len(held_a)
    k_a, k_b = int((held_a > threshold).sum()), int((held_b > threshold).sum())
    bound = epsilon_at(k_a, k_b, n, spec.delta, alpha)
    # The other side of the same test: "says a" below the threshold.
    bound = max(bound, epsilon_at(n - k_b, n - k_a, n, spec.delta, alpha))
    return {"epsilon_lower_bound": bound, "releases": releases, "held_out": n,
            "false_positives": k_a, "true_positives": k_b}


