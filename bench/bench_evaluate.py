"""The paper's selectors against random, with intervals: BENCHMARKS.md's "Evaluation" section.

Runs the full `rayfp evaluate` pipeline on the released development data (timed, as a user
runs it) and writes each selector's margin over the exact random baseline, averaged over the
four scenarios and k = 1, 3, 5, with 95 % bootstrap intervals over the 23 targets and
sign-flip p / BH q; plus bKLD (small) with CSLS hubness reduction against bKLD (small).

    python -m bench.bench_evaluate [--data FOLDER]   (default: the copy that ships with rayfp)

``--quick`` (the test suite's run-through): few bootstrap draws and permutations, k = 1 and
one scenario; its numbers are not for BENCHMARKS.md, and it writes nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from bench.bench_core import machine
from bench.sections import replace_section
from rayfp.evaluate.data import PaperData, csls
from rayfp.evaluate.learned import learned_selectors
from rayfp.evaluate.names import PAPER_SELECTORS, SCENARIOS
from rayfp.evaluate.protocol import EvalConfig, Protocol, evaluate, evaluate_random
from rayfp.evaluate.significance import margin_over_random

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Evaluation: the paper's selectors against random"
KS = (1, 3, 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a released-data folder (default: the shipped copy)")
    parser.add_argument("--csls", type=int, default=10)
    parser.add_argument("--quick", action="store_true",
                        help="a run-through: few draws, nothing written")
    args = parser.parse_args(argv)
    from rayfp.cli.main import main as rayfp

    started = time.perf_counter()
    data_flag = ["--data", args.data] if args.data else []
    ks, scenarios = ((1,), SCENARIOS[:1]) if args.quick else (KS, SCENARIOS)
    fast = (["-k", "1", "--margin-k", "1", "--scenarios", *scenarios, "--tau-draws", "4",
             "--bootstrap", "300", "--permutations", "1000"] if args.quick else [])
    tests = {"n_boot": 300, "n_perm": 1000} if args.quick else {}
    rayfp(["evaluate", *data_flag, "--format", "csv", *fast])  # the command users run
    command_s = time.perf_counter() - started

    data = PaperData(args.data)
    selectors = {n: data.distances(s) for n, s in PAPER_SELECTORS.items()}
    csls_name = f"bKLD (small) CSLS-{args.csls}"
    selectors[csls_name] = csls(selectors["bKLD (small)"], args.csls)
    proto = Protocol(data, "development")
    learned_names = []
    for holdout in ("target", "group"):
        for name, per_scenario in learned_selectors(proto, selectors["bKLD (small)"], scenarios,
                                                    holdout=holdout).items():
            label = name if holdout == "target" else f"{name} (leave-one-group-out)"
            selectors[label] = per_scenario
            learned_names.append(label)
    config = EvalConfig(ks=ks, scenarios=scenarios)
    scores = pd.concat([evaluate(data, selectors, config), evaluate_random(data, config)],
                       ignore_index=True)
    margins = margin_over_random(scores, "random", ks=ks, **tests)
    versus = margin_over_random(scores[scores.selector.isin([csls_name, "bKLD (small)"])],
                                "bKLD (small)", ks=ks, **tests)
    learned_vs = margin_over_random(
        scores[scores.selector.isin([*learned_names, "bKLD (small)"])], "bKLD (small)", ks=ks,
        **tests)
    raw = (scores[scores.meta_metric.isin(["gain", "delta"])]
           .groupby(["selector", "metric", "meta_metric"])["score"].mean())

    lines = [f"## {TITLE}", "", f"Machine: {machine()}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             "Command: `python -m bench.bench_evaluate`", "",
             f"`rayfp evaluate` (8 selectors, learned and learned+bkld-small, random; k = 1–5, "
             f"intervals and tests): **{command_s:.0f} s** on this machine.", "",
             "Development targets (23), mean over the 4 scenarios and k = 1, 3, 5 per target. "
             "Random is the exact expectation over random k-subsets of the valid sources. "
             "Margin = selector − random; 95 % bootstrap interval over targets; two-sided "
             "sign-flip p; q = Benjamini–Hochberg over the whole table.", "",
             "| selector | outcome | fraction improved (gain) | margin over random [95 %] | "
             "p | q | improvement (delta) | margin over random [95 %] | p | q |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    table = margins.set_index(["selector", "metric", "meta_metric"])
    for selector in [*PAPER_SELECTORS, csls_name, *learned_names]:
        for metric in ("AUROC", "BA"):
            cells = []
            for meta in ("gain", "delta"):
                r = table.loc[(selector, metric, meta)]
                star = " *" if r["q"] < 0.05 else ""
                cells += [f"{raw[(selector, metric, meta)]:.4f}",
                          f"{r['diff']:+.4f} [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}]{star}",
                          f"{r['p']:.3f}", f"{r['q']:.3f}"]
            lines.append(f"| {selector} | {metric} | " + " | ".join(cells) + " |")
    for metric in ("AUROC", "BA"):
        lines.append(f"| random | {metric} | {raw[('random', metric, 'gain')]:.4f} | – | – | – "
                     f"| {raw[('random', metric, 'delta')]:.4f} | – | – | – |")
    vs = versus.set_index(["metric", "meta_metric"])
    lines += ["", f"{csls_name} against bKLD (small) (same test): " + "; ".join(
        f"{meta} {metric} {vs.loc[(metric, meta), 'diff']:+.4f} "
        f"[{vs.loc[(metric, meta), 'diff_lo']:+.4f}, {vs.loc[(metric, meta), 'diff_hi']:+.4f}]"
        f", p {vs.loc[(metric, meta), 'p']:.3f}"
        for metric in ("AUROC", "BA") for meta in ("gain", "delta")) + ".", "",
        "The learned selectors (docs/learned.md) against bKLD (small), paired over targets "
        "(diff [95 %], p):", "",
        "| selector | gain AUROC | gain BA | delta AUROC | delta BA |", "|---|---|---|---|---|"]
    lv = learned_vs.set_index(["selector", "metric", "meta_metric"])
    for name in learned_names:
        lines.append(f"| {name} | " + " | ".join(
            f"{lv.loc[(name, metric, meta), 'diff']:+.4f} "
            f"[{lv.loc[(name, metric, meta), 'diff_lo']:+.4f}, "
            f"{lv.loc[(name, metric, meta), 'diff_hi']:+.4f}], p {lv.loc[(name, metric, meta), 'p']:.4f}"
            for meta in ("gain", "delta") for metric in ("AUROC", "BA")) + " |")
    lines.append("")
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.quick:
        replace_section(TITLE, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
