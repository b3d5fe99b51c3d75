"""Aggregate the long-form scores into the paper's tables, win rates and pictures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from rayfp.evaluate.data import SCENARIO_NAMES

CSV_COLUMNS = ["setting", "scenario", "metric", "selector", "k", "mode", "seeds", "meta_metric",
               "value", "std"]
# With uncertainty (`with_uncertainty`): the bootstrap interval over targets and the paired test
# against the reference selector (random unless --versus).
UNCERTAINTY_COLUMNS = ["lo", "hi", "diff", "diff_lo", "diff_hi", "p", "q"]
SIGNIFICANCE = 0.05  # on the Benjamini-Hochberg q-value
# The paper's Fig. 4 pairs: fraction improved is read on BA, improvement on AUROC.
FIGURE_METRIC = {"gain": "BA", "delta": "AUROC"}


def aggregate(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, scenario, metric, selector, k, mode, seeds, meta metric): with per-seed
    strategy, mean over targets per seed, then mean and std (ddof 1) over seeds (Fig. 4); with
    seed means, mean and std (ddof 1) over targets (nb2 tables)."""
    keys = ["setting", "scenario", "metric", "selector", "k", "mode", "seeds", "meta_metric"]
    per_seed = scores.groupby([*keys, "seed"], sort=False)["score"].mean().reset_index()
    if (scores["seeds"] == "per-seed").all():
        grouped = per_seed.groupby(keys, sort=False)["score"]
    else:
        grouped = scores.groupby(keys, sort=False)["score"]
    out = grouped.agg(value="mean", std=lambda s: s.std(ddof=1)).reset_index()
    return out[CSV_COLUMNS]


def with_uncertainty(summary: pd.DataFrame, scores: pd.DataFrame, reference: str | None, *,
                     seed: int = 0, n_boot: int = 2000, n_perm: int = 10000) -> pd.DataFrame:
    """summary + the bootstrap interval of every value and, for every selector but the
    reference, the paired test of its difference to the reference (NaN for the reference)."""
    from rayfp.evaluate.significance import (
        GROUP_KEYS,
        intervals,
        paired_differences,
        paired_tests,
    )

    out = summary.merge(intervals(scores, n_boot=n_boot, seed=seed), on=GROUP_KEYS, how="left")
    if reference is not None:
        tests = paired_tests(paired_differences(scores, reference), n_boot=n_boot,
                             n_perm=n_perm, seed=seed)
        out = out.merge(tests, on=GROUP_KEYS, how="left")
    return out.reindex(columns=CSV_COLUMNS + UNCERTAINTY_COLUMNS)


def significance_mark(row) -> str:
    """'+' / '-': significantly above / below the reference; '' otherwise."""
    q = row.get("q", np.nan)
    if not np.isfinite(q) or q >= SIGNIFICANCE:
        return ""
    return "+" if row["diff"] > 0 else "-"


def format_margins(margins: pd.DataFrame, reference: str, ks) -> str:
    """The headline table: each selector's margin over the reference per metric."""
    lines = [f"\nmargin over {reference} (mean over scenarios and k={list(ks)} per target; 95 % "
             f"bootstrap interval over targets; sign-flip p, BH q; * q < {SIGNIFICANCE})"]
    lines.append("selector".ljust(20) + "metric".ljust(8) + "meta".ljust(8)
                 + "margin".rjust(9) + "   interval".ljust(22) + "p".rjust(8) + "q".rjust(8))
    for _, r in margins.iterrows():
        star = " *" if r["q"] < SIGNIFICANCE else ""
        lines.append(f"{r['selector']:<20}{r['metric']:<8}{r['meta_metric']:<8}"
                     f"{r['diff']:+9.4f}   [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}]  "
                     f"{r['p']:8.4f}{r['q']:8.4f}{star}")
    return "\n".join(lines) + "\n"


def win_rates(scores: pd.DataFrame, *, meta_metrics=("weightedtau", "regret", "rank", "delta")
              ) -> pd.DataFrame:
    """Per scenario: the share of (metric, seed, target, meta metric, k) groups in which each
    selector has the maximal score (ties: all win; NaN never wins). Rows: selector; columns:
    scenario."""
    from rayfp.evaluate.random_baseline import RANDOM_SELECTOR

    # Random is a baseline, not a contestant: its expectation would take wins from nobody real.
    rows = scores[scores["meta_metric"].isin(meta_metrics)
                  & (scores["selector"] != RANDOM_SELECTOR)].dropna(subset=["score"])
    group_keys = ["scenario", "metric", "seed", "target", "meta_metric", "k"]
    best = rows.groupby(group_keys)["score"].transform("max")
    wins = rows[rows["score"] == best].groupby(["selector", "scenario"]).size().unstack("scenario")
    n_groups = rows.drop_duplicates(group_keys).groupby("scenario").size()
    selectors = list(dict.fromkeys(rows["selector"]))
    scenarios = [s for s in SCENARIO_NAMES if s in n_groups.index]
    return (wins / n_groups).reindex(index=selectors, columns=scenarios).fillna(0.0)


def format_tables(summary: pd.DataFrame, meta_metrics=("gain", "delta")) -> str:
    """One block per (meta metric, outcome metric, scenario): rows selectors, columns k. With
    intervals, each cell is `value [lo, hi]` and a +/- mark when the paired test against the
    reference is significant."""
    has_ci = "lo" in summary.columns
    width = 22 if has_ci else 9
    lines = []
    for meta in meta_metrics:
        part = summary[summary["meta_metric"] == meta]
        for metric in dict.fromkeys(part["metric"]):
            for scenario in dict.fromkeys(part["scenario"]):
                block = part[(part["metric"] == metric) & (part["scenario"] == scenario)]
                if block.empty:
                    continue
                lines.append(f"\n{meta} — {SCENARIO_NAMES[scenario]} — {metric} "
                             f"(mode {block['mode'].iloc[0]}, seeds {block['seeds'].iloc[0]})")
                ks = sorted(block["k"].unique())
                lines.append("selector".ljust(20) + "".join(f"k={k}".rjust(width) for k in ks))
                for selector in dict.fromkeys(block["selector"]):
                    rows = block[block["selector"] == selector].set_index("k")
                    cells = []
                    for k in ks:
                        r = rows.loc[k]
                        cell = f"{r['value']:.4f}"
                        if has_ci:
                            cell += f" [{r['lo']:.3f},{r['hi']:.3f}]{significance_mark(r):1}"
                        cells.append(cell.rjust(width))
                    lines.append(str(selector).ljust(20) + "".join(cells))
    return "\n".join(lines) + "\n"


def plot_curves(summary: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """fraction improved vs k and improvement vs k, one panel per scenario, one line per
    selector. Error bars: the bootstrap interval over targets when the summary has one (filled
    markers: significantly different from the reference), else the std over seeds; the random
    baseline is a dashed black line with its interval shaded."""
    import matplotlib

    from rayfp.evaluate.random_baseline import RANDOM_SELECTOR

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for meta, label in (("gain", "fraction of improved tasks"), ("delta", "improvement")):
        metric = FIGURE_METRIC[meta]
        part = summary[(summary["meta_metric"] == meta) & (summary["metric"] == metric)]
        scenarios = list(dict.fromkeys(part["scenario"]))
        if not scenarios:
            continue
        fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.8),
                                 dpi=110, squeeze=False)
        for ax, scenario in zip(axes[0], scenarios):
            block = part[part["scenario"] == scenario]
            for selector in dict.fromkeys(block["selector"]):
                line = block[block["selector"] == selector].sort_values("k")
                if selector == RANDOM_SELECTOR:
                    ax.plot(line["k"], line["value"], "k--", lw=1.5, label=selector)
                    if "lo" in line:
                        ax.fill_between(line["k"], line["lo"], line["hi"], color="k", alpha=0.1)
                    continue
                if "lo" in line:
                    yerr = np.vstack([line["value"] - line["lo"], line["hi"] - line["value"]])
                else:
                    yerr = line["std"].fillna(0).to_numpy()
                bars = ax.errorbar(line["k"], line["value"], yerr=yerr, marker="o", capsize=2,
                                   label=selector, mfc="none", alpha=0.85)
                if "q" in line:
                    hit = line[line["q"] < SIGNIFICANCE]
                    ax.plot(hit["k"], hit["value"], "o", color=bars[0].get_color())
            ax.set_title(SCENARIO_NAMES[scenario])
            ax.set_xlabel("k (sources tried)")
            ax.set_xticks(sorted(block["k"].unique()))
        axes[0][0].set_ylabel(f"{label} ({metric})")
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{label} vs k — {part['setting'].iloc[0]} targets")
        fig.tight_layout()
        path = out_dir / f"{meta}_vs_k.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_win_rates(rates: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(out_dir) / "win_rates.png"
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    width = 0.8 / max(1, len(rates.index))
    x = np.arange(len(rates.columns))
    for i, selector in enumerate(rates.index):
        ax.bar(x + i * width, rates.loc[selector].to_numpy() * 100, width, label=selector)
    ax.set_xticks(x + 0.4 - width / 2, [SCENARIO_NAMES[c] for c in rates.columns])
    ax.set_ylabel("win rate (%) — ties all win")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
