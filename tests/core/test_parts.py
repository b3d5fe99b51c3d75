"""Tasks pooled over several sites: the shared plan, exact and private merges, the cloud's
handling of parts (without Ray; the HTTP route is in test_serve, the real extraction in
test_cli)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_space

from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.core.fingerprint import PartialCounts, finalize
from rayfp.core.parts import PartPlan, TaskPart, check_parts, parse_part
from rayfp.core.sampling import KEYED_PLAN, keyed_plan, sample_plan
from rayfp.errors import ConfigError, ConflictError, SpaceMismatchError
from rayfp.privacy.mechanism import PrivacySpec
from rayfp.privacy.parts import merge_parts, release_part
from rayfp.privacy.policy import check_privacy
from rayfp.store.store import Store

SPACE = make_space(dim=10, bins=20)
COUNTS = (7, 12, 5)  # images at the three sites
SAMPLES = 600


def _features(plan, offset: int, images: np.ndarray) -> np.ndarray:
    """What a backbone would see: the image plus its crop and flip (deterministic)."""
    idx = plan.image_index + offset
    return np.clip(images[idx] + 0.002 * plan.crop_top[:, None] - 0.001 * plan.crop_left[:, None]
                   + 0.05 * plan.flip[:, None], 0, 1)


def _contents(images: np.ndarray, offset: int, count: int) -> list[bytes]:
    """Each image's content digest (what the inventory computes from its pixels)."""
    return [images[i].tobytes() for i in range(offset, offset + count)]


def _parts(spec: PrivacySpec, *, noise_share: str = "full", task: str = "pooled"):
    images = np.random.default_rng(0).random((sum(COUNTS), SPACE.dim)) * 0.8
    plan = PartPlan(task, COUNTS, SAMPLES, seed=11, plan=spec.plan)
    parts = []
    for k in range(1, len(COUNTS) + 1):
        drawn = plan.views_of(k, _contents(images, plan.offset(k), COUNTS[k - 1]))
        partial = PartialCounts.from_features(_features(drawn, plan.offset(k), images), SPACE,
                                              clip_sum=spec.private)
        parts.append(release_part(partial, SPACE, plan=plan, part=k, spec=spec,
                                  noise_share=noise_share))
    return plan, parts, images


def test_the_parts_split_the_task_plan_exactly():
    plan = PartPlan("t", COUNTS, SAMPLES, seed=3, plan="paper")
    whole = sample_plan(plan.total_images, SAMPLES, 3)
    shares = [plan.views_of(k) for k in (1, 2, 3)]
    assert sum(len(s) for s in shares) == SAMPLES
    for k, share in enumerate(shares, start=1):
        assert share.image_index.min() >= 0 and share.image_index.max() < COUNTS[k - 1]
    back = np.sort(np.concatenate([s.image_index + plan.offset(k)
                                   for k, s in enumerate(shares, start=1)]))
    assert np.array_equal(back, np.sort(whole.image_index))
    assert parse_part("2/3") == (2, 3)
    for bad in ("4/3", "x", "0/2"):
        with pytest.raises(ConfigError):
            parse_part(bad)


@pytest.mark.parametrize("samples", [SAMPLES, 601, 17])  # M | N, N mod M != 0, N < M
def test_keyed_parts_hold_the_task_views_from_their_own_images(samples):
    images = np.random.default_rng(0).random((sum(COUNTS), SPACE.dim))
    plan = PartPlan("t", COUNTS, samples, seed=3, plan=KEYED_PLAN)
    shares = [plan.views_of(k, _contents(images, plan.offset(k), COUNTS[k - 1]))
              for k in (1, 2, 3)]
    assert [len(s) for s in shares] == [plan.views_in(k) for k in (1, 2, 3)]
    assert sum(len(s) for s in shares) == samples
    cap = -(-samples // sum(COUNTS))
    for share in shares:  # no image above the task's cap, whichever part holds it
        assert np.bincount(share.image_index).max() <= cap
    with pytest.raises(ConfigError, match="content of its 7 units"):
        plan.views_of(1)
    if samples % sum(COUNTS) == 0:  # then the merge is the single-site keyed plan of the union
        whole = keyed_plan(_contents(images, 0, sum(COUNTS)), samples, 3)
        merged = np.concatenate([_features(s, plan.offset(k), images)
                                 for k, s in enumerate(shares, start=1)])
        assert np.array_equal(np.sort(merged, axis=0), np.sort(_features(whole, 0, images), axis=0))


def test_exact_parts_merge_to_the_single_site_fingerprint(tmp_path):
    plan, parts, images = _parts(PrivacySpec.none())
    single = PartialCounts.from_features(
        _features(sample_plan(plan.total_images, SAMPLES, 11), 0, images), SPACE)
    merged, record = merge_parts(parts, SPACE, min_images=1)
    assert np.array_equal(merged.counts, single.counts) and merged.n == SAMPLES
    assert np.allclose(merged.feature_sum, single.feature_sum)
    assert record["dp"] is None and record["parts"] == 3
    again = TaskPart.load(parts[1].save(tmp_path / "p2.npz"))  # a part travels as a file
    assert np.array_equal(again.counts, parts[1].counts) and again.plan == plan
    assert TaskPart.from_record(parts[2].to_record()).n_views == parts[2].n_views


def test_private_parts_merge_into_a_release_the_policy_accepts():
    for share, factor in (("full", np.sqrt(3)), ("split", 1.0)):
        plan, parts, _ = _parts(PrivacySpec(epsilon=1.0, seed=5), noise_share=share)
        merged, record = merge_parts(parts, SPACE, min_images=1)
        assert (merged.counts >= 0).all() and (merged.counts.sum(axis=1) == SAMPLES).all()
        fp = finalize(merged, task_id="pooled", n_images=plan.total_images, privacy=record)
        check_privacy(fp, SPACE, max_epsilon=1.0)  # a record that adds up
        part_sigma = parts[0].privacy["dp"]["sigma_part"]
        one_site = release_part(PartialCounts.empty(SPACE), SPACE, plan=plan, part=1,
                                spec=PrivacySpec(epsilon=1.0), noise_share="full")
        # Every site adds all of σ ("full") or σ/√K ("split"); merged: σ·√K or σ.
        assert record["dp"]["sigma_counts"] == pytest.approx(
            one_site.privacy["dp"]["sigma_part"] * factor)
        assert part_sigma == pytest.approx(one_site.privacy["dp"]["sigma_part"] * (
            1 if share == "full" else 1 / np.sqrt(3)))
    with pytest.raises(ConfigError, match="keyed"):
        release_part(PartialCounts.empty(SPACE), SPACE, part=1, spec=PrivacySpec(),
                     plan=PartPlan("t", COUNTS, SAMPLES, 0, "paper"))


def test_parts_that_do_not_belong_together_are_refused():
    _, parts, _ = _parts(PrivacySpec.none())
    with pytest.raises(ConfigError, match=r"missing part\(s\) \[3\]"):
        check_parts(parts[:2])
    with pytest.raises(ConfigError, match="arrived twice"):
        check_parts([*parts, parts[0]])
    _, other, _ = _parts(PrivacySpec.none(), task="other")
    with pytest.raises(ConfigError, match="another plan"):
        check_parts([parts[0], parts[1], other[2]])


def test_the_cloud_keeps_parts_until_all_arrive_then_registers_the_merge(tmp_path):
    store = Store(tmp_path / "cloud")
    store.put_space(SPACE)
    kb = KnowledgeBase(store, min_images=1, max_epsilon=None)
    _, parts, _ = _parts(PrivacySpec.none())
    assert kb.receive_part(parts[2])["missing"] == [1, 2]
    with pytest.raises(ConflictError, match="arrived before"):
        kb.receive_part(parts[2])
    other_plan = PartPlan("pooled", (7, 12, 6), SAMPLES, 11, "paper")  # other counts
    views = np.random.default_rng(1).random((len(other_plan.views_of(1)), SPACE.dim))
    stranger = release_part(PartialCounts.from_features(views, SPACE), SPACE, plan=other_plan,
                            part=1, spec=PrivacySpec.none())
    with pytest.raises(ConflictError, match="another plan"):
        kb.receive_part(stranger)
    forged = TaskPart(SPACE.space_id, 2, parts[1].plan, parts[1].counts, parts[1].n_views + 1,
                      parts[1].feature_sum, parts[1].privacy)
    with pytest.raises(ConfigError, match="its plan gives it"):
        kb.receive_part(forged)  # the server recomputes each part's share of the plan
    assert kb.receive_part(parts[0])["state"] == "waiting"
    assert not store.has_fingerprint(SPACE.space_id, "pooled")  # nothing half-merged
    assert kb.parts_state(SPACE.space_id, "pooled")["missing"] == [2]
    elsewhere = make_space(dim=10, bins=20, hi=2.0)
    store.put_space(elsewhere)
    with pytest.raises(SpaceMismatchError, match="wait in space"):
        kb.receive_part(TaskPart(elsewhere.space_id, 2, parts[1].plan, parts[1].counts,
                                 parts[1].n_views, parts[1].feature_sum, parts[1].privacy))
    state = kb.receive_part(parts[1])
    assert state["state"] == "merged" and state["missing"] == []
    fp = store.get_fingerprint(SPACE.space_id, "pooled")
    assert fp.n_images == sum(COUNTS) and fp.n_samples == SAMPLES
    assert store.parts_of(SPACE.space_id, "pooled") == []  # dropped once merged
    assert kb.parts_state(SPACE.space_id, "pooled")["state"] == "merged"


def test_parts_released_differently_or_sent_twice_at_once_are_refused(tmp_path):
    """Another release (here: other release bins) is a 409 on arrival, never held; the last
    part sent twice at the same moment merges once, the other copy gets 409."""
    from concurrent.futures import ThreadPoolExecutor

    store = Store(tmp_path / "cloud")
    store.put_space(SPACE)
    kb = KnowledgeBase(store, min_images=1, max_epsilon=8.0)
    plan, parts, _ = _parts(PrivacySpec(epsilon=1.0, seed=5))
    assert kb.receive_part(parts[0])["state"] == "waiting"
    images = np.random.default_rng(0).random((sum(COUNTS), SPACE.dim)) * 0.8
    drawn = plan.views_of(2, _contents(images, plan.offset(2), COUNTS[1]))
    other_bins = release_part(PartialCounts.from_features(_features(drawn, plan.offset(2), images),
                                                          SPACE, clip_sum=True),
                              SPACE, plan=plan, part=2,
                              spec=PrivacySpec(epsilon=1.0, seed=5, release_bins=5))
    with pytest.raises(ConflictError, match="release_bins"):
        kb.receive_part(other_bins)
    assert [p.part for p in store.parts_of(SPACE.space_id, "pooled")] == [1]
    assert kb.receive_part(parts[1])["state"] == "waiting"

    def send(part):
        try:
            return kb.receive_part(part)["state"]
        except ConflictError:
            return "409"

    with ThreadPoolExecutor(2) as pool:
        states = sorted(pool.map(send, [parts[2], parts[2]]))
    assert states in (["409", "merged"], ["merged", "merging"], ["409", "merging"])
    assert states.count("merged") <= 1 and store.has_fingerprint(SPACE.space_id, "pooled")
    assert store.parts_of(SPACE.space_id, "pooled") == []
