"""The count columns a lone query reads (int8-columns): uint16 against one-byte codes, side by
side in one process.

    python -m bench.bench_columns [--sources 1000] [--samples 10000] [--rounds 3]

Two kinds of synthetic source (D = 512, B = 100): bench_shards' Gaussians (widths 0.03-0.1,
close-packed: every source is drawn alike), and real-shaped ones whose dimensions put 30-95% of
their samples in bin 0, as a ReLU feature's zero bin (the demo's Lite0 fingerprints: 61% in the
median dimension). Each layout's columns, a lone query's time through ScreenedIndex.search_many
and how many sources it re-ranked exactly, and a query's share of a batch of 8 (four queries
share each pass over the columns); the layouts alternate within each round (a 2-core VM drifts
10-20% between runs). Every layout answers the same top-5 (checked).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.bench_core import synthetic_space, write_section
from bench.bench_shards import make_fingerprint
from rayfp.core.fingerprint import Fingerprint
from rayfp.search import cpu
from rayfp.search.columns import EXCEPTION_SHARE, MAX_SHIFT
from rayfp.search.index import ScreenedIndex
from rayfp.search.kernels import configure_threads

TITLE = "Count columns: what a lone query reads"
BATCH = 8  # a batch as the service's batcher makes under 8 clients
DIM, BINS = 512, 100
LAYOUTS = {  # ColumnCodes.build's settings; share < 0: no row fits, every row uint16
    "uint16 columns": {"max_shift": 0, "share": -1.0},
    "exact codes (uint8 rows where they fit)": {"max_shift": 0, "share": 0.0},
    f"shifted codes (shift <= {MAX_SHIFT}, 1/{round(1 / EXCEPTION_SHARE)} exceptions)":
        {"max_shift": MAX_SHIFT, "share": EXCEPTION_SHARE},
}


def zero_bin_source(space, task_id: str, samples: int) -> Fingerprint:
    """A Gaussian per dimension (bench_shards') with 30-95% of the samples moved to bin 0."""
    gaussian = make_fingerprint(space, task_id, (0.03, 0.1), samples)
    rng = np.random.default_rng(int(task_id.split("-")[1]) + 7)
    zero = np.floor(rng.uniform(0.3, 0.95, DIM) * samples).astype(np.int64)
    counts = np.floor(gaussian.counts * (1 - zero / samples)[:, None]).astype(np.int64)
    counts[:, 0] += samples - counts.sum(axis=1)
    return Fingerprint(task_id=task_id, space_id=space.space_id, counts=counts,
                       feature_sum=gaussian.feature_sum, n_samples=samples,
                       n_images=gaussian.n_images)


def measure(index: ScreenedIndex, queries: list[Fingerprint], rounds: int,
            ) -> dict[str, dict[str, list[float]]]:
    matrix = index.segments[0].rows.counts
    made = {}
    for name, codes in LAYOUTS.items():
        matrix._columns, matrix.CODES = None, codes
        matrix.prepare()
        made[name] = matrix._columns
    want = {q.task_id: [t for t, _ in index.top_k(q, 5)] for q in queries}
    out = {name: {"ms": [], "reranked": [], "batch_ms": [],
                  "mb": [made[name][0].nbytes / 2**20]} for name in LAYOUTS}
    for _ in range(rounds):
        for name in LAYOUTS:
            matrix._columns = made[name]
            for q in queries:
                started = time.perf_counter()
                (found,) = index.search_many([q], 5)
                out[name]["ms"].append((time.perf_counter() - started) * 1e3)
                out[name]["reranked"].append(found.candidates)
                if [t for t, _ in found.neighbours] != want[q.task_id]:
                    raise AssertionError(f"{name}: another top-5 for {q.task_id}")
            for start in range(0, len(queries) - BATCH + 1, BATCH):  # GROUP at a time
                batch = queries[start:start + BATCH]
                started = time.perf_counter()
                found = index.search_many(batch, 5)
                out[name]["batch_ms"].append((time.perf_counter() - started) * 1e3 / BATCH)
                if [[t for t, _ in f.neighbours] for f in found] != [want[q.task_id]
                                                                      for q in batch]:
                    raise AssertionError(f"{name}: another top-5 in a batch")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    configure_threads(2)
    space = synthetic_space(DIM, BINS)
    kinds = {"Gaussian (widths 0.03-0.1)":
             lambda i: make_fingerprint(space, f"task-{i}", (0.03, 0.1), args.samples),
             "real-shaped (30-95% in bin 0)": lambda i: zero_bin_source(space, f"task-{i}",
                                                                         args.samples)}
    rows = []
    for kind, make in kinds.items():
        sources = [make(i) for i in range(args.sources + args.queries)]
        index = ScreenedIndex(sources[:args.sources], kernel="int8-columns")
        found = measure(index, sources[args.sources:], args.rounds)
        for name, got in found.items():
            what = f"{kind}, {args.sources:,} sources, N = {args.samples:,}: {name}"
            batched = (f"; in batches of {BATCH} {np.median(got['batch_ms']):.2f} ms a query"
                       if got["batch_ms"] else "")
            result = (f"columns {got['mb'][0]:.0f} MiB; lone query p50 "
                      f"{np.median(got['ms']):.2f} ms{batched}; "
                      f"{np.mean(got['reranked']):.1f} sources re-ranked a query")
            print(f"{what}: {result}", flush=True)
            rows.append((what, result))
    if not args.no_write:
        write_section(rows, f"{TITLE} ({cpu.describe()['torch_capability']})",
                      f"python -m bench.bench_columns --sources {args.sources} --samples "
                      f"{args.samples} --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
