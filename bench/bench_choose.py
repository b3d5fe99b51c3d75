"""How long the kernel choice takes (every service start and every space that has grown waits
for it), with and without passing over the kernels that multiply an int8 overflow.

    python -m bench.bench_choose [--sources 1000] [--widths 0.03 0.1] [--samples 10000]

Synthetic sources (D = 512, B = 100, bench_shards' shapes). Both ways alternate in one process,
``--rounds`` times each (a 2-core VM drifts 10-20% between runs): ScreenedIndex(sources) with
the chooser as shipped, and with INT8_OVERFLOW_HOPELESS lifted so every kernel is built and
timed. Both must choose a kernel; the answers are the same either way (every kernel is exact).
"""

from __future__ import annotations

import argparse
import time

from bench.bench_core import synthetic_space, write_section
from bench.bench_shards import add_shape_options, shape_of
from rayfp.search import cpu, kernels
from rayfp.search.index import ScreenedIndex
from rayfp.search.kernels import configure_threads, overflow_share

TITLE = "Kernel choice: the wait at every service start"


def choose(sources: list, hopeless: float) -> tuple[float, ScreenedIndex]:
    kept = kernels.INT8_OVERFLOW_HOPELESS
    kernels.INT8_OVERFLOW_HOPELESS = hopeless
    try:
        started = time.perf_counter()
        index = ScreenedIndex(sources)
        return time.perf_counter() - started, index
    finally:
        kernels.INT8_OVERFLOW_HOPELESS = kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    add_shape_options(parser)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    configure_threads(2)
    space = synthetic_space(512, 100)
    shape = shape_of(args)
    sources = [shape.make(space, f"task-{i}") for i in range(args.sources)]
    share = overflow_share([s.counts for s in sources[:ScreenedIndex.KERNEL_SAMPLE]])
    ScreenedIndex(sources[:2], kernel="uint8-numba")  # compile/load numba's loops first
    ways = {"every kernel built and timed": 2.0,
            "int8-overflow kernels passed over": kernels.INT8_OVERFLOW_HOPELESS}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    chosen: dict[str, set[str]] = {way: set() for way in ways}
    for round_ in range(args.rounds):
        for way, hopeless in ways.items():
            took, index = choose(sources, hopeless)
            seconds[way].append(took)
            chosen[way].add(index.kernel)
            print(f"round {round_ + 1}, {way}: {took:.1f} s -> {index.describe_kernel()}",
                  flush=True)
    label = (f"{args.sources:,} sources, {share:.0%} of the counts above 127")
    rows = [(f"{label}: {way}",
             f"{min(seconds[way]):.1f}-{max(seconds[way]):.1f} s over {args.rounds} rounds; "
             f"chose {', '.join(sorted(chosen[way]))}") for way in ways]
    for what, result in rows:
        print(f"{what}: {result}")
    if not args.no_write:
        write_section(rows, f"{TITLE} ({cpu.describe()['torch_capability']}{shape.title()})",
                      f"python -m bench.bench_choose --sources {args.sources} --rounds "
                      f"{args.rounds}{shape.flags()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
