"""A fingerprint's differentially private release, typed: the ``dp`` part of its ``privacy``
record (docs/design.md §2, docs/privacy.md).

One convention everywhere: ``Release.of(privacy)`` is None for exact counts (no ``dp`` record:
public data, older stores) and a Release otherwise; a record that cannot be read raises
StoreError, so a reader can skip that fingerprint and say so. The mechanism that makes a
release is rayfp/privacy/mechanism.py; this module only reads what it wrote, so the store, the
cloud and the fingerprint model can read it without the privacy machinery.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from rayfp.errors import StoreError


def _number(dp: Mapping[str, Any], name: str, *, required: bool = False) -> float | None:
    value = dp.get(name)
    if value is None:
        if required:
            raise KeyError(name)
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} is {value!r}")
    return number


@dataclasses.dataclass(frozen=True)
class Release:
    epsilon: float
    delta: float
    sigma_counts: float | None  # the Gaussian noise on the (coarse) counts
    sigma_sum: float | None  # on the feature sum, when it is noised separately
    sigma_part: float | None  # one part's own noise (tasks in parts)
    cap: int | None  # views per unit at most (views_per_image_cap)
    plan: str | None  # the sampling plan's name (keyed, for every private release)
    release_bins: int | None  # coarse bins the noise was added on (None: the space's B)
    mean: str  # "counts" (read off the noisy counts) or "noised-sum"
    count_share: float | None
    record: Mapping[str, Any]  # everything as stored, for the fields not typed here

    @classmethod
    def of(cls, privacy: Mapping[str, Any] | None) -> Release | None:
        """The release stated by a ``privacy`` record (or by a bare ``dp`` record)."""
        if privacy is not None and not isinstance(privacy, Mapping):
            raise StoreError(f"unreadable privacy record ({str(privacy)[:80]})")
        dp = (privacy or {}).get("dp", privacy if privacy and "epsilon" in privacy else None)
        if not dp:
            return None
        try:
            if not isinstance(dp, Mapping):
                raise TypeError(type(dp).__name__)
            epsilon = _number(dp, "epsilon", required=True)
            delta = _number(dp, "delta") or 0.0
            if not epsilon > 0 or not 0 <= delta < 1:
                raise ValueError(f"ε {epsilon}, δ {delta}")
            cap, bins = dp.get("views_per_image_cap"), dp.get("release_bins")
            return cls(epsilon=epsilon, delta=delta,
                       sigma_counts=_number(dp, "sigma_counts"),
                       sigma_sum=_number(dp, "sigma_sum"),
                       sigma_part=_number(dp, "sigma_part"),
                       cap=None if cap is None else int(cap),
                       plan=None if dp.get("plan") is None else str(dp["plan"]),
                       release_bins=None if bins is None else int(bins),
                       mean=str(dp.get("mean", "counts")),
                       count_share=_number(dp, "count_share"),
                       record=dict(dp))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"unreadable privacy record (dp: {str(dp)[:80]}; {exc})") from None

    def get(self, field: str, default: Any = None) -> Any:
        """A stored field by its record name (also the ones not typed here)."""
        return self.record.get(field, default)


def released_epsilon(privacy: Mapping[str, Any] | None) -> float | None:
    """The ε a fingerprint was released at; None for exact counts."""
    found = Release.of(privacy)
    return None if found is None else found.epsilon


def is_private(privacy: Mapping[str, Any] | None) -> bool:
    """Whether a record states a differentially private release (without reading it)."""
    return bool((privacy or {}).get("dp"))
