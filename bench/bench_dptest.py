"""The stochastic DP test, before and after the keyed plan: BENCHMARKS.md's "Privacy: the
stochastic DP test" section and docs/dp-test.png.

50 generated images, a canary named to sort first, last and at 24 places between (with the
first or the last member leaving), and a same-name swap; N = 50, 75 (N mod M != 0) and 30
(N < M); the old position-keyed plan ("balanced") beside the keyed plan; 2,000 releases per
neighbour at ε = 1, 4, 8 (seeded noise, so the table can be reproduced).

    python -m bench.bench_dptest
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.bench_core import machine
from bench.sections import replace_section
from rayfp.cli.dptest import plot_dp_test, run_dp_test
from rayfp.core.sampling import BALANCED_PLAN, KEYED_PLAN

ROOT = Path(__file__).resolve().parents[1]
MEMBERS, SAMPLES, EPSILONS, RELEASES = 50, (50, 75, 30), (1.0, 4.0, 8.0), 2000


def main() -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        result = run_dp_test(Path(folder), members=MEMBERS, samples=SAMPLES, epsilons=EPSILONS,
                             releases=RELEASES, plans=(BALANCED_PLAN, KEYED_PLAN), seed=0,
                             noise_seed=11)
    plot_dp_test(result, ROOT / "docs" / "dp-test.png")
    lines = ["## Privacy: the stochastic DP test", "",
             f"Machine: {machine()}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             "Command: `python -m bench.bench_dptest` (the same test as `rayfp audit --dp-test`; "
             f"{time.perf_counter() - started:.0f} s)", "",
             f"{MEMBERS} images; {len(result['pairs']) // (2 * len(SAMPLES))} neighbour pairs per "
             "plan and N (a canary that sorts first, last, at 24 places between, or keeps the "
             "leaver's name). *Ratio*: the largest count difference over the calibrated "
             "sensitivity cap·√(2D') (DP needs <= 1). *Empirical ε*: a 95 % Clopper-Pearson lower "
             f"bound from {RELEASES} releases per neighbour (half choose the threshold of the "
             "optimal test, half judge it); it must stay below the claimed ε. Picture: "
             "docs/dp-test.png.", "",
             "| plan | N | worst ratio | worst pair | empirical ε at 1 | at 4 | at 8 |",
             "|---|---|---|---|---|---|---|"]
    for plan in (BALANCED_PLAN, KEYED_PLAN):
        for n in SAMPLES:
            rows = [r for r in result["stochastic"] if (r["plan"], r["samples"]) == (plan, n)]
            bounds = {r["epsilon"]: r["epsilon_lower_bound"] for r in rows}
            name = "position-keyed (before)" if plan == BALANCED_PLAN else "keyed (after)"
            lines.append(f"| {name} | {n} | {rows[0]['ratio']:.2f} | {rows[0]['pair']} | "
                         + " | ".join(f"{bounds[e]:.2f}" for e in EPSILONS) + " |")
    section = "\n".join(lines) + "\n"
    print(section)
    replace_section("Privacy: the stochastic DP test", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
