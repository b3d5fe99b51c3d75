"""The service's privacy policy (docs/design.md §5, layer 4): the largest ε it accepts, and a check that
a fingerprint's privacy record is consistent with the mechanism it names.

The cloud cannot see the noise, only the record a site sends. The check makes an honest mistake
(a non-private store uploaded by accident, a record edited by hand, a weaker δ) fail loudly; it
cannot stop a site that lies about its own data, which would harm only that site's patients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rayfp.core.fingerprint import Fingerprint, FingerprintSpace
from rayfp.core.parts import TaskPart, split_sigma
from rayfp.core.release import Release, is_private
from rayfp.core.sampling import BALANCED_PLAN, KEYED_PLAN
from rayfp.errors import ConfigError, PrivacyPolicyError, StoreError
from rayfp.privacy.mechanism import MECHANISM, calibrate, spec_from_record

# Relative slack when recomputing a record's noise: the accountant is solved numerically.
_TOLERANCE = 1e-6


def check_privacy(fp: Fingerprint, space: FingerprintSpace, *, max_epsilon: float | None,
                  max_delta: float = 1e-5, policy: str = "this server") -> None:
    """Raise PrivacyPolicyError unless ``fp`` is (ε <= max_epsilon, δ <= max_delta)-DP by a
    record that adds up; ``max_epsilon=None`` accepts everything (no policy). ``policy`` names
    whose limit it is in the message."""
    _check_release(fp.task_id, fp.privacy, space, n_samples=fp.n_samples, n_images=fp.n_images,
                   max_epsilon=max_epsilon, max_delta=max_delta, policy=policy)


def check_part_privacy(part: TaskPart, space: FingerprintSpace, *, max_epsilon: float | None,
                       max_delta: float = 1e-5, policy: str = "this server") -> None:
    """The policy for one site's part, on arrival: its record must be the task's release
    (ε, δ, the cap of the task's plan, σ for them) and its own noise must be the share its
    noise-share rule gives of that σ. Refused parts are never held."""
    _check_release(part.task_id, part.privacy, space, n_samples=part.plan.samples,
                   n_images=part.plan.total_images, max_epsilon=max_epsilon,
                   max_delta=max_delta, policy=policy)
    if max_epsilon is None or not is_private(part.privacy):
        return
    stated = Release.of(part.privacy)  # readable: _check_release read it
    share = part.privacy.get("noise_share")
    try:
        needed = split_sigma(float(stated.sigma_counts), part.plan.parts, share)
        sigma_part = float(stated.sigma_part)
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise PrivacyPolicyError(f"part {part.part} of {part.task_id!r}: its privacy record "
                                 f"has no valid sigma_part / noise_share ({exc})") from None
    if sigma_part < needed * (1 - _TOLERANCE):
        raise PrivacyPolicyError(f"part {part.part} of {part.task_id!r} states its noise σ = "
                                 f"{sigma_part:.4g}, below the {needed:.4g} that noise share "
                                 f"{share!r} of {part.plan.parts} parts needs")


def _check_release(task_id: str, privacy: Mapping[str, Any] | None, space: FingerprintSpace, *,
                   n_samples: int, n_images: int, max_epsilon: float | None, max_delta: float,
                   policy: str) -> None:
    if max_epsilon is None:
        return
    if not is_private(privacy):
        raise PrivacyPolicyError(
            f"{policy} accepts only differentially private fingerprints (ε <= "
            f"{max_epsilon:g}); {task_id!r} carries exact counts. Fingerprint it with "
            f"`rayfp fingerprint --epsilon E` (E <= {max_epsilon:g})")
    try:
        stated = Release.of(privacy)
    except StoreError as exc:
        raise PrivacyPolicyError(f"{task_id!r}: {exc}") from None
    epsilon = stated.epsilon
    if not epsilon <= max_epsilon:
        raise PrivacyPolicyError(f"{task_id!r} is released at ε = {epsilon:g}; {policy} "
                                 f"accepts at most ε = {max_epsilon:g}. Fingerprint it again "
                                 "with a smaller --epsilon")
    _check_record(task_id, privacy, n_samples, n_images, space, stated, max_delta)


def _check_record(task_id: str, privacy: Mapping[str, Any], n_samples: int, n_images: int,
                  space: FingerprintSpace, stated: Release, max_delta: float) -> None:
    def refuse(why: str) -> PrivacyPolicyError:
        return PrivacyPolicyError(f"{task_id!r}: its privacy record {why}")

    try:
        spec = spec_from_record(dict(privacy))
        cap = int(stated.cap)
        sigma_counts = float(stated.sigma_counts)
        sigma_sum = stated.sigma_sum
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise refuse(f"is incomplete or malformed ({exc}); expected the fields rayfp "
                     "writes (epsilon, delta, mean, views_per_image_cap, sigma_*)") from None
    if not (math.isfinite(sigma_counts) and sigma_counts > 0):
        raise refuse(f"states a noise σ of {sigma_counts}")
    if stated.plan == BALANCED_PLAN:
        raise refuse(f"names the {BALANCED_PLAN!r} plan, whose views follow the file order: its "
                     "guarantee fails when a replacing file sorts elsewhere. Fingerprint the task "
                     f"again with this rayfp (plan {KEYED_PLAN!r})")
    if stated.get("mechanism") != MECHANISM or stated.plan != KEYED_PLAN:
        raise refuse(f"names mechanism {stated.get('mechanism')!r} with plan {stated.plan!r}; "
                     f"expected {MECHANISM!r} with plan {KEYED_PLAN!r}")
    if spec.delta > max_delta:
        raise refuse(f"has δ = {spec.delta:g}; this server accepts at most {max_delta:g}")
    needed_cap = math.ceil(n_samples / max(1, n_images))
    if cap < needed_cap:
        raise refuse(f"caps views per image at {cap}, but {n_samples} views of "
                     f"{n_images} images need at least {needed_cap}")
    needed = calibrate(spec, space, cap)
    if (needed.sigma_sum is None) != (sigma_sum is None):
        raise refuse(f"states a sum noise of {sigma_sum} for mean {spec.mean!r}")
    too_small = sigma_counts < needed.sigma_counts * (1 - _TOLERANCE) or (
        sigma_sum is not None and sigma_sum < needed.sigma_sum * (1 - _TOLERANCE))
    if too_small:
        raise refuse(f"states noise σ = {sigma_counts:.4g} on the counts (sum: {sigma_sum}), "
                     f"below the {needed.sigma_counts:.4g} (sum: {needed.sigma_sum}) that "
                     f"ε = {spec.epsilon:g}, δ = {spec.delta:g} need in space {space.space_id}")


def check_replicates_total(total: tuple[float, float] | None, *, max_epsilon: float | None,
                           max_delta: float = 1e-5, policy: str = "this server") -> None:
    """Raise PrivacyPolicyError unless a query and its replicates together stay within the
    limits: their composed (ε, δ) (None: exact replicates of an exact query, which the
    query's own check has already judged)."""
    if max_epsilon is None or total is None:
        return
    epsilon, delta = total
    if epsilon > max_epsilon or delta > max_delta:
        raise PrivacyPolicyError(
            f"the query and its replicates are together (ε = {epsilon:.3g}, δ = {delta:g})-DP; "
            f"{policy} accepts at most ε = {max_epsilon:g}, δ = {max_delta:g}. Send fewer "
            "replicates' budget (--replicate-epsilon) or none")
