from __future__ import annotations

import numpy as np
import pytest
from conftest import make_space, random_fingerprint
from scipy.special import softmax

from rayfp.core.distance import (
    METRICS,
    TARGET_SOFTMAX,
    UNIFORM,
    LinearIndex,
    bkld,
    distance,
    distance_matrix,
    get_metric,
    per_dimension_kl,
)
from rayfp.core.fingerprint import Fingerprint
from rayfp.errors import SpaceMismatchError, UnknownNameError


def _reference_bkld(t: Fingerprint, s: Fingerprint, weighting: str) -> float:
    """docs/design.md §1.4 written out loop by loop, independent of the implementation."""
    total, w_sum = 0.0, 0.0
    w_all = softmax(t.mean) if weighting == TARGET_SOFTMAX else np.ones(t.dim)
    for d in range(t.dim):
        p = t.counts[d] / t.n_samples
        ps = s.counts[d] / s.n_samples
        q = np.exp(ps) / np.exp(ps).sum()
        kl = sum(pb * np.log(pb / qb) for pb, qb in zip(p, q) if pb > 0)
        total += w_all[d] * kl
        w_sum += w_all[d]
    return total / w_sum


@pytest.mark.parametrize("weighting", [TARGET_SOFTMAX, UNIFORM])
def test_direct_formula_matches_the_written_out_definition(rng, weighting):
    space = make_space(dim=6, bins=12)
    t, s = random_fingerprint(rng, space, "t"), random_fingerprint(rng, space, "s")
    assert bkld(t, s, weighting=weighting) == pytest.approx(_reference_bkld(t, s, weighting),
                                                            rel=1e-12)


@pytest.mark.parametrize("metric", ["bkld-small", "bkld-large"])
def test_linear_form_equals_direct_formula_to_1e9(rng, metric):
    space = make_space(dim=16, bins=50)
    sources = [random_fingerprint(rng, space, f"s{i}", zero_fraction=0.6) for i in range(25)]
    targets = [random_fingerprint(rng, space, f"t{i}", zero_fraction=0.6) for i in range(5)]
    assert any((s.counts == 0).any() for s in sources)  # zero bins are exercised
    index = LinearIndex(sources)
    spec = get_metric(metric)
    for t in targets:
        direct = np.array([bkld(t, s, weighting=spec.weighting) for s in sources])
        np.testing.assert_allclose(index.bkld_all(t, weighting=spec.weighting), direct,
                                   rtol=0, atol=1e-9)
    batch = index.bkld_many(targets, weighting=spec.weighting)
    assert batch.shape == (25, 5)
    np.testing.assert_allclose(batch[:, 2], index.distances(targets[2], metric), atol=1e-12)


def test_kl_is_non_negative_and_self_bkld_is_the_closed_form(rng):
    space = make_space(dim=10, bins=20)
    for i in range(20):
        t, s = random_fingerprint(rng, space, f"t{i}"), random_fingerprint(rng, space, f"s{i}")
        assert (per_dimension_kl(t, s) >= -1e-15).all()
    # With itself as source, Q = softmax(P) != P, so bKLD(t, t) is not 0 but exactly
    # Σ_d w_d [Σ_b P log P − ⟨P, P⟩ + LSE(P)] / Σ_d w_d.
    t = random_fingerprint(rng, space, "self")
    p = t.probabilities
    w = softmax(t.mean)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(1)
    closed = (w * (plogp - (p * p).sum(1) + np.log(np.exp(p).sum(1)))).sum() / w.sum()
    assert bkld(t, t) == pytest.approx(closed, rel=1e-12)
    assert bkld(t, t) > 0


def test_bkld_is_asymmetric(rng):
    space = make_space()
    a, b = random_fingerprint(rng, space, "a"), random_fingerprint(rng, space, "b")
    assert bkld(a, b) != pytest.approx(bkld(b, a))


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_every_metric_is_zero_or_minimal_on_identical_input(rng, metric):
    space = make_space(dim=8, bins=10)
    t = random_fingerprint(rng, space, "t")
    others = [random_fingerprint(rng, space, f"o{i}") for i in range(5)]
    to_self = distance(t, t, metric)
    assert all(to_self <= distance(t, o, metric) + 1e-12 for o in others)
    assert all(distance(t, o, metric) >= -1e-12 for o in others)
    if metric in ("p2l", "cosine", "js", "emd"):
        assert to_self == pytest.approx(0.0, abs=1e-12)


def test_emd_of_shifted_point_masses_is_the_shift():
    space = make_space(dim=1, bins=10)
    a = Fingerprint(task_id="a", space_id=space.space_id, counts=np.eye(10, dtype=int)[[2]],
                    feature_sum=np.ones(1), n_samples=1, n_images=1)
    b = Fingerprint(task_id="b", space_id=space.space_id, counts=np.eye(10, dtype=int)[[5]],
                    feature_sum=np.ones(1), n_samples=1, n_images=1)
    assert distance(a, b, "emd") == pytest.approx(0.3)
    assert distance(a, b, "js") == pytest.approx(np.log(2))


def test_unknown_metric_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="bkld-small") as info:
        get_metric("bkld_small")
    assert "Did you mean 'bkld-small'" in str(info.value)


def test_different_spaces_raise_instead_of_returning_a_number(rng):
    a = random_fingerprint(rng, make_space(), "a")
    b = random_fingerprint(rng, make_space(hi=3.0), "b")
    for metric in METRICS:
        with pytest.raises(SpaceMismatchError):
            distance(a, b, metric)
    with pytest.raises(SpaceMismatchError):
        LinearIndex([a]).bkld_all(b)


def test_top_k_ranks_by_distance_and_excludes_self(rng):
    space = make_space(dim=8, bins=10)
    fps = [random_fingerprint(rng, space, f"task{i}") for i in range(10)]
    index = LinearIndex(fps)
    top = index.top_k(fps[0], k=3)
    assert len(top) == 3 and "task0" not in [t for t, _ in top]
    distances = [d for _, d in top]
    assert distances == sorted(distances)
    full = distance_matrix(fps, [fps[0]])[:, 0]
    assert top[0][1] == pytest.approx(np.sort(full[1:])[0], abs=1e-12)
