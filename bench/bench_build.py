"""How long an index takes to build (every service start, every compaction after registrations),
with numpy's huge-page advice and without it (rayfp.search.pages), side by side in one process.

    python -m bench.bench_build [--sources 2000] [--kernels int8-columns auto] [--rounds 3]

Synthetic sources (D = 512, B = 100, bench_shards' shapes; default widths 0.03-0.1 and the
paper's N = 10,000). "auto" is a service start: the kernel choice on up to 1,024 sources, then
the build (the kernels built are listed: a choice by timing may differ between runs). Both ways
alternate within each round. The
machine's transparent-huge-page settings decide how much the advice costs: they are printed
and written with the numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.bench_core import synthetic_space, write_section
from bench.bench_shards import add_shape_options, shape_of
from rayfp.search import cpu, pages
from rayfp.search.index import ScreenedIndex
from rayfp.search.kernels import configure_threads

TITLE = "Index build: numpy's huge-page advice"
THP = Path("/sys/kernel/mm/transparent_hugepage")


def thp_settings() -> str:
    """The kernel's THP mode and defrag policy, e.g. 'enabled [madvise], defrag [madvise]'."""
    try:
        return ", ".join(f"{name} {(THP / name).read_text().split('[')[1].split(']')[0]}"
                         for name in ("enabled", "defrag"))
    except (OSError, IndexError):
        return "THP settings unknown"


def build(sources: list, kernel: str, advice: bool) -> tuple[float, str]:
    """Seconds to build, and the kernel built; ``advice``: numpy's default kept."""
    kept = pages._switch
    if advice:  # the product's switch made a no-op: numpy advises as it does by default
        pages._switch = lambda: None
    try:
        started = time.perf_counter()
        index = ScreenedIndex(sources, kernel=kernel)
        return time.perf_counter() - started, index.kernel
    finally:
        pages._switch = kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=2000)
    parser.add_argument("--kernels", nargs="+", default=["int8-columns", "auto"])
    parser.add_argument("--rounds", type=int, default=3)
    add_shape_options(parser)
    parser.set_defaults(widths=[0.03, 0.1], samples=10_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    configure_threads(2)
    space = synthetic_space(512, 100)
    shape = shape_of(args)
    sources = [shape.make(space, f"task-{i}") for i in range(args.sources)]
    ScreenedIndex(sources[:2], kernel="uint8-numba")  # numba's loops compiled or loaded first
    rows = []
    for kernel in args.kernels:
        seconds: dict[bool, list[float]] = {True: [], False: []}
        built: dict[bool, set[str]] = {True: set(), False: set()}
        for round_ in range(args.rounds):
            for advice in (True, False):
                took, chosen = build(sources, kernel, advice)
                seconds[advice].append(took)
                built[advice].add(chosen)
                print(f"round {round_ + 1}, {kernel}, {'with' if advice else 'without'} the "
                      f"advice: {took:.2f} s ({chosen})", flush=True)
        # "auto" chooses by timing, so a close call may go either way on a tiny index
        kinds = {advice: ", ".join(sorted(names)) for advice, names in built.items()}
        spans = {advice: f"{min(s):.1f}-{max(s):.1f} s" for advice, s in seconds.items()}
        rows.append((f"{args.sources:,} sources, {kernel}",
                     f"{spans[True]} with numpy's huge-page advice ({kinds[True]}), "
                     f"{spans[False]} without ({kinds[False]}); {args.rounds} rounds"))
        print(f"{rows[-1][0]}: {rows[-1][1]}", flush=True)
    if not args.no_write:
        write_section(rows, f"{TITLE} ({cpu.describe()['torch_capability']}; {thp_settings()})",
                      f"python -m bench.bench_build --sources {args.sources} --kernels "
                      f"{' '.join(args.kernels)} --rounds {args.rounds}{shape.flags()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
