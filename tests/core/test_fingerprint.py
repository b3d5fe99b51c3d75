from __future__ import annotations

import numpy as np
import pytest
from conftest import make_space

from rayfp.core.fingerprint import (
    FingerprintSpace,
    PartialCounts,
    bin_indices,
    compute_edges,
    finalize,
    merge_counts,
)
from rayfp.core.sampling import sample_plan
from rayfp.errors import ConfigError, SpaceMismatchError


def test_space_id_is_stable_and_changes_with_every_part():
    base = make_space()
    assert base.space_id == make_space().space_id
    assert len(base.space_id) == 16
    changed = [
        make_space(bins=11),
        make_space(hi=2.0),
        make_space(backbone="other"),
        FingerprintSpace(backbone="synthetic", weights_sha256="1" * 64,
                         preprocessing={"kind": "synthetic"}, dim=8, bins=10,
                         edges_lo=base.edges_lo, edges_hi=base.edges_hi),
        FingerprintSpace(backbone="synthetic", weights_sha256="0" * 64,
                         preprocessing={"kind": "other"}, dim=8, bins=10,
                         edges_lo=base.edges_lo, edges_hi=base.edges_hi),
    ]
    assert len({s.space_id for s in changed} | {base.space_id}) == len(changed) + 1


def test_space_validation_names_the_problem():
    with pytest.raises(ConfigError, match="edges must have shape"):
        make_space().__class__(backbone="x", weights_sha256="", preprocessing={}, dim=3, bins=4,
                               edges_lo=np.zeros(2), edges_hi=np.ones(2))
    with pytest.raises(ConfigError, match="edges_hi < edges_lo at dimension 1"):
        FingerprintSpace(backbone="x", weights_sha256="", preprocessing={}, dim=2, bins=4,
                         edges_lo=np.zeros(2), edges_hi=np.array([1.0, -1.0]))


def test_compute_edges_are_the_5_and_95_percent_quantiles(rng):
    features = rng.normal(size=(10_000, 3)).astype(np.float32)
    lo, hi = compute_edges(features)
    np.testing.assert_allclose(lo, np.quantile(features, 0.05, axis=0), rtol=1e-6)
    np.testing.assert_allclose(hi, np.quantile(features, 0.95, axis=0), rtol=1e-6)
    assert lo.dtype == np.float32 and hi.shape == (3,)


def test_bins_clip_into_edge_bins_and_match_torch_histc():
    import torch
    space = make_space(dim=1, bins=4, lo=0.0, hi=1.0)
    values = np.array([-5.0, 0.0, 0.1, 0.25, 0.49, 0.5, 0.99, 1.0, 7.0])[:, None]
    assert bin_indices(values, space)[:, 0].tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3]
    counts = PartialCounts.from_features(values, space).counts[0]
    clipped = torch.from_numpy(values[:, 0]).clamp(0.0, 1.0)
    assert counts.tolist() == torch.histc(clipped, bins=4, min=0.0, max=1.0).long().tolist()


def test_degenerate_dimension_puts_all_mass_in_bin_zero():
    space = FingerprintSpace(backbone="x", weights_sha256="", preprocessing={}, dim=2, bins=5,
                             edges_lo=np.array([0.0, 3.0]), edges_hi=np.array([1.0, 3.0]))
    features = np.array([[0.5, 3.0], [0.9, 2.0], [0.1, 10.0]])
    partial = PartialCounts.from_features(features, space)
    assert partial.counts[1].tolist() == [3, 0, 0, 0, 0]
    assert space.degenerate_dims.tolist() == [1]
    probabilities = finalize(partial, task_id="t", n_images=3).probabilities
    assert np.isfinite(probabilities).all() and probabilities[1, 0] == 1.0


def test_nan_features_are_refused():
    with pytest.raises(ConfigError, match="NaN"):
        bin_indices(np.array([[np.nan] * 8]), make_space())


def test_merge_is_exact_associative_and_commutative(rng):
    space = make_space()
    parts = [PartialCounts.from_features(rng.random((n, 8)), space) for n in (3, 17, 40)]
    a, b, c = parts
    left, right = merge_counts([merge_counts([a, b]), c]), merge_counts([a, merge_counts([b, c])])
    assert np.array_equal(left.counts, right.counts) and left.n == right.n == 60
    assert np.array_equal(merge_counts([c, a, b]).counts, left.counts)
    whole = PartialCounts.from_features(np.concatenate([rng.random((0, 8))]), space)
    assert whole.n == 0
    assert left.counts.sum() == 60 * 8


def test_merge_refuses_different_spaces(rng):
    a = PartialCounts.from_features(rng.random((4, 8)), make_space())
    b = PartialCounts.from_features(rng.random((4, 8)), make_space(bins=10, hi=2.0))
    with pytest.raises(SpaceMismatchError):
        merge_counts([a, b])


def test_sample_plan_draws_with_replacement_and_is_seeded():
    plan = sample_plan(3, 1000, seed=7)
    again = sample_plan(3, 1000, seed=7)
    other = sample_plan(3, 1000, seed=8)
    assert np.array_equal(plan.image_index, again.image_index)
    assert not np.array_equal(plan.image_index, other.image_index)
    assert set(plan.image_index.tolist()) == {0, 1, 2}  # 1000 draws from 3 images
    assert plan.crop_top.min() >= 0 and plan.crop_top.max() <= 32
    assert 0.4 < plan.flip.mean() < 0.6
    covered = np.concatenate([ids for _, ids in plan.grouped_by_image()])
    assert sorted(covered.tolist()) == list(range(1000))


def test_space_and_fingerprint_records_round_trip(rng):
    import json

    from conftest import random_fingerprint

    from rayfp.core.fingerprint import Fingerprint

    space = make_space(dim=4, bins=6, hi=2.0)
    record = space.to_record()
    assert json.loads(json.dumps(record)) == record  # plain values: a JSON answer as it is
    assert FingerprintSpace.from_record(record).to_record() == record
    with pytest.raises(SpaceMismatchError, match="altered"):
        FingerprintSpace.from_record({**record, "edges_hi": [3.0] * 4})
    fp = random_fingerprint(rng, space, "t")
    back = Fingerprint.from_record(fp.to_record())
    assert np.array_equal(back.counts, fp.counts) and back.privacy == fp.privacy
    assert (back.task_id, back.n_samples, back.n_images) == (fp.task_id, fp.n_samples,
                                                             fp.n_images)
