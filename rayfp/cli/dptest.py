"""`rayfp audit --dp-test`: the stochastic test of the DP guarantee (rayfp.privacy.dptest) on
files an attacker would craft (rayfp.extract.neighbours): the direct bound for every
neighbour pair, then the empirical ε of the worst pair at each claimed ε. Writes
dp-test.json and dp-test.png."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from rayfp.core.sampling import BALANCED_PLAN, KEYED_PLAN
from rayfp.errors import ConfigError


def run_dp_test(folder: Path, *, members: int, samples: Sequence[int],
                epsilons: Sequence[float], releases: int, plans: Sequence[str] = (KEYED_PLAN,),
                images: Sequence[Path] | None = None, delta: float = 1e-6, seed: int = 0,
                noise_seed: int | None = None, places: int | None = 24,
                progress: Callable[[str], None] = print) -> dict:
    """Every neighbour pair of ``members`` images (the first ones of ``images``, else written
    into ``folder``; the next one is the canary) under each plan and N, then the stochastic
    test of the worst pair per (plan, N) at each ε. ``noise_seed=None``: fresh OS noise."""
    from rayfp.extract.neighbours import (
        check_members,
        neighbour_pairs,
        run_pairs,
        write_population,
    )
    from rayfp.privacy.dptest import empirical_epsilon, probe_space
    from rayfp.privacy.mechanism import PrivacySpec

    population = list(images or write_population(folder / "images", members + 1, seed))
    check_members(members, len(population))
    space = probe_space()
    pairs = neighbour_pairs(population[:members], population[members], folder / "pairs",
                            every_place=True, places=places)
    progress(f"{len(pairs)} neighbour pairs of {members} images")
    out = {"members": members, "delta": delta, "releases": releases, "pairs": [],
           "stochastic": []}
    for plan in plans:
        for n in samples:
            results = run_pairs(pairs, space, samples=n, seed=seed, plan=plan)
            out["pairs"] += [{"plan": plan, "samples": n, "pair": r.pair, "ratio": r.ratio}
                             for r, _, _ in results]
            worst, a, b = max(results, key=lambda r: r[0].ratio)
            progress(f"{plan:8} N={n:5d}: worst pair {worst.pair!r}: difference / "
                     f"sensitivity = {worst.ratio:.3f}")
            for epsilon in epsilons:
                found = empirical_epsilon(a, b, space, n_images=members,
                                          spec=PrivacySpec(epsilon=epsilon, delta=delta),
                                          releases=releases, seed=noise_seed)
                verdict = "holds" if found["epsilon_lower_bound"] < epsilon else "VIOLATED"
                progress(f"{plan:8} N={n:5d} ε = {epsilon:g}: empirical ε >= "
                         f"{found['epsilon_lower_bound']:.2f} (95 % Clopper-Pearson): {verdict}")
                out["stochastic"].append({"plan": plan, "samples": n, "epsilon": epsilon,
                                          "pair": worst.pair, "ratio": worst.ratio, **found})
    return out


def plot_dp_test(result: dict, path: Path) -> None:
    """Left: every pair's count difference over the sensitivity; right: empirical ε against
    the claim."""
    import matplotlib

    from rayfp.privacy.dptest import epsilon_at

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    groups = sorted({(r["plan"], r["samples"]) for r in result["pairs"]})
    for i, (plan, n) in enumerate(groups):
        ratios = [r["ratio"] for r in result["pairs"] if (r["plan"], r["samples"]) == (plan, n)]
        left.scatter([i] * len(ratios), ratios, s=10, alpha=0.6,
                     color="tab:red" if plan == BALANCED_PLAN else "tab:blue")
    left.axhline(1.0, color="k", ls="--", lw=1, label="calibrated sensitivity")
    left.set_xticks(range(len(groups)), [f"{p}\nN={n}" for p, n in groups], fontsize=7)
    left.set(ylabel="count difference / cap·√(2D')",
             title=f"Every neighbour pair of {result['members']} images")
    left.legend(fontsize=7)
    for plan, colour in ((KEYED_PLAN, "tab:blue"), (BALANCED_PLAN, "tab:red")):
        rows = [r for r in result["stochastic"] if r["plan"] == plan]
        if rows:
            right.scatter([r["epsilon"] for r in rows], [r["epsilon_lower_bound"] for r in rows],
                          color=colour, label=f"{plan} plan")
    top = max([r["epsilon"] for r in result["stochastic"]] or [1.0])
    right.plot([0, top], [0, top], "k--", lw=1, label="claimed ε")
    held_out = result["releases"] - result["releases"] // 2
    ceiling = epsilon_at(0, held_out, held_out, result["delta"], 0.05)
    right.axhline(ceiling, color="grey", ls=":", lw=1,
                  label=f"the most {held_out} held-out releases can show")
    right.set(xlabel="claimed ε", ylabel="empirical lower bound on ε",
              title=f"Stochastic test, {result['releases']} releases per neighbour")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_dp_test(args: argparse.Namespace) -> int:
    """`rayfp audit --dp-test`: exit status 1 when any bound is violated under the keyed plan."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = None
    if args.paths:
        from rayfp.io.sources import discover_sources

        images = [Path(s.path) for s in discover_sources(args.paths)]
    members = args.members[0]
    if images is not None and len(images) <= members:
        raise ConfigError(f"--dp-test needs more than --members {members} images; got "
                          f"{len(images)}")
    epsilons = [e for e in args.epsilon if math.isfinite(e)] or [1.0]
    result = run_dp_test(out / "dp-test-files", members=members, samples=args.samples,
                         epsilons=epsilons, releases=args.releases, images=images,
                         delta=args.delta, seed=args.seed,
                         progress=(lambda _: None) if args.quiet else print)
    (out / "dp-test.json").write_text(json.dumps(result, indent=2))
    plot_dp_test(result, out / "dp-test.png")
    print(f"wrote {out / 'dp-test.json'} and {out / 'dp-test.png'}")
    violated = [r for r in result["pairs"] if r["ratio"] > 1 + 1e-9] + [
        r for r in result["stochastic"] if r["epsilon_lower_bound"] >= r["epsilon"]]
    if violated:
        print(f"the guarantee FAILED for {len(violated)} check(s)")
        return 1
    print("the guarantee held for every pair and every ε tested")
    return 0
