"""Replicates of a query: R bootstrap resamples of its images, released like the query.

The site makes them from its own view table (rayfp.core.replicates); the service ranks them with
the query and reports how often each neighbour comes first (rayfp.core.confidence). For an
exact query they are exact. For a private one they are one more Gaussian mechanism: its own ε
(``--replicate-epsilon``), its sensitivity the query's times the largest L2 norm of one image's
multiplicities, and the query and replicates together are accounted by composition (PLD
accountant). The resampling weights depend only on (M, R, seed), so the service recomputes the
sensitivity and checks the noise and the total itself (docs/privacy.md, "Replicates")."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any

import numpy as np

from rayfp.core.fingerprint import Fingerprint, FingerprintSpace, PartialCounts, finalize
from rayfp.core.release import Release
from rayfp.core.replicates import (
    ViewTable,
    bootstrap_weights,
    keyed_poisson_weights,
    multiplicity_norm,
    poisson_bound,
)
from rayfp.errors import ConfigError
from rayfp.privacy.mechanism import (
    MEAN_FROM_COUNTS,
    MECHANISM,
    PrivacySpec,
    calibrate,
    noisy_counts,
)
from rayfp.privacy.noise import noise_source

DEFAULT_REPLICATES = 32


@functools.lru_cache(maxsize=256)
def composed_epsilon(noise_multipliers: tuple[float, ...], delta: float) -> float:
    """ε at δ of Gaussian releases composed (each noise multiplier σ/Δ), by dp-accounting's PLD
    accountant (cached: the service checks the same settings again and again)."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    accountant.compose(dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(m) for m in noise_multipliers]))
    return float(accountant.get_epsilon(delta))


KEYED_WEIGHTS = "keyed-poisson"  # the record's name for private replicates' weights


def release_replicates(partials: list[PartialCounts], weights: np.ndarray,
                       space: FingerprintSpace, *, task_id: str, n_images: int,
                       base_record: dict[str, Any], spec: PrivacySpec, resample_seed: int,
                       n_samples: int | None = None
                       ) -> tuple[list[PartialCounts], dict[str, Any]]:
    """Release R bootstrap replicates of a task whose base fingerprint was released with
    ``base_record`` (its `privacy` JSON). Exact base (ε = inf): the replicates go as they are.
    Private base: the R replicates are one Gaussian mechanism on their concatenation. Swapping
    one image moves replicate r by its multiplicity c_r times what it moves one fingerprint, so
    the joint L2 sensitivity is Δ · max_i ||c_i|| (the weights depend only on (M, R, seed):
    the service recomputes them). ``spec.epsilon`` is the replicates' own budget; the record
    states it and the total with the base, composed by the PLD accountant.

    Private replicates must be weighted by :func:`keyed_poisson_weights` (each image's
    multiplicities from its own key, their norm at most the public L = poisson_bound(R)): then
    replacing one image moves the set by at most Δ · L whatever the file order, and each
    replicate is projected onto the public ``n_samples`` (the base's N), not its own count."""
    record: dict[str, Any] = {"replicates": len(partials), "resampling": "bootstrap",
                              "resample_seed": int(resample_seed), "n_images": n_images}
    base = Release.of(base_record)
    if base is None or not spec.private:
        if base is not None:
            raise ConfigError("a private fingerprint's replicates must be private too")
        return partials, {**record, "dp": None, "epsilon_total": None}
    if spec.seed is not None:
        digest = hashlib.sha256(f"{task_id}/replicates".encode()).digest()
        spec = dataclasses.replace(spec, seed=int.from_bytes(digest[:8], "little") ^ spec.seed)
    factor = poisson_bound(len(partials))
    if multiplicity_norm(weights) > factor * (1 + 1e-9):
        raise ConfigError("private replicates need keyed weights (keyed_poisson_weights): "
                          f"an image's multiplicities reach norm {multiplicity_norm(weights):.3g}"
                          f" > the bound {factor:.3g}")
    if n_samples is None:
        raise ConfigError("private replicates are projected onto the base's public N: give "
                          "n_samples")
    noise = noise_source(spec.seed)
    bins = spec.bins_for(space)
    scale = calibrate(spec, space, int(base.cap))
    sigma = scale.sigma_counts * factor
    released = []
    for partial in partials:
        counts, mean = noisy_counts(partial.counts, n_samples, space, bins=bins, sigma=sigma,
                                    noise=noise)
        released.append(PartialCounts(space.space_id, counts, mean * n_samples, n_samples))
    dp = {"mechanism": MECHANISM, "epsilon": spec.epsilon, "delta": spec.delta,
          "sigma_counts": sigma, "sensitivity_counts": scale.sensitivity_counts * factor,
          "multiplicity_norm": factor, "weights": KEYED_WEIGHTS,
          "release_bins": bins, "mean": MEAN_FROM_COUNTS,
          "noise": noise.name}
    total, delta = total_epsilon(base.record, dp)
    return released, {**record, "dp": dp, "epsilon_total": total, "delta_total": delta}


def total_epsilon(base_dp: dict[str, Any], replicates_dp: dict[str, Any]) -> tuple[float, float]:
    """(ε, δ) of a base release and its replicates together: the two Gaussian mechanisms
    composed at δ = δ_base + δ_replicates (a base with a separately noised sum counts as one
    mechanism of the combined multiplier)."""
    base = float(base_dp["sigma_counts"]) / float(base_dp["sensitivity_counts"])
    if base_dp.get("sigma_sum"):
        base = 1.0 / math.hypot(1.0 / base, float(base_dp["sensitivity_sum"])
                                / float(base_dp["sigma_sum"]))
    replicates = float(replicates_dp["sigma_counts"]) / float(
        replicates_dp["sensitivity_counts"])
    delta = float(base_dp["delta"]) + float(replicates_dp["delta"])
    return composed_epsilon((round(base, 12), round(replicates, 12)), delta), delta


def check_replicates_record(record: dict[str, Any], base_record: dict[str, Any],
                            space: FingerprintSpace, n_replicates: int, n_images: int
                            ) -> tuple[float, float] | None:
    """The service's check of replicates it is sent: the counts match, the weights recomputed
    from the seed give the sensitivity, and σ is at least what the stated (ε, δ) needs.
    Returns the total (ε, δ) of base and replicates, composed here (None: exact). Raises
    ConfigError otherwise."""
    try:
        return _check_replicates_record(record, base_record, space, n_replicates, n_images)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"replicates: the privacy record is incomplete or malformed ({exc!r})"
                          ) from None


def _check_replicates_record(record, base_record, space, n_replicates, n_images):
    if int(record.get("replicates", -1)) != n_replicates:
        raise ConfigError(f"replicates: the record says {record.get('replicates')}, the "
                          f"request carries {n_replicates}")
    if int(record.get("n_images", -1)) != n_images:
        raise ConfigError(f"replicates: resampled {record.get('n_images')} images, the "
                          f"fingerprint has {n_images}")
    if record.get("resampling") == "parametric":
        base = Release.of(base_record)
        if base is None:
            raise ConfigError("replicates: parametric replicates of an exact fingerprint")
        if float(record["dp"]["sigma_counts"]) < float(base.sigma_counts) * (1 - 1e-9):
            raise ConfigError("replicates: parametric replicates must carry at least the "
                              "fingerprint's own noise")
        return base.epsilon, base.delta  # post-processing: free
    if record.get("resampling") != "bootstrap":
        raise ConfigError(f"replicates: unknown resampling {record.get('resampling')!r}; "
                          "expected bootstrap or parametric")
    base = Release.of(base_record)
    dp = record.get("dp")  # the replicates' own release, as sent
    if base is None:
        if dp is not None:
            raise ConfigError("replicates: private replicates of an exact fingerprint")
        return None
    if dp is None:
        raise ConfigError("replicates: a private fingerprint's replicates must be private too")
    if dp.get("weights") != KEYED_WEIGHTS:
        raise ConfigError("replicates: private replicates must be weighted per image by its own "
                          f"key ({KEYED_WEIGHTS!r}); these were made by an older rayfp whose "
                          "weights follow the file order. Update rayfp and query again")
    factor = poisson_bound(n_replicates)  # public: nothing recomputed from the images
    spec = PrivacySpec(epsilon=float(dp["epsilon"]), delta=float(dp["delta"]),
                       release_bins=dp.get("release_bins"))
    scale = calibrate(spec, space, int(base.cap))
    needed = scale.sigma_counts * factor
    if float(dp["sigma_counts"]) < needed * (1 - 1e-9):
        raise ConfigError(f"replicates: σ = {float(dp['sigma_counts']):.4g} is below the "
                          f"{needed:.4g} that ε = {spec.epsilon:g} needs for {n_replicates} "
                          f"bootstrap replicates of {record['n_images']} images")
    # The sensitivity recomputed here, not the one the record states.
    return total_epsilon(base.record, {**dp, "sensitivity_counts": scale.sensitivity_counts * factor})


def parametric_replicates(query: Fingerprint, space: FingerprintSpace, *, replicates: int,
                          seed: int | None = None) -> tuple[list[Fingerprint], dict[str, Any]]:
    """R re-releases of a private fingerprint's own counts with its own noise (the parametric
    bootstrap of DP statistics, Ferrando, Wang & Sheldon 2022): they spread around the release
    as the release spreads around the task's exact counts. Post-processing of the release
    only, so they cost no privacy; they leave out the (much smaller, at ε near 1) sampling
    variability that image bootstrap replicates measure."""
    stated = Release.of(query.privacy)
    if stated is None:
        raise ConfigError("parametric replicates re-release a private fingerprint; this one is "
                          "exact (use bootstrap replicates)")
    noise = noise_source(seed)
    bins = int(stated.release_bins or space.bins)
    sigma = float(stated.sigma_counts)
    fps = []
    for _ in range(replicates):
        counts, mean = noisy_counts(query.counts, query.n_samples, space, bins=bins,
                                    sigma=sigma, noise=noise)
        fps.append(Fingerprint(task_id=query.task_id, space_id=query.space_id, counts=counts,
                               feature_sum=mean * query.n_samples, n_samples=query.n_samples,
                               n_images=query.n_images, privacy=query.privacy))
    record = {"replicates": replicates, "resampling": "parametric", "n_images": query.n_images,
              "dp": {"mechanism": MECHANISM, "sigma_counts": sigma,
                     "of": "the released counts (post-processing: no privacy cost)"},
              "epsilon_total": stated.epsilon, "delta_total": stated.delta}
    return fps, record


def query_replicates(views: ViewTable | None, query: Fingerprint, space: FingerprintSpace, *,
                     replicates: int = DEFAULT_REPLICATES, spec: PrivacySpec | None = None,
                     resample_seed: int | None = None, resampling: str | None = None
                     ) -> tuple[list[Fingerprint], dict[str, Any]]:
    """R replicates of a stored fingerprint, released to match it. ``resampling``:
    "bootstrap" (the default: images resampled from the view table; exact for an exact
    fingerprint, else released with ``spec``, default the query's own ε and δ, and composed) or
    "parametric" (a private fingerprint re-released with its own noise: free, but measured
    over-confident, BENCHMARKS.md "Per-query confidence"). Returns the replicates and the
    record the service checks."""
    stated = Release.of(query.privacy)
    resampling = resampling or "bootstrap"
    if resampling == "parametric":
        return parametric_replicates(query, space, replicates=replicates, seed=resample_seed)
    if resampling != "bootstrap":
        raise ConfigError(f"resampling must be bootstrap or parametric, got {resampling!r}")
    if views is None:
        raise ConfigError(f"bootstrap replicates of {query.task_id!r} need its view table "
                          "(`rayfp fingerprint --keep-views`)")
    if views.task_id != query.task_id or views.space_id != query.space_id:
        raise ConfigError(f"the view table is of {views.task_id!r} in {views.space_id}, the "
                          f"fingerprint of {query.task_id!r} in {query.space_id}")
    if views.n_images != query.n_images or views.n_views != query.n_samples:
        raise ConfigError(f"the view table of {query.task_id!r} ({views.n_images} images, "
                          f"{views.n_views} views) is not the one behind its fingerprint "
                          f"({query.n_images} images, {query.n_samples} views): fingerprint it "
                          "again with --keep-views")
    if spec is None:
        spec = (PrivacySpec.none() if stated is None else
                PrivacySpec(epsilon=stated.epsilon, delta=stated.delta,
                            release_bins=stated.release_bins))
    if resample_seed is None:
        resample_seed = int.from_bytes(np.random.default_rng().bytes(4), "little")
    weights = (bootstrap_weights(views.n_images, replicates, resample_seed) if stated is None
               else keyed_poisson_weights(views.images, replicates, resample_seed))
    partials = views.weighted(space, weights)
    released, record = release_replicates(partials, weights, space, task_id=query.task_id,
                                          n_images=query.n_images, base_record=query.privacy,
                                          spec=spec, resample_seed=resample_seed,
                                          n_samples=query.n_samples)
    # Replicates carry the query's task id: ranked against a store that holds the task, they
    # leave it out as the query does.
    fps = [finalize(p, task_id=query.task_id, n_images=query.n_images, privacy=query.privacy)
           for p in released]
    return fps, record
