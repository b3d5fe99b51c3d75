"""Differentially private fingerprints: the Gaussian mechanism on a task's counts (and,
optionally, its clipped feature sum), calibrated by Google's dp-accounting (docs/design.md §5, layer 3).

Unit of privacy: one image, replace-one neighbours (the task keeps its M images; one is swapped
for any other). With a plan that gives each image at most ``cap`` views:

- counts: in every non-degenerate dimension the image's views form a histogram of mass ``cap``;
  swapping it moves at most ``cap`` counts out of bins and ``cap`` into others, so the L2
  sensitivity over the D' such dimensions is ``cap * sqrt(2 D')`` (degenerate dimensions hold
  everything in bin 0 whatever the images);
- feature sum (``mean="noised-sum"``): every view is clipped into the space's box [lo, hi], so
  swapping the image moves the sum by at most ``cap * ||hi - lo||_2``.

The release is one Gaussian mechanism: rescaled by their noise, counts and sum have sensitivity
``mu = sqrt((Δc/σc)^2 + (Δs/σs)^2)`` with unit noise, and ``mu = 1 / z`` where
``z = dp_accounting.get_sigma_gaussian(ε, δ)`` is the exact (analytic, Balle & Wang 2018) noise
for sensitivity 1. By default (``mean="counts"``) the whole budget goes to the counts and the
mean is read off the noisy histogram (bin centres): post-processing, so free, and measured to
rank better than a separately noised sum (BENCHMARKS.md, "Privacy").

Everything after the noise is post-processing, so it costs no privacy: coarser release bins
spread back over the space's bins, projection onto non-negative counts with the right sum in
every dimension, integer rounding that keeps that sum, the mean clipped into the box.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from importlib.metadata import version
from typing import Any

import numpy as np

from rayfp import defaults
from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.release import Release
from rayfp.core.sampling import KEYED_PLAN, views_per_image_cap
from rayfp.errors import ConfigError
from rayfp.privacy.noise import noise_source
from rayfp.privacy.postprocess import coarsen, project_to_counts, spread

MECHANISM = "gaussian"
MEAN_FROM_COUNTS = "counts"
MEAN_FROM_NOISED_SUM = "noised-sum"
MEAN_SOURCES = (MEAN_FROM_COUNTS, MEAN_FROM_NOISED_SUM)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacySpec:
    """How private a released fingerprint is. ``epsilon = inf`` is the explicit opt-out (public
    data, a store that never leaves the site): the paper's plan, no noise.

    ``release_bins``: the noisy counts are taken over this many coarser bins (when it divides
    the space's B; else over B) and spread back evenly; fuller bins stand out of the same noise.
    ``mean``: read off the noisy counts, or a clipped sum noised with ``1 - count_share`` of the
    budget. ``seed``: only for tests and experiments; otherwise the noise comes from
    os.urandom."""

    epsilon: float = defaults.DP_EPSILON
    delta: float = defaults.DP_DELTA
    release_bins: int | None = defaults.DP_RELEASE_BINS
    mean: str = MEAN_FROM_COUNTS
    count_share: float = defaults.DP_COUNT_SHARE
    seed: int | None = None
    # The unit protected (and sampled): "image" (a 2-D image, a frame or a whole volume) or
    # "patient" (all files with one DICOM Patient ID), rayfp.io.inventory.UNITS.
    unit: str = "image"
    # The most the site lets one task's images spend over all their releases, composed
    # (rayfp.privacy.ledger); None: no limit, every release still recorded.
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"the privacy budget must be > 0, got {self.budget}")
        if not self.epsilon > 0:
            raise ConfigError(f"epsilon must be > 0 (or inf for no noise), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if not 0 < self.count_share < 1:
            raise ConfigError(f"count_share must be in (0, 1), got {self.count_share}")
        if self.release_bins is not None and self.release_bins < 2:
            raise ConfigError(f"release_bins must be >= 2, got {self.release_bins}")
        if self.unit not in ("image", "patient"):
            raise ConfigError(f"unit must be 'image' or 'patient', got {self.unit!r}")
        if self.mean not in MEAN_SOURCES:
            raise ConfigError(f"mean must be one of {MEAN_SOURCES}, got {self.mean!r}")

    @property
    def sum_share(self) -> float:
        """The share of the budget (of mu^2) spent on a separately noised sum."""
        return 1.0 - self.count_share if self.mean == MEAN_FROM_NOISED_SUM else 0.0

    def bins_for(self, space: FingerprintSpace) -> int:
        """Release bins in this space: ``release_bins`` if it divides B, else B."""
        bins = self.release_bins or space.bins
        return bins if bins <= space.bins and space.bins % bins == 0 else space.bins

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    @property
    def plan(self) -> str:
        """The sampling plan this release needs: bounded views per image when private."""
        return KEYED_PLAN if self.private else "paper"

    @classmethod
    def none(cls, *, unit: str = "image") -> PrivacySpec:
        return cls(epsilon=math.inf, unit=unit)


@dataclasses.dataclass(frozen=True)
class NoiseScale:
    """Sensitivities and noise standard deviations of one release (in counts and feature
    units; ``sigma_sum`` is None when the mean is read off the counts); ``z`` is the
    accountant's noise for sensitivity 1 at (ε, δ)."""

    z: float
    cap: int
    sensitivity_counts: float
    sensitivity_sum: float
    sigma_counts: float
    sigma_sum: float | None


@functools.lru_cache(maxsize=64)
def gaussian_multiplier(epsilon: float, delta: float) -> float:
    """σ for sensitivity 1 at (ε, δ): dp-accounting's analytic calibration (solved numerically:
    cached, since a site and the service ask for the same few settings again and again)."""
    import dp_accounting

    return float(dp_accounting.get_sigma_gaussian(epsilon, delta))


def calibrate(spec: PrivacySpec, space: FingerprintSpace, cap: int) -> NoiseScale:
    """Noise for an (ε, δ) release of counts and sum with at most ``cap`` views per image."""
    if not spec.private:
        raise ConfigError("calibrate needs a finite epsilon; epsilon=inf releases no noise")
    if cap < 1:
        raise ConfigError(f"views per image cap must be >= 1, got {cap}")
    active = space.dim - len(space.degenerate_dims)
    width = (space.edges_hi.astype(np.float64) - space.edges_lo.astype(np.float64))
    delta_counts = cap * math.sqrt(2.0 * active)
    delta_sum = cap * float(np.linalg.norm(width))
    z = gaussian_multiplier(spec.epsilon, spec.delta)
    mu = 1.0 / z
    share = spec.sum_share
    sigma_counts = delta_counts / (mu * math.sqrt(1.0 - share))
    sigma_sum = delta_sum / (mu * math.sqrt(share)) if share else None
    return NoiseScale(z, cap, delta_counts, delta_sum, sigma_counts, sigma_sum)


def accounted_epsilon(scale: NoiseScale, delta: float) -> float:
    """ε of a release with these noises, by dp-accounting's PLD accountant: the Gaussian
    releases composed, each with noise multiplier σ/Δ (an independent check on
    :func:`calibrate`; sensitivity-1 neighbours, as Δ is already the replace-one bound)."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    events = [dp_accounting.GaussianDpEvent(scale.sigma_counts / scale.sensitivity_counts)]
    if scale.sigma_sum is not None:
        events.append(dp_accounting.GaussianDpEvent(scale.sigma_sum / scale.sensitivity_sum))
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


@dataclasses.dataclass(frozen=True)
class PrivateRelease:
    """Noisy counts and feature sum (same shapes and n as the exact ones) and the record that
    travels with them."""

    partial: PartialCounts
    record: dict[str, Any]


def privatize(partial: PartialCounts, space: FingerprintSpace, *, n_images: int,
              spec: PrivacySpec) -> PrivateRelease:
    """The (ε, δ) release of a task's exact counts, computed with the keyed plan and clipped
    sums (``PartialCounts.from_features(..., clip_sum=True)``).

    counts: (D, B) int -> (D, B) int64 >= 0, each row summing to n; feature_sum: (D,) float64."""
    if partial.space_id != space.space_id:
        raise ConfigError(f"counts of space {partial.space_id} cannot be released in space "
                          f"{space.space_id}")
    cap = views_per_image_cap(n_images, partial.n, plan=KEYED_PLAN)
    scale = calibrate(spec, space, cap)
    bins = spec.bins_for(space)
    noise = noise_source(spec.seed)
    counts, mean = noisy_counts(partial.counts, partial.n, space, bins=bins,
                                sigma=scale.sigma_counts, noise=noise)
    if scale.sigma_sum is not None:
        noisy_sum = partial.feature_sum + noise.normal(scale.sigma_sum, (space.dim,))
        mean = np.clip(noisy_sum / partial.n, space.edges_lo, space.edges_hi)
    record = release_record(spec, scale, release_bins=bins, noise=noise.name)
    return PrivateRelease(PartialCounts(space.space_id, counts, mean * partial.n, partial.n),
                          record)


def active_dims(space: FingerprintSpace) -> np.ndarray:
    """(D,) bool: the dimensions that get noise (degenerate ones hold all mass in bin 0
    whatever the images)."""
    active = np.ones(space.dim, bool)
    active[space.degenerate_dims] = False
    return active


def add_noise(coarse: np.ndarray, space: FingerprintSpace, *, sigma: float, noise
              ) -> np.ndarray:
    """The Gaussian mechanism on coarse counts (D, release bins): noise of ``sigma`` in every
    non-degenerate dimension."""
    out = np.array(coarse, np.float64)
    active = active_dims(space)
    out[active] += noise.normal(sigma, (int(active.sum()), out.shape[1]))
    return out


def finish_counts(noisy_coarse: np.ndarray, n: int, space: FingerprintSpace
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Post-processing of noisy coarse counts (free under DP): projected onto non-negative
    integers summing to n, spread back over the space's bins, degenerate dimensions all in
    bin 0; the mean read off the result at the bin centres. Returns (counts (D, B) int64,
    mean (D,))."""
    out = spread(project_to_counts(noisy_coarse, n), space.bins)
    inactive = ~active_dims(space)
    out[inactive] = 0
    out[inactive, 0] = n  # data-independent: all mass in bin 0
    return out, (out * bin_centres(space)).sum(axis=1) / n


def noisy_counts(counts: np.ndarray, n: int, space: FingerprintSpace, *, bins: int,
                 sigma: float, noise) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian mechanism on one histogram over ``bins`` coarse bins, and its
    post-processing (finish_counts)."""
    coarse = coarsen(np.asarray(counts, np.float64), bins)
    return finish_counts(add_noise(coarse, space, sigma=sigma, noise=noise), n, space)


def bin_centres(space: FingerprintSpace) -> np.ndarray:
    """(D, B) float64: the centre of every bin (degenerate dimensions: their one value)."""
    lo = space.edges_lo.astype(np.float64)[:, None]
    width = (space.edges_hi.astype(np.float64) - space.edges_lo)[:, None]
    return lo + width * (np.arange(space.bins)[None, :] + 0.5) / space.bins


def release_record(spec: PrivacySpec, scale: NoiseScale, *, release_bins: int, noise: str
                   ) -> dict[str, Any]:
    """What a private fingerprint records about its release (the `privacy` JSON's ``dp``)."""
    return {"mechanism": MECHANISM, "epsilon": spec.epsilon, "delta": spec.delta,
            "unit": spec.unit, "neighbours": "replace-one",
            "plan": KEYED_PLAN, "views_per_image_cap": scale.cap,
            "mean": spec.mean, "release_bins": release_bins,
            "count_share": 1.0 - spec.sum_share,
            "clip": ("histogram: values outside the edges in the edge bins" +
                     ("; sum: features clipped to the edges" if scale.sigma_sum else "")),
            "sigma_counts": scale.sigma_counts, "sigma_sum": scale.sigma_sum,
            "sensitivity_counts": scale.sensitivity_counts,
            "sensitivity_sum": scale.sensitivity_sum,
            "calibration": f"dp-accounting {version('dp-accounting')} get_sigma_gaussian",
            "noise": noise}


def privacy_record(spec: PrivacySpec, *, min_images: int, release: dict[str, Any] | None
                   ) -> dict[str, Any]:
    """The `privacy` JSON of a stored fingerprint (docs/design.md §2): the floor of distinct images, the
    sampling plan and, for a private release, its mechanism."""
    return {"min_images": min_images, "plan": spec.plan, "dp": release,
            "dp_epsilon": spec.epsilon if spec.private else None, "unit": spec.unit}


def release(partial: PartialCounts, space: FingerprintSpace, *, task_id: str, n_images: int,
            spec: PrivacySpec, min_images: int) -> tuple[PartialCounts, dict[str, Any]]:
    """What a site stores and sends for a task: the private release (or, with ε = inf, the exact
    counts) and the `privacy` record to keep with it. The one step the local client, the Ray job
    and re-fingerprinting share. A seeded spec (tests) seeds each task's noise with its id, so
    two tasks never share a noise vector."""
    if not spec.private:
        return partial, privacy_record(spec, min_images=min_images, release=None)
    if spec.seed is not None:
        digest = hashlib.sha256(task_id.encode()).digest()
        spec = dataclasses.replace(spec, seed=int.from_bytes(digest[:8], "little") ^ spec.seed)
    released = privatize(partial, space, n_images=n_images, spec=spec)
    return released.partial, privacy_record(spec, min_images=min_images,
                                            release=released.record)


def spec_from_record(privacy: dict[str, Any] | None) -> PrivacySpec:
    """The spec a stored fingerprint was released with (re-fingerprinting keeps it); a
    fingerprint without a ``dp`` record (older stores, public data) was exact."""
    stated = Release.of(privacy)
    if stated is None:
        return PrivacySpec.none()
    mean = stated.mean
    share = stated.count_share if stated.count_share is not None else defaults.DP_COUNT_SHARE
    return PrivacySpec(epsilon=stated.epsilon, delta=stated.delta,
                       release_bins=stated.release_bins, mean=mean,
                       count_share=share if mean == MEAN_FROM_NOISED_SUM
                       else defaults.DP_COUNT_SHARE)

