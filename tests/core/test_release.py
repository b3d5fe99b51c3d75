"""The typed release record: one convention for "no DP" (None), and a record that cannot be
read is an error naming it, whatever shape an attacker or an old store gives it."""

from __future__ import annotations

import math

import pytest

from rayfp.core.release import Release, is_private, released_epsilon
from rayfp.errors import StoreError

DP = {"mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6, "plan": "keyed",
      "views_per_image_cap": 4, "sigma_counts": 3.5, "release_bins": 10, "noise_share": "x"}


def test_exact_counts_have_no_release():
    for privacy in (None, {}, {"dp": None}, {"min_images": 50, "dp": None}):
        assert Release.of(privacy) is None and released_epsilon(privacy) is None
        assert not is_private(privacy)


def test_a_release_reads_typed():
    stated = Release.of({"dp": DP, "min_images": 50})
    assert (stated.epsilon, stated.delta, stated.cap, stated.plan) == (1.0, 1e-6, 4, "keyed")
    assert stated.release_bins == 10 and stated.sigma_sum is None and stated.mean == "counts"
    assert stated.get("noise_share") == "x"  # untyped fields stay readable
    assert Release.of(DP) == stated  # a bare dp record reads the same
    assert released_epsilon({"dp": DP}) == 1.0 and is_private({"dp": DP})


@pytest.mark.parametrize("dp", [
    {**DP, "epsilon": "lots"}, {**DP, "epsilon": -1}, {**DP, "epsilon": math.inf},
    {**DP, "epsilon": math.nan}, {k: v for k, v in DP.items() if k != "epsilon"},
    {**DP, "delta": 2.0}, {**DP, "views_per_image_cap": "four"}, "private", [1, 2]])
def test_an_unreadable_record_is_an_error_naming_it(dp):
    with pytest.raises(StoreError, match="unreadable privacy record"):
        Release.of({"dp": dp})
