"""Differentially private releases (rayfp.privacy.mechanism, postprocess, noise, policy) and the
membership-inference audit (audit, roc, synthetic): the maths checked against the accountant,
the post-processing's invariants, and attacks that must find a leak that is there."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from conftest import make_space

from rayfp.core.fingerprint import Fingerprint, PartialCounts
from rayfp.core.sampling import (
    BALANCED_PLAN,
    KEYED_PLAN,
    keyed_plan,
    sample_plan,
    views_per_image_cap,
)
from rayfp.errors import ConfigError, PrivacyPolicyError
from rayfp.privacy.audit import AuditConfig, run_audit
from rayfp.privacy.mechanism import (
    MEAN_FROM_NOISED_SUM,
    PrivacySpec,
    accounted_epsilon,
    calibrate,
    privatize,
    release,
    spec_from_record,
)
from rayfp.privacy.noise import SecureNoiseSource, noise_source
from rayfp.privacy.policy import check_privacy
from rayfp.privacy.postprocess import coarsen, project_to_counts, spread
from rayfp.privacy.roc import roc_auc, summarize, tpr_at_fpr
from rayfp.privacy.synthetic import TaskFamilies, synthetic_space


@pytest.mark.parametrize("n_images, n_samples", [(7, 100), (200, 10_000), (500, 300)])
def test_the_keyed_plan_bounds_every_image(n_images, n_samples):
    contents = [i.to_bytes(4, "little") for i in range(n_images)]
    plan = keyed_plan(contents, n_samples, 3)
    per_image = np.bincount(plan.image_index, minlength=n_images)
    cap = views_per_image_cap(n_images, n_samples, plan=KEYED_PLAN)
    assert per_image.max() == cap == math.ceil(n_samples / n_images)
    assert per_image.max() - per_image.min() <= 1 and per_image.sum() == n_samples
    paper_cap = views_per_image_cap(n_images, n_samples, plan="paper", seed=3)
    assert paper_cap == np.bincount(sample_plan(n_images, n_samples, 3).image_index).max()


@pytest.mark.parametrize("epsilon", [0.5, 2.0, 8.0])
@pytest.mark.parametrize("mean", ["counts", MEAN_FROM_NOISED_SUM])
def test_noise_scale_matches_the_accountant(epsilon, mean):
    """σ from dp-accounting's analytic Gaussian calibration; its PLD accountant, composing the
    released parts independently, must give back the ε asked for."""
    space = make_space(dim=24, bins=10)
    spec = PrivacySpec(epsilon=epsilon, delta=1e-6, mean=mean)
    scale = calibrate(spec, space, cap=50)
    assert scale.sensitivity_counts == pytest.approx(50 * math.sqrt(2 * 24))
    assert accounted_epsilon(scale, 1e-6) == pytest.approx(epsilon, rel=2e-3)
    assert (scale.sigma_sum is None) == (mean == "counts")
    # Twice the views per image: twice the noise for the same guarantee.
    assert calibrate(spec, space, cap=100).sigma_counts == pytest.approx(2 * scale.sigma_counts)


def test_post_processing_keeps_every_dimension_s_sum_and_is_non_negative():
    rng = np.random.default_rng(0)
    noisy = rng.normal(20, 80, size=(300, 12))
    counts = project_to_counts(noisy, 240)
    assert counts.dtype == np.int64 and (counts >= 0).all()
    assert (counts.sum(axis=1) == 240).all()
    exact = rng.multinomial(240, np.full(12, 1 / 12), size=300)
    assert np.array_equal(project_to_counts(exact.astype(float), 240), exact)  # no-op if valid
    fine = spread(coarsen(exact, 4), 12)
    assert np.array_equal(coarsen(fine, 4), coarsen(exact, 4)) and (fine.sum(1) == 240).all()


def test_a_private_release_is_a_valid_fingerprint_with_its_record():
    rng = np.random.default_rng(1)
    space = make_space(dim=32, bins=20)
    features = rng.normal(size=(1000, 32))
    partial = PartialCounts.from_features(features, space, clip_sum=True)
    released, record = release(partial, space, task_id="t", n_images=200, min_images=50,
                               spec=PrivacySpec(epsilon=2.0, seed=5))
    assert (released.counts >= 0).all() and (released.counts.sum(axis=1) == 1000).all()
    assert not np.array_equal(released.counts, partial.counts)
    mean = released.feature_sum / released.n
    assert ((mean >= space.edges_lo - 1e-9) & (mean <= space.edges_hi + 1e-9)).all()
    dp = record["dp"]
    assert (dp["epsilon"], dp["delta"], dp["views_per_image_cap"], dp["plan"]) == (
        2.0, 1e-6, 5, KEYED_PLAN)
    assert record["dp_epsilon"] == 2.0 and record["min_images"] == 50
    assert dp["noise"].startswith("seeded")
    assert spec_from_record(record) == PrivacySpec(epsilon=2.0)  # re-fingerprinting keeps it
    again, _ = release(partial, space, task_id="t", n_images=200, min_images=50,
                       spec=PrivacySpec(epsilon=2.0, seed=5))
    other, _ = release(partial, space, task_id="u", n_images=200, min_images=50,
                       spec=PrivacySpec(epsilon=2.0, seed=5))
    assert np.array_equal(again.counts, released.counts)  # seeded: reproducible
    assert not np.array_equal(other.counts, released.counts)  # but never shared by two tasks
    exact, exact_record = release(partial, space, task_id="t", n_images=200, min_images=50,
                                  spec=PrivacySpec.none())
    assert exact is partial and exact_record["dp"] is None


def test_unseeded_noise_comes_from_the_operating_system():
    source = noise_source(None)
    assert isinstance(source, SecureNoiseSource) and "urandom" in source.name
    draws = source.normal(3.0, (200_000,))
    assert abs(draws.mean()) < 0.05 and draws.std() == pytest.approx(3.0, rel=0.02)
    assert not np.array_equal(draws[:10], noise_source(None).normal(3.0, (10,)))


def test_bad_privacy_settings_fail_clearly():
    for kwargs, message in (({"epsilon": 0}, "epsilon must be > 0"),
                            ({"delta": 1.5}, "delta must be in"),
                            ({"mean": "median"}, "mean must be one of")):
        with pytest.raises(ConfigError, match=message):
            PrivacySpec(**kwargs)
    space = make_space(dim=8, bins=10)
    with pytest.raises(ConfigError, match="finite epsilon"):
        calibrate(PrivacySpec.none(), space, 5)


def test_the_policy_checks_epsilon_and_the_record():
    space = make_space(dim=16, bins=10)
    rng = np.random.default_rng(2)
    partial = PartialCounts.from_features(rng.normal(size=(400, 16)), space, clip_sum=True)
    released, record = release(partial, space, task_id="t", n_images=100, min_images=1,
                               spec=PrivacySpec(epsilon=4.0, seed=1))
    fp = Fingerprint(task_id="t", space_id=space.space_id, counts=released.counts,
                     feature_sum=released.feature_sum, n_samples=400, n_images=100,
                     privacy=record)
    check_privacy(fp, space, max_epsilon=8)  # passes
    check_privacy(dataclasses.replace(fp, privacy={}), space, max_epsilon=None)  # no policy
    bad = [({}, "exact counts"), ({"epsilon": 9.0}, "at most ε = 8"),
           ({"sigma_counts": 1.0}, "below the"), ({"views_per_image_cap": 1}, "at least 4"),
           ({"delta": 0.01}, "at most 1e-05"), ({"mechanism": "laplace"}, "gaussian"),
           ({"plan": BALANCED_PLAN}, "follow the file order")]
    for change, message in bad:
        privacy = {} if not change else {**record, "dp": {**record["dp"], **change},
                                         "dp_epsilon": change.get("epsilon", 4.0)}
        with pytest.raises(PrivacyPolicyError, match=message):
            check_privacy(dataclasses.replace(fp, privacy=privacy), space, max_epsilon=8)


def test_roc_statistics():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    non = np.arange(1000.0)
    # 1 % of 1,000 non-members (990..999) may pass: the threshold is 989
    assert tpr_at_fpr(np.array([995.5, 989.5, 988.5, 5.0]), non, 0.01) == 0.5
    summary = summarize("x", np.r_[non + 1], non, replicates=50)
    assert summary.auc.low <= summary.auc.value <= summary.auc.high


@pytest.fixture(scope="module")
def leaky_case():
    """Few images, many views each, low-dimensional features: a fingerprint that leaks."""
    tasks = TaskFamilies(dim=64, seed=4).draw(4)
    space = synthetic_space(tasks, bins=20, seed=4)
    m, samples = 30, 3000
    cap = views_per_image_cap(m, samples, plan="paper", seed=0)
    bank = tasks[0].view_bank(4 * m, 2 * cap, np.random.default_rng(9))
    return space, bank, m, samples


def test_the_audit_finds_members_when_the_fingerprint_leaks(leaky_case):
    """The sanity check that can fail: exact counts of 30 images with 100 views each must let the
    per-bin and the shadow-calibrated attacks tell members apart."""
    space, bank, m, samples = leaky_case
    config = AuditConfig(members=m, samples=samples, privacy=PrivacySpec.none(), trials=3,
                         shadows=6, seed=1)
    scores = run_audit(bank, space, config)
    for attack in ("lrt", "lira"):
        assert len(scores.members[attack]) == len(scores.non_members[attack]) == 3 * m
        assert roc_auc(scores.members[attack], scores.non_members[attack]) > 0.8, attack


def test_noise_hides_the_members_of_the_same_case(leaky_case):
    space, bank, m, samples = leaky_case
    config = AuditConfig(members=m, samples=samples, trials=3, shadows=6, seed=1,
                         privacy=PrivacySpec(epsilon=0.5, seed=2))
    scores = run_audit(bank, space, config)
    for attack in ("lrt", "lira"):
        assert roc_auc(scores.members[attack], scores.non_members[attack]) < 0.7, attack


def test_privatize_refuses_counts_of_another_space():
    a, b = make_space(dim=8, bins=10), make_space(dim=8, bins=10, hi=2.0)
    partial = PartialCounts.empty(a)
    partial.n = 10
    with pytest.raises(ConfigError, match="cannot be released"):
        privatize(partial, b, n_images=5, spec=PrivacySpec())


def test_audit_command_writes_the_table_the_json_and_the_roc_plot(tmp_path, capsys):
    import json

    from rayfp.cli.main import main

    out = tmp_path / "audit"
    assert main(["audit", "--synthetic", "--members", "20", "--samples", "400", "--epsilon",
                 "inf", "1", "--dim", "16", "--candidates", "20", "--shadows", "3", "--out",
                 str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "bound" in printed and "0.566" in printed  # ε = 1: the Gaussian-DP ceiling
    results = json.loads((out / "audit.json").read_text())["results"]
    assert {(r["epsilon"], r["attack"]) for r in results} == {
        (e, a) for e in (None, 1.0) for a in ("lrt", "mean", "lira")}
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exact_counts_do_not_leave_the_site_unless_asked(tmp_path, capsys):
    """`rayfp query --fingerprint-from` checks the stored release before any network call."""
    from conftest import random_fingerprint

    from rayfp.cli.main import main
    from rayfp.store.store import Store

    store = Store(tmp_path / "store")
    space = make_space(dim=8, bins=10)
    store.put_space(space)
    store.put_fingerprint(random_fingerprint(np.random.default_rng(0), space, "mine"))
    args = ["query", "--server", "http://127.0.0.1:9", "--task-id", "mine",
            "--fingerprint-from", str(store.root)]
    assert main(args) == 2
    assert "carries exact counts" in capsys.readouterr().err
    assert main([*args, "--epsilon", "inf"]) == 2  # now it is sent: the server is unreachable
    assert "cannot reach" in capsys.readouterr().err


def test_the_bounds_match_gaussian_differential_privacy():
    from rayfp.privacy.bounds import describe, gdp_mu, max_auc, max_tpr

    mu = gdp_mu(1.0, 1e-6)
    assert mu == pytest.approx(1 / 4.2254, rel=1e-3)
    assert max_auc(mu) == pytest.approx(0.5665, abs=1e-3)
    assert max_tpr(mu, 0.01) == pytest.approx(0.0183, abs=3e-4)
    assert max_auc(gdp_mu(math.inf, 1e-6)) == 1.0 and "no guarantee" in describe(math.inf, 1)
    assert "AUC 0.566" in describe(1.0, 1e-6)


def test_show_tells_exact_from_private_releases(tmp_path, capsys):
    from conftest import private_fingerprint, random_fingerprint

    from rayfp.cli.main import main
    from rayfp.store.store import Store

    store = Store(tmp_path / "store")
    space = make_space(dim=8, bins=10)
    store.put_space(space)
    rng = np.random.default_rng(3)
    store.put_fingerprint(random_fingerprint(rng, space, "public"))
    store.put_fingerprint(private_fingerprint(rng, space, "site-a", epsilon=2.0))
    store.put_fingerprint(private_fingerprint(rng, space, "site-b", epsilon=0.5))
    assert store.release_epsilons(space.space_id) == {"public": None, "site-a": 2.0,
                                                      "site-b": 0.5}
    assert main(["show", "--store", str(store.root)]) == 0
    assert "2 private (ε 0.5–2), 1 exact" in capsys.readouterr().out
