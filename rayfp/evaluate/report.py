"""Aggregate the long-form scores into the paper's tables, win rates and pictures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from rayfp.evaluate.data import SCENARIO_NAMES

CSV_COLUMNS = ["setting", "scenario", "metric", "selector", "k", "mode", "seeds", "meta_metric",
               "value", "std"]
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


def win_rates(scores: pd.DataFrame, *, meta_metrics=("weightedtau", "regret", "rank", "delta")
              ) -> pd.DataFrame:
    """Per scenario: the share of (metric, seed, target, meta metric, k) groups in which each
    selector has the maximal score (ties: all win; NaN never wins). Rows: selector; columns:
    scenario."""
    rows = scores[scores["meta_metric"].isin(meta_metrics)].dropna(subset=["score"])
    group_keys = ["scenario", "metric", "seed", "target", "meta_metric", "k"]
    best = rows.groupby(group_keys)["score"].transform("max")
    wins = rows[rows["score"] == best].groupby(["selector", "scenario"]).size().unstack("scenario")
    n_groups = rows.drop_duplicates(group_keys).groupby("scenario").size()
    selectors = list(dict.fromkeys(scores["selector"]))
    scenarios = [s for s in SCENARIO_NAMES if s in n_groups.index]
    return (wins / n_groups).reindex(index=selectors, columns=scenarios).fillna(0.0)


def format_tables(summary: pd.DataFrame, meta_metrics=("gain", "delta")) -> str:
    """One block per (meta metric, outcome metric, scenario): rows selectors, columns k."""
    lines = []
    for meta in meta_metrics:
        part = summary[summary["meta_metric"] == meta]
        for metric in dict.fromkeys(part["metric"]):
            for scenario in dict.fromkeys(part["scenario"]):
                block = part[(part["metric"] == metric) & (part["scenario"] == scenario)]
                if block.empty:
                    continue
                table = block.pivot(index="selector", columns="k", values="value")
                table = table.reindex(list(dict.fromkeys(block["selector"])))
                lines.append(f"\n{meta} — {SCENARIO_NAMES[scenario]} — {metric} "
                             f"(mode {block['mode'].iloc[0]}, seeds {block['seeds'].iloc[0]})")
                header = "selector".ljust(16) + "".join(f"k={k}".rjust(9) for k in table.columns)
                lines.append(header)
                for name, row in table.iterrows():
                    lines.append(str(name).ljust(16) + "".join(f"{v:9.4f}" for v in row))
    return "\n".join(lines) + "\n"


def plot_curves(summary: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """fraction improved vs k and improvement vs k, one panel per scenario, one line per
    selector (error bars: std over seeds)."""
    import matplotlib

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
                ax.errorbar(line["k"], line["value"], yerr=line["std"].fillna(0), marker="o",
                            capsize=2, label=selector)
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
