"""Uncertainty of the evaluation: bootstrap intervals over targets and paired sign-flip tests.

The unit of replication is the target: a new study would draw new targets, and the paper's
conclusions are averages over them. Seeds are averaged within a target first (with NaN skipped),
so a target's number is its seed-mean. Every function is seeded: same seed, same numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

GROUP_KEYS = ["setting", "scenario", "metric", "selector", "k", "mode", "seeds", "meta_metric"]


def per_target(scores: pd.DataFrame, keys: list[str] = GROUP_KEYS) -> pd.DataFrame:
    """Rows: groups (keys); columns: targets; values: the seed-mean score of the target."""
    return scores.groupby([*keys, "target"], sort=False)["score"].mean().unstack("target")


def _masked_means(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """weights (R x T) applied to values (T x G) with NaN treated as absent: R x G means."""
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ filled) / (weights @ present)


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot x G bootstrap means of the columns of values (T x G), resampling the T rows."""
    n = values.shape[0]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    return _masked_means(weights, values)


def percentile_interval(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(boot, [tail, 1.0 - tail], axis=0)
    return lo, hi


def sign_flip_p(diffs: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """Two-sided paired randomization test of mean difference 0, per column of diffs (T x G):
    under the null each target's difference is as likely to have either sign. The observed
    assignment is counted, so p >= 1 / (n_perm + 1)."""
    present = np.isfinite(diffs)
    filled = np.where(present, diffs, 0.0)
    count = np.maximum(present.sum(axis=0), 1)
    observed = np.abs(filled.sum(axis=0)) / count
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, diffs.shape[0]))
    null = np.abs(signs @ filled) / count
    extreme = (null >= observed - 1e-12 * np.maximum(1.0, observed)).sum(axis=0)
    return (1.0 + extreme) / (1.0 + n_perm)


def intervals(scores: pd.DataFrame, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
              ) -> pd.DataFrame:
    """Per group: percentile bootstrap interval (lo, hi) of the mean over targets."""
    table = per_target(scores)
    boot = bootstrap_means(table.to_numpy().T, n_boot, np.random.default_rng(seed))
    lo, hi = percentile_interval(boot, level)
    return pd.DataFrame({"lo": lo, "hi": hi}, index=table.index).reset_index()


def paired_differences(scores: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per group of every selector but the reference: the per-target differences
    selector - reference (rows groups, columns targets)."""
    table = per_target(scores)
    ref = table.xs(reference, level="selector")
    others = table.drop(index=reference, level="selector")
    keys = [k for k in GROUP_KEYS if k != "selector"]
    aligned = ref.reindex(others.index.droplevel("selector").reorder_levels(keys))
    return others - aligned.to_numpy()


def paired_tests(diffs: pd.DataFrame, *, n_boot: int = 2000, n_perm: int = 10000,
                 level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per row of diffs (groups x targets): mean difference, its bootstrap interval, the
    sign-flip p-value and the Benjamini-Hochberg q-value over all rows tested together."""
    values = diffs.to_numpy().T
    rng = np.random.default_rng(seed)
    lo, hi = percentile_interval(bootstrap_means(values, n_boot, rng), level)
    p = sign_flip_p(values, n_perm, rng)
    out = pd.DataFrame({"diff": np.nanmean(values, axis=0), "diff_lo": lo, "diff_hi": hi,
                        "p": p}, index=diffs.index)
    out["q"] = false_discovery_control(out["p"].to_numpy()) if len(out) else []
    return out.reset_index()


def margin_over_random(scores: pd.DataFrame, reference: str, *, ks: tuple[int, ...],
                       **test_options) -> pd.DataFrame:
    """The headline: each selector's mean difference to the reference per outcome metric and
    meta metric, averaged over scenarios and the given k per target (so the targets stay the
    unit), with interval and p-value."""
    rows = scores[scores["k"].isin(ks) & (scores["meta_metric"] != "weightedtau")]
    keys = ["selector", "metric", "meta_metric"]
    table = rows.groupby([*keys, "target"], sort=False)["score"].mean().unstack("target")
    ref = table.xs(reference, level="selector")
    others = table.drop(index=reference, level="selector")
    aligned = ref.reindex(others.index.droplevel("selector"))
    return paired_tests(others - aligned.to_numpy(), **test_options)
