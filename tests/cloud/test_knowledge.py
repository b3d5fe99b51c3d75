"""Knowledge base, recommendations and the paper import, without Ray."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_space, random_fingerprint

from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.cloud.paper_import import import_paper
from rayfp.cloud.recommend import recommend
from rayfp.errors import ConfigError, NotFoundError, TooFewImagesError
from rayfp.search.index import ScreenedIndex
from rayfp.store.store import Store


@pytest.fixture(scope="module")
def paper_store(tmp_path_factory) -> tuple[Store, dict]:
    store = Store(tmp_path_factory.mktemp("paper") / "store")
    return store, import_paper(None, store)  # the copy that ships with rayfp


def test_import_paper_counts(paper_store):
    store, counts = paper_store
    assert counts == {"tasks": 71, "components": 213, "transfers": 15180, "baselines": 288,
                      "imported_distances": 8 * 71 * 71}  # 8 selectors, full-task columns
    policies = store.read_table("components").to_pandas()
    assert (policies.groupby("task_id").size() == 3).all() and policies.task_id.nunique() == 71
    assert "breast_cancer_classification_v2" in set(policies.task_id)


def test_import_paper_from_a_released_folder_matches_the_shipped_copy(paper_store, tmp_path):
    from conftest import unpack_paper_data

    store, counts = paper_store
    other = Store(tmp_path / "store")
    assert import_paper(unpack_paper_data(tmp_path / "release"), other) == counts
    for table in ("components", "transfers"):
        ours = store.read_table(table).to_pandas().drop(columns=["schema_version"], errors="ignore")
        theirs = other.read_table(table).to_pandas().drop(columns=["schema_version"], errors="ignore")
        key = [c for c in ours.columns if ours[c].notna().all()]
        pd.testing.assert_frame_equal(ours.sort_values(key).reset_index(drop=True),
                                      theirs.sort_values(key).reset_index(drop=True))


def test_paper_tasks_answer_from_imported_distances(paper_store):
    store, _ = paper_store
    kb = KnowledgeBase(store)
    found = kb.nearest_to_task("svhn", k=3)
    assert [n.basis for n in found] == ["imported:KLD-PP:NS-W:TS-100-BINS"] * 3
    assert [n.distance for n in found] == sorted(n.distance for n in found)
    assert "svhn" not in [n.task_id for n in found]
    with pytest.raises(NotFoundError, match="imported selectors"):
        kb.nearest_to_task("svhn", metric="cosine")
    recs = recommend(kb, found, ["augmentation", "pretraining", "architecture"],
                     rank="distance")
    assert [c["source"] for c in recs["augmentation"]] == [n.task_id for n in found]
    assert all("FasterAutoAugment search 0" in c["provenance"] for c in recs["augmentation"])
    pre = recs["pretraining"][0]
    assert pre["evidence"] == "transfer" and pre["value"] == found[0].task_id
    assert pre["n_seeds"] == 3 and 0 < pre["score"] <= 1
    assert recs["architecture"] == []  # the paper released no per-task best architecture


def test_recommendations_rank_by_what_worked_elsewhere(paper_store):
    """The default order: the learned score (outcomes of other targets, blended with the
    distance), each candidate with its reason; the query's own task never a source."""
    store, _ = paper_store
    kb = KnowledgeBase(store)
    wide = kb.nearest_to_task("cholec80_hook_presence", k=64)
    recs = recommend(kb, wide, ["pretraining", "augmentation"], target="cholec80_hook_presence",
                     k=5)
    for kind in ("pretraining", "augmentation"):
        ranked = recs[kind]
        assert len(ranked) == 5 and [c["rank"] for c in ranked] == [1, 2, 3, 4, 5]
        assert all(c["ranking"] == "learned" for c in ranked)
        scores = [c["learned_score"] for c in ranked]
        assert scores == sorted(scores, reverse=True)
        assert "cholec80_hook_presence" not in [c["source"] for c in ranked]
        assert all("targets it was tried on" in c["why"] and c["n_targets"] > 0 for c in ranked)
    # What the outcomes teach: digits are poor pretraining sources for medical images.
    assert not {"mnist_digit_classification", "emnist_digit_classification", "svhn"} & {
        c["source"] for c in recs["pretraining"]}
    model = kb.outcome_model()
    assert kb.outcome_model() is model  # kept in memory until the outcomes change
    assert set(model.alphas) == {"arch", "pretrain", "augmentation", "multi_task"}
    assert all(0 <= a <= 1 for a in model.alphas.values())


def test_imported_distances_are_cached_until_the_table_changes(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    row = {"selector": "KLD-PP:NS-W:TS-100-BINS", "target": "t", "provenance": "test"}
    store.upsert("imported_distances", [{**row, "source": "a", "distance": 2.0},
                                        {**row, "source": "b", "distance": 1.0},
                                        {**row, "source": "t", "distance": 0.0}])
    kb = KnowledgeBase(store)
    reads = []
    original = store.read_table
    monkeypatch.setattr(store, "read_table", lambda name: reads.append(name) or original(name))
    assert [n.task_id for n in kb.nearest_to_task("t", k=3)] == ["b", "a"]  # never itself
    assert [n.task_id for n in kb.nearest_to_task("t", k=3)] == ["b", "a"]
    assert reads.count("imported_distances") == 1
    store.upsert("imported_distances", [{**row, "source": "c", "distance": 0.5}])
    before = reads.count("imported_distances")  # the upsert reads it too
    assert [n.task_id for n in kb.nearest_to_task("t", k=3)] == ["c", "b", "a"]
    assert reads.count("imported_distances") == before + 1


def test_registration_components_and_best_by_own_score(tmp_path, rng):
    store = Store(tmp_path / "s")
    space = make_space(dim=6, bins=8)
    store.put_space(space)
    kb = KnowledgeBase(store, min_images=10, max_epsilon=None)  # exact test fingerprints
    fps = [random_fingerprint(rng, space, f"t{i}") for i in range(4)]
    for fp in fps:
        kb.register_task({"modality": "CT"}, fp)
    assert [t["task_id"] for t in kb.tasks(space.space_id)] == ["t0", "t1", "t2", "t3"]
    for seed, (value, score) in enumerate([("resnet50", 0.7), ("vit_s", 0.9), ("vit_s", 0.8)]):
        kb.record_component({"task_id": "t1", "kind": "architecture", "value": value,
                             "metric": "AUROC", "score": score, "seed": seed,
                             "provenance": "site A"})
    found = kb.nearest_to_task("t0", k=3)
    recs = recommend(kb, found, ["architecture"])["architecture"]
    assert [c["source"] for c in recs] == ["t1"]
    assert recs[0]["value"] == "vit_s" and recs[0]["score"] == 0.9 and recs[0]["n_seeds"] == 2
    with pytest.raises(NotFoundError, match="POST /v1/tasks"):
        kb.record_component({"task_id": "nope", "kind": "architecture", "value": "x"})
    with pytest.raises(ConfigError, match="kind"):
        kb.record_component({"task_id": "t1", "kind": "optimizer", "value": "x"})
    small = random_fingerprint(rng, space, "small", n=40)  # n_images = 8 < 10
    with pytest.raises(TooFewImagesError):
        kb.register_task({}, small)


def test_a_query_by_task_id_is_answered_from_the_index(tmp_path, rng, monkeypatch):
    """The index holds every ranked task's counts: a query by id reads no fingerprint file,
    and answers exactly what the stored fingerprint answers."""
    store = Store(tmp_path / "s")
    space = make_space(dim=6, bins=8)
    store.put_space(space)
    kb = KnowledgeBase(store, min_images=1, max_epsilon=None)  # exact test fingerprints
    for i in range(6):
        kb.register_task({}, random_fingerprint(rng, space, f"t{i}"))
    from_store = kb.stored_fingerprint("t2", from_index=False)
    expected = kb.nearest_to_fingerprint(from_store, k=3)
    kb.index(space.space_id)  # built once

    def no_reads(*args, **kwargs):
        raise AssertionError("a query by task id read the store's fingerprints")

    monkeypatch.setattr(store, "find_fingerprints", no_reads)
    from_index = kb.stored_fingerprint("t2")
    np.testing.assert_array_equal(from_index.counts, from_store.counts)
    np.testing.assert_array_equal(from_index.feature_sum, from_store.feature_sum)
    ranked = [(n.task_id, n.distance) for n in kb.nearest_to_task("t2", k=3)]
    assert ranked == [(n.task_id, n.distance) for n in expected]  # hub flags arrive later
    assert kb.stored_fingerprint("not-there") is None


def test_index_follows_the_store_reading_only_changed_files(tmp_path, rng, monkeypatch):
    store = Store(tmp_path / "s")
    space = make_space(dim=6, bins=8)
    store.put_space(space)
    kb = KnowledgeBase(store, min_images=10, max_epsilon=None)  # exact test fingerprints
    for i in range(12):
        kb.register_task({}, random_fingerprint(rng, space, f"t{i:02d}"))
    assert len(kb.index(space.space_id)) == 12
    reads = []
    original = store.read_fingerprint_files
    monkeypatch.setattr(store, "read_fingerprint_files",
                        lambda paths, *a, **kw: reads.append(len(paths)) or
                        original(paths, *a, **kw))
    kb.register_task({}, random_fingerprint(rng, space, "t99"))  # added
    kb.register_task({}, random_fingerprint(rng, space, "t03"))  # replaced
    assert store.delete_fingerprint(space.space_id, "t07") == 1  # withdrawn
    index = kb.index(space.space_id)
    assert sum(reads) == 2 and kb.index(space.space_id) is index  # unchanged store: no work

    def same_as_a_fresh_index(index):
        fresh = ScreenedIndex(store.fingerprints(space.space_id))
        assert sorted(index.task_ids) == sorted(fresh.task_ids)
        target = random_fingerprint(rng, space, "q")
        assert index.top_k(target, 13) == fresh.top_k(target, 13)

    same_as_a_fresh_index(index)
    assert "t07" not in index.task_ids and len(index) == 12
    # A compaction folds the superseded t03 away and rewrites the files: same content.
    assert store.compact()["fingerprints"] == 1
    same_as_a_fresh_index(kb.index(space.space_id))
    for task in index.task_ids:
        store.delete_fingerprint(space.space_id, task)
    assert kb.index(space.space_id) is None


def test_nearest_many_ranks_mixed_batches_like_single_queries(tmp_path, rng):
    store = Store(tmp_path / "s")
    spaces = [make_space(dim=5, bins=6), make_space(dim=4, bins=7, hi=2.0)]
    kb = KnowledgeBase(store, min_images=1, max_epsilon=None)  # exact test fingerprints
    for space in spaces:
        store.put_space(space)
        for i in range(6):
            kb.register_task({}, random_fingerprint(rng, space, f"{space.space_id[:4]}-{i}"))
    queries = [(random_fingerprint(rng, space, f"q{i}"), k, metric)
               for i, (space, k, metric) in enumerate([
                   (spaces[0], 3, "bkld-small"), (spaces[1], 2, "bkld-small"),
                   (spaces[0], 5, "bkld-small"), (spaces[0], 2, "js"),
                   (spaces[1], 4, "bkld-large")])]
    batched = kb.nearest_many(queries)

    def ranking(found):  # hub flags may arrive in between (measured in the background)
        return [(n.task_id, n.basis, n.epsilon) for n in found]

    single = [kb.nearest_to_fingerprint(t, k=k, metric=m) for t, k, m in queries]
    assert [ranking(f) for f in batched] == [ranking(f) for f in single]
    # Batched re-ranking shares one float64 product: distances agree to rounding.
    assert [n.distance for f in batched for n in f] == pytest.approx(
        [n.distance for f in single for n in f], abs=1e-12)
    assert [len(found) for found in batched] == [3, 2, 5, 2, 4]
    assert all(n.basis == f"fingerprint:{t.space_id}" for (t, _, _), found in
               zip(queries, batched) for n in found)


def test_a_growing_space_chooses_its_index_kernel_again(tmp_path, rng):
    """A space that starts with one task must not keep a kernel measured on one source."""
    store = Store(tmp_path / "s")
    space = make_space(dim=6, bins=8)
    store.put_space(space)
    kb = KnowledgeBase(store, min_images=1, max_epsilon=None)  # exact test fingerprints
    measured = []
    for i in range(9):
        kb.register_task({}, random_fingerprint(rng, space, f"t{i}"))
        measured.append(kb.index(space.space_id).measured_on)
    assert measured == [1, 1, 3, 3, 3, 3, 7, 7, 7]  # chosen again once the space doubles
    forced = KnowledgeBase(store, kernel="float32-torch").index(space.space_id)
    assert forced.kernel == "float32-torch" and forced.measured_on == 0


def _with_a_hub(n_tasks: int = 20):
    """Random tasks plus a hub. bKLD(t, s) = KL(P_t || softmax(P_s)) favours sources whose mass
    sits where the targets' mass is on average: the hub's histograms are the tasks' mean
    histogram sharpened (to the 8th power), so it is near to many of them."""
    rng = np.random.default_rng(1)
    space = make_space(dim=6, bins=8)
    tasks = [random_fingerprint(rng, space, f"t{i:02d}") for i in range(n_tasks)]
    sharpened = (sum(fp.probabilities for fp in tasks) / n_tasks) ** 8
    sharpened /= sharpened.sum(axis=1, keepdims=True)
    counts = np.stack([rng.multinomial(500, row) for row in sharpened])
    return space, [*tasks, dataclasses.replace(tasks[0], task_id="hub", counts=counts)]


def test_hubness_finds_the_task_near_to_many(rng):
    from rayfp.search.hubness import measure_hubness

    space, fps = _with_a_hub()
    index = ScreenedIndex(fps)
    found = measure_hubness(index, k=3, metric="bkld-small")
    assert found.queries == found.sources == 21
    assert sum(found.k_occurrence.values()) == 3 * 21  # every query lists k tasks
    assert found.hubs()[0][0] == "hub" and found.k_occurrence["hub"] >= 2 * 3
    assert found.skewness > 0.5
    record = found.to_record()
    assert record["hubs"][0]["task_id"] == "hub" and record["hub_threshold"] == 6
    # Estimated from a sample of queries: scaled to all tasks, and a few lucky hits are no hub.
    sampled = measure_hubness(index, k=3, metric="bkld-small", max_queries=7, seed=1)
    assert sampled.queries == 7
    assert sampled.k_occurrence["hub"] == pytest.approx(sampled.hits["hub"] * 21 / 7)
    assert all(sampled.hits[t] >= 3 for t, _ in sampled.hubs())
    assert any(sampled.k_occurrence[t] >= 6 and not sampled.is_hub(t) for t in sampled.hits)


def test_answers_flag_hubs_and_recommend_every_neighbour_as_pretraining(tmp_path):
    store = Store(tmp_path / "s")
    space, fps = _with_a_hub()
    store.put_space(space)
    kb = KnowledgeBase(store, min_images=10, max_epsilon=None)  # exact test fingerprints
    for fp in fps:
        kb.register_task({}, fp)
    assert kb.hubness(space.space_id).is_hub("hub")  # measured now (wait=True)
    found = next(found for found in (kb.nearest_to_task(f"t{i:02d}", k=3) for i in range(20))
                 if "hub" in [n.task_id for n in found])
    hub = next(n for n in found if n.task_id == "hub")
    assert hub.hub and hub.k_occurrence == kb.hubness(space.space_id).k_occurrence["hub"]
    recs = recommend(kb, found, ["pretraining", "cotraining"])
    for kind in ("pretraining", "cotraining"):  # no transfers recorded: still k candidates
        assert [c["source"] for c in recs[kind]] == [n.task_id for n in found]
        assert {c["evidence"] for c in recs[kind]} == {"nearest"}
        assert [c["hub"] for c in recs[kind]] == [n.hub for n in found]


def test_augmentation_policies_read_as_transforms_with_rates(paper_store):
    from rayfp.cloud.policy_text import expected_uses, summarize_policy

    store, _ = paper_store
    policy = store.read_table("components").to_pandas().value.iloc[0]
    uses = expected_uses(json.loads(policy))
    # 5 sub-policies x 3 stages, each stage picks one operation (NoOp dropped): <= 3 per image
    assert 0 < sum(uses.values()) <= 3 + 1e-9
    text = summarize_policy(policy)
    assert "/img" in text and "transforms/img" in text and len(text) < 260
    assert summarize_policy("resnet50") == "resnet50"  # not a policy: shown as it is
    kb = KnowledgeBase(store)
    recs = recommend(kb, kb.nearest_to_task("svhn", k=3), ["augmentation"])["augmentation"]
    assert all(c["summary"].endswith("transforms/img") for c in recs)


def test_hubness_without_the_service_index_gives_the_same_numbers():
    from rayfp.search.hubness import measure_hubness

    _, fps = _with_a_hub()
    screened = measure_hubness(ScreenedIndex(fps), k=3, metric="bkld-small")
    plain = measure_hubness(fps, k=3, metric="bkld-small")  # what `rayfp show` uses
    assert plain.k_occurrence == pytest.approx(screened.k_occurrence)
    assert plain.skewness == pytest.approx(screened.skewness)
