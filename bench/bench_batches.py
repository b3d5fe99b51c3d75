"""The index's cost per query, alone and in batches, against what memory allows.

    python -m bench.bench_batches [--sources 1000 10000] [--no-write]

Synthetic sources (D = 512, B = 100, as bench_ingress), 2 threads, each kernel side by side
(--kernels; default the 1-byte kernels: uint8-numba, int8-gemm, int8-onnxruntime, int8-packed). Per
size and kernel: a lone query's whole top-5 search; a batch of T through top_k_many (four queries per pass
over the index) against the same T queries one after another; and the time to merely stream
the index's bytes once (a numba sum over the uint8 counts), the floor of a lone query.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.bench_core import synthetic_space, write_section
from bench.bench_shards import SourceShape, add_shape_options, shape_of
from rayfp.search import cpu
from rayfp.search.index import ScreenedIndex
from rayfp.search.kernels import configure_threads

TITLE = "Lookup batches: the index per query, alone and four per pass"


def median_ms(run, repeats: int) -> float:
    times = []
    for r in range(repeats):
        started = time.perf_counter()
        run(r)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3


def stream_reader(counts: np.ndarray):
    """A call that reads every byte of the index once, summed (2 threads): what memory
    bandwidth allows."""
    import numba

    @numba.njit(parallel=True, nogil=True)
    def row_sums(a, out):  # pragma: no cover - compiled
        for s in numba.prange(a.shape[0]):
            row = a[s]
            total = np.uint32(0)
            for i in range(row.shape[0]):
                total += row[i]
            out[s] = total

    out = np.empty(len(counts), np.uint32)
    row_sums(counts, out)
    return lambda: row_sums(counts, out)


def lone_against_stream(index: ScreenedIndex, counts: np.ndarray, queries: list, repeats: int
                        ) -> tuple[float, float]:
    """Median ms of a lone query, and of one stream of the counts taken before and after the
    queries, so that both see the same machine (this VM's L3 bandwidth moved 1.1-2.4 ms for
    49 MiB between runs). Not in turns: ONNX Runtime's threads spin for a while after a call
    and would slow the stream that follows."""
    stream = stream_reader(counts)

    def timed(run) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    floor = [timed(stream) for _ in range(repeats)]
    lone = [timed(lambda r=r: index.top_k(queries[r % len(queries)], 5)) for r in range(repeats)]
    time.sleep(0.2)
    floor += [timed(stream) for _ in range(repeats)]
    return float(np.median(lone)) * 1e3, float(np.median(floor)) * 1e3


def bench_size(n_sources: int, queries: list, kernel: str, shape: SourceShape
               ) -> list[tuple[str, str]]:
    space = synthetic_space(512, 100)
    index = ScreenedIndex([shape.make(space, f"task-{i}") for i in range(n_sources)],
                          kernel=kernel)
    matrix = index.segments[0].rows.counts
    # the floor: one byte per count streamed once (what the int8 kernels hold; float32-numpy
    # holds four)
    counts = getattr(matrix, "low", None)
    if counts is None:
        counts = np.ones((n_sources, space.dim * space.bins), np.uint8)
    index.top_k_many(queries[:8], 5)  # warm-up: compilation, pools
    repeats = 15 if n_sources <= 1000 else 5
    lone, floor = lone_against_stream(index, counts.view(np.uint8), queries, 2 * repeats + 1)
    label = f"{kernel}, {n_sources:,} sources ({counts.nbytes / 2**20:.0f} MiB of counts)"
    # int8-sparse reads only the columns where a query is nonzero: this share of the bytes
    needed = float(np.mean([(q.counts > 0).mean() for q in queries]))
    rows = [(f"{label}, lone query", f"{lone:.1f} ms = {lone / floor:.2f}x streaming the counts once "
                                     f"({floor:.1f} ms, {counts.nbytes / floor / 1e6:.1f} GB/s); "
                                     f"the queries are nonzero in {needed:.0%} of the bins")]
    for size in (2, 4, 8, 16):
        batch = queries[:size]
        together = median_ms(lambda _, batch=batch: index.top_k_many(batch, 5),
                             max(3, repeats // 2))
        apart = median_ms(lambda _, batch=batch: [index.top_k(q, 5) for q in batch],
                          max(3, repeats // 2))
        rows.append((f"{label}, batch of {size}",
                     f"{together / size:.2f} ms a query together, {apart / size:.2f} ms one "
                     f"after another ({apart / together:.1f}x)"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--kernels", nargs="+",
                        default=["uint8-numba", "int8-gemm", "int8-onnxruntime", "int8-packed",
                                 "int8-sparse"])
    add_shape_options(parser)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    configure_threads(2)
    space = synthetic_space(512, 100)
    shape = shape_of(args)
    queries = [shape.make(space, f"query-{10**9 + i}") for i in range(16)]
    rows = []
    for n_sources in args.sources:
        for kernel in args.kernels:
            rows += bench_size(n_sources, queries, kernel, shape)
            for row in rows[-5:]:
                print(row, flush=True)
    if not args.no_write:
        write_section(rows, f"{TITLE} ({cpu.describe()['torch_capability']}{shape.title()})",
                      "python -m bench.bench_batches --sources "
                      + " ".join(map(str, args.sources)) + " --kernels " + " ".join(args.kernels)
                      + shape.flags())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
