"""`rayfp evaluate`: score selectors against the paper's measured transfer outcomes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rayfp.errors import ConfigError
from rayfp.evaluate.names import FLOAT_PARSERS, MODES, PAPER_SELECTORS, SCENARIOS, SEED_STRATEGIES

if TYPE_CHECKING:
    from rayfp.evaluate.data import PaperData


def parse_ks(text: str) -> tuple[int, ...]:
    """'3' -> (3,), '1-5' -> (1, 2, 3, 4, 5), '1,3,5' -> (1, 3, 5)."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            return tuple(range(lo, hi + 1))
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"-k expects N, A-B or A,B,C; got {text!r}") from None


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="score task selectors against measured transfer outcomes")
    p.add_argument("--data", help="a folder of the paper's released data (its repository's cache/); "
                                  "default: the copy that ships with rayfp")
    p.add_argument("--splits", help="task_splits.json (default: DATA/task_splits.json)")
    p.add_argument("--targets", choices=("development", "validation"), default="development")
    p.add_argument("--selectors", nargs="*", default=[], metavar="NAME=FILE",
                   help="extra selectors: a distance CSV (rows sources, columns targets, e.g. "
                        "`rayfp compare --format csv`) or a stem of DATA/distances/")
    p.add_argument("--only", action="store_true", help="evaluate only --selectors")
    p.add_argument("--holdout", choices=("target", "group", "none"), default="target",
                   help="the learned selectors (`learned`: what worked on other targets; "
                        "`learned+bkld-small`: blended with bKLD small) never see the target's "
                        "own outcomes (target, the default) or its image-sharing group's "
                        "(group); none leaves them out of the run (docs/learned.md)")
    p.add_argument("-k", type=parse_ks, default=(1, 2, 3, 4, 5), help="N, A-B or A,B,C")
    p.add_argument("--mode", choices=MODES, default="best")
    p.add_argument("--seeds", choices=SEED_STRATEGIES, default="per-seed")
    p.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--format", choices=("table", "csv"), default="table")
    p.add_argument("--float-parser", choices=FLOAT_PARSERS, default="pandas2",
                   help="how DATA's CSV numbers are parsed: pandas2 reproduces the paper's exact "
                        "ties (docs/evaluation.md §10), exact rounds correctly")
    p.add_argument("--meta", default="gain,delta",
                   help="meta metrics shown in the tables (csv has all): gain, delta, regret, "
                        "rank, weightedtau")
    p.add_argument("--plots", help="folder for the PNGs (fraction improved / improvement vs k, "
                                   "win rates)")
    p.add_argument("--no-random", action="store_true",
                   help="leave out the random-selection baseline (exact expectations)")
    p.add_argument("--versus", default="random", metavar="SELECTOR",
                   help="paired tests of every selector against this one (default: random)")
    p.add_argument("--margin-k", type=parse_ks, default=(1, 3, 5),
                   help="the k averaged in the headline margin table (default 1,3,5)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the bootstrap, the permutations and random weightedtau")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of targets")
    p.add_argument("--permutations", type=int, default=10000, help="sign flips per paired test")
    p.add_argument("--csls", type=int, metavar="K",
                   help="also score bKLD (small) with CSLS hubness reduction over K neighbours "
                        "(e.g. 10); compare it with --versus 'bKLD (small)'")
    p.add_argument("--tau-draws", type=int, default=32,
                   help="Monte Carlo draws for random's weightedtau (the rest is exact)")
    p.set_defaults(run=run)


def load_selectors(data: PaperData, specs: list[str], only: bool) -> dict:
    from rayfp.evaluate.data import read_selector_matrix

    selectors = {} if only else {n: data.distances(s) for n, s in PAPER_SELECTORS.items()}
    for spec in specs:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise ConfigError(f"--selectors expects NAME=FILE, got {spec!r}")
        selectors[name] = (read_selector_matrix(where) if Path(where).is_file()
                           else data.distances(where))
    if not selectors:
        raise ConfigError("no selectors to evaluate: give --selectors NAME=FILE or drop --only")
    return selectors


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from rayfp.evaluate.data import PaperData
    from rayfp.evaluate.protocol import EvalConfig, evaluate, evaluate_random
    from rayfp.evaluate.random_baseline import RANDOM_SELECTOR
    from rayfp.evaluate.report import (
        aggregate,
        format_margins,
        format_tables,
        plot_curves,
        plot_win_rates,
        win_rates,
        with_uncertainty,
    )
    from rayfp.evaluate.significance import margin_over_random

    data = PaperData(args.data, splits=args.splits, float_parser=args.float_parser)
    selectors = load_selectors(data, args.selectors, args.only)
    if not args.only and args.holdout != "none" and args.targets == "development":
        from rayfp.evaluate.learned import learned_selectors
        from rayfp.evaluate.protocol import Protocol

        selectors.update(learned_selectors(
            Protocol(data, args.targets), data.distances(PAPER_SELECTORS["bKLD (small)"]),
            args.scenarios, holdout=args.holdout))
    if args.csls:
        from rayfp.evaluate.data import csls

        base = data.distances(PAPER_SELECTORS["bKLD (small)"])
        selectors[f"bKLD (small) CSLS-{args.csls}"] = csls(base, args.csls)
    config = EvalConfig(setting=args.targets, ks=args.k, mode=args.mode, seeds=args.seeds,
                        scenarios=tuple(args.scenarios))
    scores = evaluate(data, selectors, config)
    if not args.no_random:
        scores = pd.concat([scores, evaluate_random(data, config, tau_draws=args.tau_draws,
                                                    seed=args.seed)], ignore_index=True)
    names = list(dict.fromkeys(scores["selector"]))
    versus = None if args.no_random and args.versus == RANDOM_SELECTOR else args.versus
    if versus is not None and versus not in names:
        raise ConfigError(f"--versus {versus!r} is not among the selectors {names}")
    tests = dict(seed=args.seed, n_boot=args.bootstrap, n_perm=args.permutations)
    summary = with_uncertainty(aggregate(scores), scores, versus, **tests)
    if args.format == "csv":
        summary.to_csv(sys.stdout, index=False, lineterminator="\n")
    else:
        print(f"{args.targets} targets, {len(selectors)} selectors"
              f"{'' if args.no_random else ' + random (exact expectation)'}, k={list(args.k)}, "
              f"mode={args.mode}, seeds={args.seeds}; cells: value [95 % bootstrap interval "
              f"over targets]" + ("" if versus is None else
                                  f", +/- = differs from {versus} (paired sign-flip test, BH "
                                  f"q < 0.05)") + f", seed {args.seed}")
        if versus is not None:
            margin_ks = tuple(k for k in args.margin_k if k in args.k) or tuple(args.k)
            margins = margin_over_random(scores, versus, ks=margin_ks, n_boot=args.bootstrap,
                                         n_perm=args.permutations, seed=args.seed)
            margins = margins[margins["meta_metric"].isin(args.meta.split(","))]
            sys.stdout.write(format_margins(margins, versus, margin_ks))
        sys.stdout.write(format_tables(summary, meta_metrics=tuple(args.meta.split(","))))
        rates = win_rates(scores)
        print(f"\nwin rates (share of metric x seed x target x meta-metric x k groups won; "
              f"ties all win; {RANDOM_SELECTOR} not a contestant)")
        print(rates.round(3).to_string())
    if args.plots:
        paths = plot_curves(summary, args.plots) + [plot_win_rates(win_rates(scores), args.plots)]
        print("plots: " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0
