"""Per-query confidence without Ray: view tables, replicates, their privacy accounting, the
batched ranking of a query with its replicates, and their wire form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_space, random_fingerprint

from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.cloud.wire import decode_replicates, encode_replicates
from rayfp.core.confidence import confidence_of
from rayfp.core.distance import bkld
from rayfp.core.fingerprint import PartialCounts, bin_indices, finalize
from rayfp.core.replicates import (
    ViewTable,
    bootstrap_weights,
    multiplicity_norm,
    poisson_bound,
    subsample_weights,
)
from rayfp.errors import ConfigError, NotFoundError
from rayfp.privacy.mechanism import PrivacySpec, release
from rayfp.privacy.replicates import (
    check_replicates_record,
    composed_epsilon,
    query_replicates,
)
from rayfp.search.index import ScreenedIndex
from rayfp.store.store import Store

SPACE = make_space(dim=12, bins=10)
IMAGES, VIEWS = 40, 400  # the balanced plan: 10 views of every image


def _task(seed: int, *, epsilon: float = math.inf, shift: float = 0.0):
    """A task's views (balanced: image i has views i, i + M, ...), its released fingerprint
    and its view table."""
    rng = np.random.default_rng(seed)
    image_of_view = np.arange(VIEWS) % IMAGES
    image_level = rng.random((IMAGES, SPACE.dim)) * 0.5 + shift
    features = np.clip(image_level[image_of_view] + rng.random((VIEWS, SPACE.dim)) * 0.5, 0, 1)
    spec = PrivacySpec(epsilon=epsilon, seed=seed) if math.isfinite(epsilon) else \
        PrivacySpec.none()
    partial = PartialCounts.from_features(features, SPACE, clip_sum=spec.private)
    released, record = release(partial, SPACE, task_id=f"task-{seed}", n_images=IMAGES,
                               spec=spec, min_images=1)
    fp = finalize(released, task_id=f"task-{seed}", n_images=IMAGES, privacy=record)
    summed = np.clip(features, 0, 1)
    table = ViewTable.from_batches(SPACE, fp.task_id, [
        ([f"img{i:03d}" for i in image_of_view[:150]], bin_indices(features[:150], SPACE),
         summed[:150]),
        ([f"img{i:03d}" for i in image_of_view[150:]], bin_indices(features[150:], SPACE),
         summed[150:])])
    return fp, table, partial


def test_a_view_table_rebuilds_its_fingerprint_and_survives_the_store(tmp_path):
    fp, table, partial = _task(1)
    assert (table.n_images, table.n_views, table.bins.dtype) == (IMAGES, VIEWS, np.uint8)
    whole = table.weighted(SPACE, np.ones((1, IMAGES), np.int64))[0]
    assert np.array_equal(whole.counts, fp.counts) and whole.n == VIEWS
    assert np.allclose(whole.feature_sum, partial.feature_sum)
    doubled = table.weighted(SPACE, np.full((1, IMAGES), 2))[0]  # every image twice
    assert np.array_equal(doubled.counts, 2 * fp.counts) and doubled.n == 2 * VIEWS
    store = Store(tmp_path / "s")
    store.put_space(SPACE)
    with pytest.raises(NotFoundError, match="--keep-views"):
        store.get_views(SPACE.space_id, fp.task_id)
    path = store.put_views(table)
    assert "site-only" in path.parts  # kept apart from what is shared
    again = store.get_views(SPACE.space_id, fp.task_id)
    assert again.images == table.images and np.array_equal(again.bins, table.bins)
    # The paper's plan can leave an image without a view: it still counts as one of the M.
    images = [*table.images, "img-without-views"]
    fuller = ViewTable.from_batches(SPACE, fp.task_id, [
        (list(np.array(table.images)[table.image_of_view]), table.bins, partial_sums(table))],
        images=images)
    assert fuller.n_images == IMAGES + 1
    assert np.array_equal(fuller.weighted(SPACE, np.ones((1, IMAGES + 1)))[0].counts, fp.counts)
    with pytest.raises(ConfigError, match="not in the task"):
        ViewTable.from_batches(SPACE, fp.task_id, [(["stranger"], table.bins[:1],
                                                    np.zeros((1, SPACE.dim)))], images=images)
    path.write_bytes(b"not an npz")
    with pytest.raises(ConfigError, match="unreadable view table"):
        store.get_views(SPACE.space_id, fp.task_id)


def partial_sums(table: ViewTable) -> np.ndarray:
    """Per-view sums that add up to the table's per-image sums (each image's sum on its first
    view): enough to rebuild a table."""
    out = np.zeros((table.n_views, SPACE.dim))
    first = {}
    for v, i in enumerate(table.image_of_view):
        first.setdefault(int(i), v)
    for i, v in first.items():
        out[v] = table.image_sums[i]
    return out


def test_resampling_weights():
    boot = bootstrap_weights(IMAGES, 32, seed=3)
    assert boot.shape == (32, IMAGES) and (boot.sum(axis=1) == IMAGES).all()
    assert np.array_equal(boot, bootstrap_weights(IMAGES, 32, seed=3))  # the seed decides
    sub = subsample_weights(IMAGES, 10, 5, seed=0)
    assert (sub.sum(axis=1) == 10).all() and set(np.unique(sub)) == {0, 1}
    assert multiplicity_norm(np.ones((4, IMAGES))) == 2.0  # sqrt(4 replicates x 1^2)
    assert multiplicity_norm(boot) >= math.sqrt(32)  # an image drawn once on average
    with pytest.raises(ConfigError):
        subsample_weights(IMAGES, IMAGES + 1, 1, seed=0)


def test_exact_replicates_are_free_and_private_ones_are_accounted():
    fp, table, _ = _task(2)
    replicates, record = query_replicates(table, fp, SPACE, replicates=16, resample_seed=5)
    assert len(replicates) == 16 and record["dp"] is None and record["epsilon_total"] is None
    assert all(r.task_id == fp.task_id and r.n_samples > 0 for r in replicates)
    assert check_replicates_record(record, fp.privacy, SPACE, 16, IMAGES) is None

    private, table, _ = _task(3, epsilon=1.0)
    spec = PrivacySpec(epsilon=1.0, seed=9)
    replicates, record = query_replicates(table, private, SPACE, replicates=16, spec=spec,
                                          resample_seed=5, resampling="bootstrap")
    factor = poisson_bound(16)  # public: the bound on one image's keyed multiplicities
    base_dp = private.privacy["dp"]
    assert record["dp"]["sigma_counts"] == pytest.approx(base_dp["sigma_counts"] * factor)
    # Two Gaussian mechanisms of equal multiplier at ε = 1 each: more than 1, less than 2.
    total, delta = check_replicates_record(record, private.privacy, SPACE, 16, IMAGES)
    assert 1.0 < total < 2.0 and delta == pytest.approx(2e-6)
    assert total == pytest.approx(record["epsilon_total"])
    z = base_dp["sigma_counts"] / base_dp["sensitivity_counts"]
    assert composed_epsilon((z, z), 2e-6) == pytest.approx(total, rel=1e-6)
    for r in replicates:  # released like the query: non-negative counts of n per dimension
        assert (r.counts >= 0).all() and (r.counts.sum(axis=1) == r.n_samples).all()
    refused = [({**record, "dp": {**record["dp"], "sigma_counts": 1.0}}, "is below"),
               ({**record, "n_images": IMAGES + 1}, "images"),
               ({**record, "replicates": 3}, "the record says"),
               ({**record, "resampling": "jackknife"}, "unknown resampling"),
               ({**record, "dp": {k: v for k, v in record["dp"].items() if k != "weights"}},
                "older rayfp"),
               ({"replicates": 16, "n_images": IMAGES, "resampling": "bootstrap"},
                "malformed")]
    for bad, reason in refused:
        with pytest.raises(ConfigError, match=reason):
            check_replicates_record(bad, private.privacy, SPACE, 16, IMAGES)
    with pytest.raises(ConfigError, match="must be private too"):
        query_replicates(table, private, SPACE, replicates=4, spec=PrivacySpec.none(),
                         resampling="bootstrap")


def test_parametric_replicates_re_release_the_release_for_free():
    private, _, _ = _task(4, epsilon=1.0)
    replicates, record = query_replicates(None, private, SPACE, replicates=8, resample_seed=1,
                                          resampling="parametric")
    assert record["resampling"] == "parametric"
    assert check_replicates_record(record, private.privacy, SPACE, 8, IMAGES) == (
        private.privacy["dp"]["epsilon"], private.privacy["dp"]["delta"])
    assert not all(np.array_equal(r.counts, private.counts) for r in replicates)
    assert all((r.counts.sum(axis=1) == private.n_samples).all() for r in replicates)
    exact, _, _ = _task(5)
    with pytest.raises(ConfigError, match="view table"):
        query_replicates(None, exact, SPACE, replicates=8)  # the default bootstrap needs views
    with pytest.raises(ConfigError, match="exact"):
        query_replicates(None, exact, SPACE, replicates=8, resampling="parametric")


def test_confidence_on_a_hand_made_case():
    answer = ["a", "b", "c"]
    replicate_answers = [["a", "b", "c"], ["b", "a", "c"], ["a", "c", "d"], ["a", "b", "d"]]
    distances = np.array([[1.0, 2.0, 3.0], [1.5, 1.2, 3.0], [1.1, 2.5, 2.0], [0.9, 2.1, 3.3]])
    c = confidence_of(answer, replicate_answers, distances)
    assert c.stability == 0.75 and c.label == "moderate" and not c.unsure
    assert c.per_neighbour["b"].top1_rate == 0.25 and c.per_neighbour["b"].topk_rate == 0.75
    assert c.per_neighbour["c"].topk_rate == 0.75 and "d" not in c.per_neighbour
    assert c.per_neighbour["a"].distance_lo < 1.0 < c.per_neighbour["a"].distance_hi


def test_a_query_and_its_replicates_are_ranked_together(tmp_path):
    store = Store(tmp_path / "kb")
    store.put_space(SPACE)
    kb = KnowledgeBase(store, min_images=1, max_epsilon=None)  # exact test fingerprints
    for seed in range(6):
        kb.register_task({}, _task(100 + seed, shift=0.08 * seed)[0])
    query, table, _ = _task(7, shift=0.02)
    replicates, _ = query_replicates(table, query, SPACE, replicates=24, resample_seed=0)
    found, confidence = kb.nearest_with_replicates(query, replicates, k=3)
    plain = kb.nearest_to_fingerprint(query, k=3)
    assert [n.task_id for n in found] == [n.task_id for n in plain]  # the query's own answer
    assert [n.distance for n in found] == pytest.approx([n.distance for n in plain], abs=1e-12)
    assert confidence.replicates == 24 and 0 <= confidence.stability <= 1
    assert confidence.stability == found[0].top1_rate
    assert sum(n.top1_rate for n in found) <= 1 + 1e-12
    for n in found:
        assert 0 <= n.top1_rate <= n.topk_rate <= 1
        assert n.distance_lo <= n.distance_hi
    index = kb.index(SPACE.space_id)
    # One screening of the query bounds every replicate's candidates (certified here), and the
    # rankings equal the exhaustive ones; with too small a candidate budget the query's own
    # answer stays exact and the result says it is not certified.
    exhaustive = [[t for t, _ in f] for f in index.top_k_many([query, *replicates], 3)]
    ranked, _, certified = index.search_with_replicates(query, replicates, 3)
    assert certified and [[t for t, _ in f.neighbours] for f in ranked] == exhaustive
    ranked, _, certified = index.search_with_replicates(query, replicates, 3, candidates=1)
    assert not certified and [t for t, _ in ranked[0].neighbours] == exhaustive[0]
    # each replicate's distance is the exact bKLD
    direct = [[bkld(r, store.get_fingerprint(SPACE.space_id, n.task_id)) for n in found]
              for r in replicates[:3]]
    assert index.distances_to(replicates[:3], [n.task_id for n in found]) == pytest.approx(
        np.array(direct), abs=1e-9)
    # A query identical to a stored task, with identical replicates, is certain.
    same = store.get_fingerprint(SPACE.space_id, "task-103")
    twin = finalize(PartialCounts(SPACE.space_id, same.counts, same.feature_sum,
                                  same.n_samples), task_id="twin", n_images=IMAGES)
    _, certain = kb.nearest_with_replicates(twin, [twin] * 4, k=2)
    assert certain.stability == 1.0 and certain.label == "confident"
    with pytest.raises(ConfigError, match="bKLD"):
        kb.nearest_with_replicates(query, replicates, k=3, metric="cosine")


def test_replicates_on_the_wire():
    query, table, _ = _task(8)
    replicates, record = query_replicates(table, query, SPACE, replicates=5, resample_seed=2)
    wire = encode_replicates(replicates, record)
    fields = {k: wire[k] for k in ("counts", "feature_sum", "n", "counts_dtype", "compression")}
    back = decode_replicates(SPACE, query, **fields)
    assert all(np.array_equal(a.counts, b.counts) and a.n_samples == b.n_samples
               for a, b in zip(replicates, back))
    assert wire["privacy"] == record
    broken = {**fields, "n": [*fields["n"][:-1], fields["n"][-1] + 1]}
    with pytest.raises(ConfigError, match=r"replicates\[4\]: counts: every dimension"):
        decode_replicates(SPACE, query, **broken)
    with pytest.raises(ConfigError, match="expected 1 to 64"):
        decode_replicates(SPACE, query, **{**fields, "n": []})
    other = random_fingerprint(np.random.default_rng(0), make_space(dim=3, bins=4), "x")
    with pytest.raises(ConfigError):
        decode_replicates(make_space(dim=3, bins=4), other, **fields)
    assert ScreenedIndex  # the index the service ranks them with
