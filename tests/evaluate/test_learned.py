"""The learned selectors: what worked on other targets, alone and blended with bKLD (small).
They must never see the target's own outcomes, and on the paper's development data they must
beat chance (the finding docs/learned.md reports)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rayfp.evaluate import PAPER_SELECTORS, SCENARIOS, EvalConfig, PaperData, Protocol, evaluate
from rayfp.evaluate.learned import (
    LEARNED,
    LEARNED_BLEND,
    SHRINK,
    Prior,
    blend,
    learned_selectors,
    standardised,
)
from rayfp.evaluate.protocol import evaluate_random
from rayfp.evaluate.significance import margin_over_random


@pytest.fixture(scope="module")
def data() -> PaperData:
    return PaperData()


@pytest.fixture(scope="module")
def bkld(data) -> pd.DataFrame:
    return data.distances(PAPER_SELECTORS["bKLD (small)"])


class Scrambled(PaperData):
    """The released data with one target's own outcomes replaced by noise."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def outcomes(self, scenario, metric, validation):
        rows = super().outcomes(scenario, metric, validation).copy()
        mine = rows["t"] == self.target
        rows.loc[mine, "p"] = np.random.default_rng(7).random(int(mine.sum()))
        return rows


@pytest.mark.parametrize("holdout", ["target", "group"])
def test_a_targets_own_outcomes_never_change_its_picks(data, bkld, holdout):
    """Scramble a target's outcomes: its learned columns stay bit for bit the same (prior and
    α both left it out), while other targets' columns may move (they learn from it)."""
    scenarios = ("pretrain", "arch")
    original = learned_selectors(Protocol(data, "development"), bkld, scenarios,
                                 holdout=holdout)
    for target in ("svhn", "cholec80_hook_presence"):  # a lone task; one of a group
        scrambled = Scrambled(target)
        changed = learned_selectors(Protocol(scrambled, "development"), bkld, scenarios,
                                    holdout=holdout)
        proto = Protocol(data, "development")
        column = proto.target_ref(target, bkld.columns)
        moved = 0
        for name in (LEARNED, LEARNED_BLEND):
            for scenario in scenarios:
                a, b = original[name][scenario], changed[name][scenario]
                pd.testing.assert_series_equal(a[column], b[column])
                moved += int(not a.drop(columns=[column]).equals(b.drop(columns=[column])))
        assert moved > 0  # the scrambled outcomes did reach the other targets' rankings


def test_the_prior_is_shrunk_and_standardised():
    rows = pd.DataFrame({"metric": "AUROC", "source": ["a", "b", "c"] * 2,
                         "target": ["t1"] * 3 + ["t2"] * 3, "seed": 0,
                         "score": [0.9, 0.5, 0.1, 0.6, 0.6, 0.6]})
    z = standardised(rows)
    assert z.loc["a", "t1"] == pytest.approx(np.sqrt(1.5)) and (z["t2"] == 0).all()
    prior = Prior(z).of()
    assert prior.loc["a", "prior"] == pytest.approx(np.sqrt(1.5) / (2 + SHRINK))
    assert prior.loc["a", "improved"] == 1 and prior.loc["a", "n"] == 2
    assert Prior(z).of(exclude=["t1"]).loc["a", "prior"] == 0  # only t2 left: no signal
    mixed = blend(prior["prior"], pd.Series({"a": -5.0, "b": 0.0, "c": 5.0}), alpha=1.0)
    assert mixed.idxmax() == "c"  # α = 1: distance alone


def test_learned_beats_chance_on_the_development_targets(data, bkld):
    """The issue's goal, measured as `rayfp evaluate` does (k = 1, 3, 5, every scenario)."""
    selectors = {"bKLD (small)": bkld,
                 **learned_selectors(Protocol(data, "development"), bkld, SCENARIOS)}
    config = EvalConfig(ks=(1, 3, 5))
    scores = pd.concat([evaluate(data, selectors, config), evaluate_random(data, config)],
                       ignore_index=True)
    margins = margin_over_random(scores, "random", ks=(1, 3, 5), n_boot=500, n_perm=500)
    gain = margins[(margins.selector == LEARNED) & (margins.meta_metric == "gain")]
    assert (gain["diff"] >= 0.06).all() and (gain["diff_lo"] > 0).all()
    versus = margin_over_random(scores[scores.selector.isin([LEARNED, "bKLD (small)"])],
                                "bKLD (small)", ks=(1, 3, 5), n_boot=500, n_perm=500)
    assert (versus["diff"] > 0).sum() >= 3 and (versus["p"] < 0.05).sum() >= 2
