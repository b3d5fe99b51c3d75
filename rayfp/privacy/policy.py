"""The service's privacy policy (DESIGN §5, layer 4): the largest ε it accepts, and a check that
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
from rayfp.core.sampling import BALANCED_PLAN, KEYED_PLAN
from rayfp.errors import PrivacyPolicyError
from rayfp.privacy.mechanism import MECHANISM, calibrate, epsilon_of, spec_from_record

# Relative slack when recomputing a record's noise: the accountant is solved numerically.
_TOLERANCE = 1e-6


def check_privacy(fp: Fingerprint, space: FingerprintSpace, *, max_epsilon: float | None,
                  max_delta: float = 1e-5, policy: str = "this server") -> None:
    """Raise PrivacyPolicyError unless ``fp`` is (ε <= max_epsilon, δ <= max_delta)-DP by a
    record that adds up; ``max_epsilon=None`` accepts everything (no policy). ``policy`` names
    whose limit it is in the message."""
    if max_epsilon is None:
        return
    dp = (fp.privacy or {}).get("dp")
    if not dp:
        raise PrivacyPolicyError(
            f"{policy} accepts only differentially private fingerprints (ε <= "
            f"{max_epsilon:g}); {fp.task_id!r} carries exact counts. Fingerprint it with "
            f"`rayfp fingerprint --epsilon E` (E <= {max_epsilon:g})")
    epsilon = epsilon_of(fp.privacy)
    if epsilon > max_epsilon:
        raise PrivacyPolicyError(f"{fp.task_id!r} is released at ε = {epsilon:g}; {policy} "
                                 f"accepts at most ε = {max_epsilon:g}. Fingerprint it again "
                                 "with a smaller --epsilon")
    _check_record(fp, space, dp, max_delta)


def _check_record(fp: Fingerprint, space: FingerprintSpace, dp: Mapping[str, Any],
                  max_delta: float) -> None:
    def refuse(why: str) -> PrivacyPolicyError:
        return PrivacyPolicyError(f"{fp.task_id!r}: its privacy record {why}")

    try:
        spec = spec_from_record(fp.privacy)
        cap = int(dp["views_per_image_cap"])
        sigma_counts = float(dp["sigma_counts"])
        sigma_sum = None if dp.get("sigma_sum") is None else float(dp["sigma_sum"])
    except (KeyError, TypeError, ValueError) as exc:
        raise refuse(f"is incomplete or malformed ({exc}); expected the fields rayfp "
                     "writes (epsilon, delta, mean, views_per_image_cap, sigma_*)") from None
    if dp.get("plan") == BALANCED_PLAN:
        raise refuse(f"names the {BALANCED_PLAN!r} plan, whose views follow the file order: its "
                     "guarantee fails when a replacing file sorts elsewhere. Fingerprint the task "
                     f"again with this rayfp (plan {KEYED_PLAN!r})")
    if dp.get("mechanism") != MECHANISM or dp.get("plan") != KEYED_PLAN:
        raise refuse(f"names mechanism {dp.get('mechanism')!r} with plan {dp.get('plan')!r}; "
                     f"expected {MECHANISM!r} with plan {KEYED_PLAN!r}")
    if spec.delta > max_delta:
        raise refuse(f"has δ = {spec.delta:g}; this server accepts at most {max_delta:g}")
    needed_cap = math.ceil(fp.n_samples / max(1, fp.n_images))
    if cap < needed_cap:
        raise refuse(f"caps views per image at {cap}, but {fp.n_samples} views of "
                     f"{fp.n_images} images need at least {needed_cap}")
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
