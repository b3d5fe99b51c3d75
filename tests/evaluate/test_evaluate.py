"""The paper's selection-evaluation protocol on its released development data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import weightedtau

from rayfp.cli.main import main as rayfp_cli
from rayfp.errors import ConfigError
from rayfp.evaluate import PAPER_SELECTORS, SCENARIOS, EvalConfig, PaperData, Protocol, evaluate
from rayfp.evaluate.protocol import (
    _outcome_tables,
    affinity,
    regret_score,
    select_top_k,
    top_meta_scores,
    weighted_tau,
)


@pytest.fixture(scope="module")
def data() -> PaperData:
    return PaperData()  # the copy that ships with rayfp


@pytest.fixture(scope="module")
def dev(data) -> Protocol:
    return Protocol(data, "development")


@pytest.fixture(scope="module")
def dev_scores(data) -> pd.DataFrame:
    selectors = {n: data.distances(s) for n, s in PAPER_SELECTORS.items()}
    return evaluate(data, selectors, EvalConfig())  # raises on any boundary tie


def test_targets(data, dev):
    targets = dev.targets()
    assert len(targets) == 23
    excluded = set(data.splits.development) - set(targets)
    assert {t.split("_")[0] for t in excluded} == {"stanford", "caltech101", "caltech256",
                                                   "cifar100", "emnist"}
    assert len(Protocol(data, "validation").targets()) == 43


def test_valid_sources_follow_the_groups_and_settings(data, dev):
    counts = [len(dev.valid_sources(t)) for t in dev.targets()]
    assert 20 <= min(counts) and max(counts) <= 27
    val = Protocol(data, "validation")
    val_counts = [len(val.valid_sources(t)) for t in val.targets()]
    assert 58 <= min(val_counts) and max(val_counts) <= 70
    chexpert = data.splits.groups["chexpert"]
    target = next(t for t in val.targets() if t in chexpert)
    sources = val.valid_sources(target)
    assert not set(chexpert) & set(sources)
    assert set(data.splits.validation) & set(sources)  # validation targets may use them
    assert "lapgyn4_instrument_count" in data.splits.groups["cholec80"]
    cholec = dev.valid_sources("lapgyn4_instrument_count")
    assert not [s for s in cholec if s.startswith("cholec80")]
    assert "lapgyn4_surgical_actions" in cholec  # siblings outside a group stay valid
    assert "lapgyn4_instrument_count" not in cholec


def test_released_outcomes_use_exactly_the_valid_sources(data, dev):
    expected_rows = {"arch": 2100, "multi_task": 2100, "pretrain": 1695, "augmentation": 1695}
    for scenario, rows in expected_rows.items():
        frame = data.outcomes(scenario, "BA", False)
        assert len(frame) == rows
        for t in dev.targets():
            for seed in range(3):
                got = set(frame[(frame.t == t) & (frame.r == seed)].s)
                assert got == set(dev.valid_sources(t)), (scenario, t, seed)


def test_target_variant_and_fallback(data, dev):
    shrinkable = next(t for t in dev.targets() if t not in data.splits.non_shrinkable)
    assert dev.target_ref(shrinkable) == shrinkable + " --shrink_train 800"
    fixed = next(t for t in data.splits.non_shrinkable)
    assert dev.target_ref(fixed) == fixed
    assert dev.target_ref(shrinkable, columns=[shrinkable]) == shrinkable


def test_affinity_drops_self_and_inf_and_keeps_order():
    distances = pd.DataFrame([[0.0, 1.0, 3.0], [2.0, 0.0, np.inf], [1.5, 0.5, 0.0]],
                             index=list("abc"), columns=list("abc"))
    aff = affinity(distances)
    assert aff.isna().to_numpy().sum() == 4
    finite = distances.to_numpy()[np.isfinite(distances.to_numpy()) & (distances.to_numpy() > 0)]
    z = (finite - finite.mean()) / finite.std()
    np.testing.assert_allclose(np.sort(-aff.to_numpy()[~aff.isna().to_numpy()]), np.sort(z))
    column = aff["a"].rename("a")
    assert select_top_k(column, 1) == ["c"] and select_top_k(column, 5) == ["c", "b"]


def test_top_k_refuses_a_boundary_tie():
    column = pd.Series([0.9, 0.5, 0.5, 0.1], index=list("wxyz"), name="t")
    assert select_top_k(column, 1) == ["w"] and select_top_k(column, 3) == ["w", "x", "y"]
    with pytest.raises(ConfigError, match="tie at the 2-th place"):
        select_top_k(column, 2)


def test_meta_metrics_on_hand_checked_cases():
    pool = np.array([0.5, 0.7, 0.9, 0.6])
    best = top_meta_scores(np.array([0.6, 0.9]), pool, baseline=0.6, mode="best")
    assert best == pytest.approx({"delta": 0.3, "gain": 1.0, "regret": 1.0, "rank": 1.0})
    avg = top_meta_scores(np.array([0.6, 0.9]), pool, baseline=0.6, mode="avg")
    assert avg["gain"] == 0.5  # 0.6 > 0.6 is false: strict
    assert avg["delta"] == pytest.approx(0.15) and avg["rank"] == pytest.approx((0.5 + 1.0) / 2)
    assert avg["regret"] == pytest.approx((1 - (0.9 - 0.6) / (1 - 0.6) + 1.0) / 2)
    assert regret_score(0.8, 1.0) == 0.0 and regret_score(1.0, 1.0) == 0.0  # o = 1 case
    tied = top_meta_scores(np.array([0.7]), np.array([0.7, 0.7, 0.2, 0.9]), 0.0, "best")
    assert tied["rank"] == pytest.approx(2.5 / 4)  # average rank of a tie


def test_weighted_tau_matches_scipy_and_is_nan_on_constant(rng):
    x, y = rng.random(30), rng.random(30)
    assert weighted_tau(x, y) == pytest.approx(weightedtau(x, y)[0], abs=1e-15)
    x_nan = x.copy()
    x_nan[3] = np.nan
    keep = ~np.isnan(x_nan)
    assert weighted_tau(x_nan, y) == pytest.approx(weightedtau(x[keep], y[keep])[0])
    assert np.isnan(weighted_tau(x, np.full(30, 0.5)))


def test_development_evaluation_reproduces_the_protocol_facts(dev_scores):
    scores = dev_scores
    per_cell = scores.groupby(["scenario", "metric", "seed", "selector", "k",
                               "meta_metric"]).size()
    assert (per_cell == 23).all()
    assert set(scores["scenario"]) == set(SCENARIOS)
    nan_tau = scores[(scores.meta_metric == "weightedtau") & scores.score.isna()]
    assert len(nan_tau) == 8  # one target/seed/metric, once per selector (docs/evaluation.md §12)
    assert set(nan_tau.target) == {"nerthus_bowel_cleansing_quality"}
    assert set(nan_tau.scenario) == {"augmentation"} and set(nan_tau.seed) == {"1"}
    assert scores[scores.meta_metric != "weightedtau"].score.notna().all()
    gains = scores[scores.meta_metric == "gain"]
    assert set(gains.score.unique()) <= {0.0, 1.0}  # mode best: one outcome, improved or not
    ranks = scores[scores.meta_metric == "rank"].score
    assert ranks.between(0, 1).all()
    # More shots never hurt in best-of-k mode.
    wide = scores[scores.meta_metric == "delta"].pivot_table(
        index=["scenario", "metric", "seed", "selector", "target"], columns="k", values="score")
    assert (wide.diff(axis=1).iloc[:, 1:] >= -1e-12).all().all()


def test_oracle_equal_to_one_occurs_46_times_in_development(data, dev):
    count = 0
    for scenario in SCENARIOS:
        for metric in ("BA", "AUROC"):
            for strategy in ("mean", "per-seed"):
                for _, matrix, _ in _outcome_tables(dev, scenario, metric, strategy):
                    for t in dev.targets():
                        count += matrix[t].reindex(dev.valid_sources(t)).max() == 1.0
    assert count == 46  # docs/evaluation.md §6


def test_cli_tables_csv_plots_and_own_selectors(data, tmp_path, capsys):
    fast = ["--tau-draws", "4", "--bootstrap", "300", "--permutations", "1000"]
    assert rayfp_cli(["evaluate", "-k", "1-2", *fast]) == 0
    table = capsys.readouterr().out
    assert "gain — Model Architecture — BA" in table and "bKLD (small)" in table
    assert "win rates" in table
    assert "margin over random" in table and "\nrandom " in table
    assert "\nlearned " in table and "\nlearned+bkld-small " in table  # part of the default run
    # A user's matrix in `rayfp compare --format csv` layout, without shrunk columns.
    manual = data.distances("SEMANTIC")
    mine = manual[[c for c in manual.columns if "shrink" not in c]]
    mine.index.name = "source"
    path = tmp_path / "mine.csv"
    mine.to_csv(path)
    code = rayfp_cli(["evaluate", "--selectors", f"Mine={path}",
                      "Semantic-again=SEMANTIC", "-k", "3", "--mode", "avg", "--seeds",
                      "mean", "--format", "csv", "--plots", str(tmp_path / "plots"),
                      "--csls", "10", *fast])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[0] == ("setting,scenario,metric,selector,k,mode,seeds,meta_metric,value,std,"
                      "lo,hi,diff,diff_lo,diff_hi,p,q")
    rows = pd.read_csv(pd.io.common.StringIO("\n".join(out)))
    assert set(rows.selector) == {*PAPER_SELECTORS, "Mine", "Semantic-again", "random",
                                  "bKLD (small) CSLS-10", "learned", "learned+bkld-small"}
    assert (rows.lo <= rows.value + 1e-12).all() and (rows.value <= rows.hi + 1e-12).all()
    assert rows[rows.selector == "random"]["p"].isna().all()  # the reference is not tested
    assert rows[rows.selector != "random"]["p"].between(0, 1).all()
    assert set(rows.k) == {0, 3} and set(rows["mode"]) == {"avg"}
    same = rows.set_index(["scenario", "metric", "k", "meta_metric", "selector"])["value"]
    # Dropping the shrunk columns changes the manual selection only for shrunk targets, and a
    # stem of DATA/distances is the same selector as the paper's.
    assert same.xs("Semantic-again", level="selector").equals(
        same.xs("Manual", level="selector"))
    for name in ("gain_vs_k.png", "delta_vs_k.png", "win_rates.png"):
        assert Image.open(tmp_path / "plots" / name).size[0] > 400
    assert rayfp_cli(["evaluate", "--selectors", "X=no-such-matrix",
                      "--only"]) == 2
    assert "unknown distance matrix 'no-such-matrix'" in capsys.readouterr().err


def test_pandas2_float_parser_reproduces_the_documented_ulp_differences(data):
    """docs/evaluation.md §10: 8,489 cells of KLD-PP:NN and 1,076-1,732 of every other matrix parse
    1 ulp away from the correctly rounded value under pandas 2; 19,032 in all."""
    from rayfp.evaluate.csvfloat import pandas2_float

    exact = PaperData(float_parser="exact")
    total = 0
    for stem in PAPER_SELECTORS.values():
        a, b = data.distances(stem), exact.distances(stem)
        differ = int(((a != b) & a.notna()).to_numpy().sum())
        # Leading zeros count towards the 17 digits, so small numbers lose up to ~1e-12.
        assert np.allclose(a.fillna(0), b.fillna(0), rtol=1e-12, atol=0)
        assert differ == 8489 if stem == "KLD-PP:NN" else 1076 <= differ <= 1732
        total += differ
    assert total == 19032
    assert pandas2_float("0.1") == 0.1 and pandas2_float("-2.5e-3") == -0.0025
    assert np.isnan(pandas2_float("")) and pandas2_float("1e400") == np.inf


def test_a_released_folder_reads_as_the_shipped_copy(tmp_path, data):
    """The released data unpacked as the paper's repository lays it out: the same tables byte for
    byte, and a bare cache/ folder, which lacks the task lists, falls back to the shipped ones."""
    from conftest import unpack_paper_data

    folder = unpack_paper_data(tmp_path / "release")
    unpacked = PaperData(folder)
    stem = PAPER_SELECTORS["bKLD (small)"]
    pd.testing.assert_frame_equal(unpacked.distances(stem), data.distances(stem))
    pd.testing.assert_frame_equal(unpacked.outcomes("arch", "AUROC", False),
                                  data.outcomes("arch", "AUROC", False))
    assert list(unpacked.policies()) == list(data.policies())
    assert len(list(data.policies())) == 213
    assert unpacked.available_selectors() == data.available_selectors()
    assert len(data.available_selectors()) == 8
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("exp", "distances", "task_infos.csv"):
        (cache / name).symlink_to(folder / name)
    assert PaperData(cache).splits.development == data.splits.development
    with pytest.raises(ConfigError, match="no task lists"):
        PaperData(cache, splits=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="not a paper data folder"):
        PaperData(tmp_path)


# --- the random baseline and the uncertainty of the evaluation ---------------------------------


def test_best_of_k_weights_are_the_order_statistic():
    from rayfp.evaluate.random_baseline import best_of_k_weights

    w = best_of_k_weights(4, 2)  # subsets of {1,2,3,4}: max 2 once, 3 twice, 4 three times
    assert w == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6])
    for n, k in ((27, 1), (27, 5), (5, 5)):
        assert best_of_k_weights(n, k).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["best", "avg"])
def test_exact_random_expectation_matches_monte_carlo(dev, mode, rng):
    """On real development pools (ties included): the closed form is the mean of
    top_meta_scores over uniformly random k-subsets."""
    from rayfp.evaluate.random_baseline import expected_top_scores

    _, matrix, baselines = _outcome_tables(dev, "pretrain", "BA", "per-seed")[0]
    draws = 1500
    for target in dev.targets()[:3]:
        pool = matrix[target].reindex(dev.valid_sources(target)).to_numpy(float)
        for k in (1, 3, 5):
            exact = expected_top_scores(pool, baselines[target], k, mode)
            sampled = [top_meta_scores(pool[rng.choice(len(pool), k, replace=False)], pool,
                                       baselines[target], mode) for _ in range(draws)]
            for metric, value in exact.items():
                values = np.array([s[metric] for s in sampled])
                se = values.std() / np.sqrt(draws)
                assert abs(values.mean() - value) <= 4 * se + 1e-9, (target, k, metric)


def test_random_rows_are_exact_and_weightedtau_has_a_standard_error(data):
    from rayfp.evaluate.protocol import evaluate_random

    config = EvalConfig(ks=(1, 27), scenarios=("arch",), metrics=("BA",))
    rows = evaluate_random(data, config, tau_draws=8, seed=1)
    assert (rows.groupby(["k", "meta_metric"]).size() == 23 * 3).all()
    tau = rows[rows.meta_metric == "weightedtau"]
    assert tau.mc_se.gt(0).all() and tau.score.abs().lt(0.5).all()
    # k = every valid source of a 27-source target: random then always finds the oracle.
    dev = Protocol(data, "development")
    _, matrix, baselines = _outcome_tables(dev, "arch", "BA", "per-seed")[0]
    full = rows[(rows.k == 27) & (rows.seed == "0")].set_index(["target", "meta_metric"])
    for target in dev.targets():
        if len(dev.valid_sources(target)) == 27:
            oracle = matrix[target].reindex(dev.valid_sources(target)).max()
            assert full.score[target, "delta"] == pytest.approx(oracle - baselines[target])
    again = evaluate_random(data, config, tau_draws=8, seed=1)
    assert again.equals(rows)  # same seed, same numbers


def test_bootstrap_intervals_cover_a_known_mean_in_simulation():
    """95 % percentile intervals over 23 targets (the development count) cover the true mean
    about 95 % of the time; percentile intervals run a little short at n = 23."""
    from rayfp.evaluate.significance import bootstrap_means, percentile_interval

    rng = np.random.default_rng(7)
    studies, true_mean = 400, 0.3
    samples = rng.beta(3, 7, size=(23, studies))  # skewed, mean 0.3; one column per study
    lo, hi = percentile_interval(bootstrap_means(samples, 2000, rng), 0.95)
    coverage = np.mean((lo <= true_mean) & (true_mean <= hi))
    assert 0.89 <= coverage <= 0.99, coverage


def test_sign_flip_test_is_uniform_under_the_null_and_finds_a_shift():
    from rayfp.evaluate.significance import sign_flip_p

    rng = np.random.default_rng(3)
    null = sign_flip_p(rng.normal(0, 1, size=(23, 500)), 2000, rng)
    assert 0.02 <= np.mean(null < 0.05) <= 0.09  # size close to the nominal 5 %
    shifted = sign_flip_p(rng.normal(1.0, 1, size=(23, 200)), 2000, rng)
    assert np.mean(shifted < 0.05) > 0.95
    assert sign_flip_p(np.full((23, 1), 0.5), 999, rng)[0] == pytest.approx(1 / 1000)


def test_paired_tests_against_random_on_the_development_data(data):
    from rayfp.evaluate.protocol import evaluate_random
    from rayfp.evaluate.significance import margin_over_random

    config = EvalConfig(ks=(1, 3, 5))
    selectors = {"bKLD (small)": data.distances(PAPER_SELECTORS["bKLD (small)"])}
    scores = pd.concat([evaluate(data, selectors, config),
                        evaluate_random(data, config, tau_draws=4)], ignore_index=True)
    margins = margin_over_random(scores, "random", ks=(1, 3, 5), n_boot=500, n_perm=2000)
    gain = margins.set_index(["metric", "meta_metric"]).loc[("AUROC", "gain")]
    # The measurement: fraction improved on AUROC, averaged over k = 1, 3, 5 and the
    # four scenarios, is 0.81 for random (exactly 0.8058 here) and 0.8128 for bKLD (small).
    assert gain["diff"] == pytest.approx(0.8128 - 0.8058, abs=2e-4)
    assert gain["diff_lo"] < 0 < gain["diff_hi"] and gain["p"] > 0.05


def test_csls_pushes_a_hub_away():
    from rayfp.evaluate.data import csls

    # Source "hub" is near to every target; "a" is near to t1 only, a bit further than hub.
    d = pd.DataFrame([[1.0, 1.0, 1.0], [1.1, 3.0, 3.0], [3.0, 1.2, 3.0], [3.0, 3.0, 1.3]],
                     index=["hub", "a", "b", "c"], columns=["t1", "t2", "t3"])
    assert d["t1"].idxmin() == "hub"
    scaled = csls(d, k=2)
    assert scaled["t1"].idxmin() == "a" and scaled["t2"].idxmin() == "b"
    with_gaps = d.copy()
    with_gaps.iloc[0, 0] = np.inf  # left out, and stays left out
    assert np.isinf(csls(with_gaps, k=2).iloc[0, 0])
