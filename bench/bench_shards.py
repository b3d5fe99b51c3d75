"""Sharded lookup in one process: index memory per shard and top-5 latency, at 10,000 and
100,000 synthetic sources (D = 512, B = 100, N = 1,000 samples each).

    python -m bench.bench_shards [--sources 10000 100000] [--queries 20]

Shards are built and queried one at a time (100,000 sources do not fit in this box's memory as
one process's fingerprints), each with the kernel its index chooses on this CPU. Reported per
configuration: memory per shard (index bytes), the per-shard query time, and the fan-out
latency two ways: shards queried one after another here, and the slowest shard plus the merge
(what S shard replicas on S machines would give, before the network hop). Every merged answer
is checked against the exhaustive ranking (float64 linear form over every source of every
shard, in chunks).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from bench.bench_core import synthetic_space, write_section
from rayfp.core.distance import LinearIndex
from rayfp.core.fingerprint import Fingerprint
from rayfp.search.index import ScreenedIndex
from rayfp.search.shards import merge_top_k, shard_of

DIM, BINS, SAMPLES, K = 512, 100, 1000, 5
TITLE = "Sharded lookup: memory per shard and latency"


WIDTHS = (0.05, 0.3)  # each dimension's spread, a share of the bin range: ~78% bins nonzero


def make_fingerprint(space, task_id: str, widths: tuple[float, float] = WIDTHS,
                     samples: int = SAMPLES) -> Fingerprint:
    """A discretised Gaussian per dimension (as bench_core.realistic_fingerprint, but its
    expected counts rounded by largest remainder instead of a multinomial draw: 20x faster,
    which 300,000 sources need), seeded by the task id so any shard makes its own sources."""
    rng = np.random.default_rng(int(task_id.split("-")[1]))
    centres = rng.uniform(0.2, 0.8, DIM)[:, None]
    widths = rng.uniform(*widths, DIM)[:, None]
    grid = (np.arange(BINS)[None, :] + 0.5) / BINS
    p = np.exp(-0.5 * ((grid - centres) / widths) ** 2)
    p /= p.sum(axis=1, keepdims=True)
    expected = p * samples
    counts = np.floor(expected).astype(np.int64)
    short = samples - counts.sum(axis=1)  # per dimension, < BINS
    order = np.argsort(counts - expected, axis=1)  # largest remainders first
    counts[np.arange(DIM)[:, None], order] += np.arange(BINS)[None, :] < short[:, None]
    return Fingerprint(task_id=task_id, space_id=space.space_id,
                       counts=counts, feature_sum=rng.random(DIM) * samples,
                       n_samples=samples, n_images=max(1, samples // 10))


@dataclass(frozen=True)
class SourceShape:
    """How the lookup benchmarks draw their synthetic sources (make_fingerprint), with the
    words their titles and commands carry when it is not the default."""

    widths: tuple[float, float] = WIDTHS
    samples: int = SAMPLES

    def make(self, space, task_id: str) -> Fingerprint:
        return make_fingerprint(space, task_id, self.widths, self.samples)

    def title(self) -> str:
        parts = ([f"sources of widths {self.widths[0]}-{self.widths[1]}"]
                 if self.widths != WIDTHS else [])
        parts += [f"N = {self.samples:,} samples"] if self.samples != SAMPLES else []
        return "".join(f", {part}" for part in parts)

    def flags(self) -> str:
        return ((f" --widths {self.widths[0]} {self.widths[1]}" if self.widths != WIDTHS else "")
                + (f" --samples {self.samples}" if self.samples != SAMPLES else ""))


def add_shape_options(parser) -> None:
    parser.add_argument("--widths", type=float, nargs=2, default=WIDTHS,
                        help="each dimension's spread as a share of the bin range (default: "
                             "~78%% of bins nonzero; 0.03 0.1: ~40%%, as the demo's real "
                             "fingerprints, whose median is 37%%)")
    parser.add_argument("--samples", type=int, default=SAMPLES,
                        help=f"samples per source (default {SAMPLES:,}; the paper's N is "
                             "10,000, where a third of the bins pass 127)")


def shape_of(args) -> SourceShape:
    return SourceShape(tuple(args.widths), args.samples)


def exhaustive_top_k(fps: list[Fingerprint], queries: list[Fingerprint], chunk: int = 2000
                     ) -> list[list[tuple[str, float]]]:
    """Each query's exhaustive top-K of these sources: every one in the float64 linear form (in
    chunks, merged: the top-K of a union is the top-K of its parts' top-K)."""
    best: list[list[tuple[str, float]]] = [[] for _ in queries]
    for start in range(0, len(fps), chunk):
        index = LinearIndex(fps[start:start + chunk])
        best = [merge_top_k([b, index.top_k(q, K)], K) for b, q in zip(best, queries)]
    return best


def run(sources: int, shards: int, queries: list[Fingerprint], space) -> dict:
    ids = [f"task-{i}" for i in range(sources)]
    owner = np.array([shard_of(task, shards) for task in ids])
    per_shard_ms, answers, nbytes, kernels, truth = [], [], [], set(), []
    for shard in range(shards):
        fps = [make_fingerprint(space, ids[i]) for i in np.flatnonzero(owner == shard)]
        index = ScreenedIndex(fps)
        truth.append(exhaustive_top_k(fps, queries))
        kernels.add(index.kernel)
        nbytes.append(index.nbytes)
        index.top_k(queries[0], K)  # warm
        times, found = [], []
        for query in queries:
            t0 = time.perf_counter()
            found.append(index.top_k(query, K))
            times.append((time.perf_counter() - t0) * 1e3)
        per_shard_ms.append(times)
        answers.append(found)
        del index, fps
    merge_ms, merged = [], []
    for j in range(len(queries)):
        t0 = time.perf_counter()
        merged.append([task for task, _ in merge_top_k([a[j] for a in answers], K)])
        merge_ms.append((time.perf_counter() - t0) * 1e3)
    times = np.array(per_shard_ms)  # (shards, queries)
    return {"sources": sources, "shards": shards, "nbytes": nbytes, "kernels": kernels,
            "shard_p50": float(np.median(times)),
            "sequential": np.percentile(times.sum(axis=0), [50, 99]),
            "parallel": np.percentile(times.max(axis=0) + np.array(merge_ms), [50, 99]),
            "merged": merged,
            "exhaustive": [[task for task, _ in merge_top_k([t[j] for t in truth], K)]
                           for j in range(len(queries))]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    space = synthetic_space(DIM, BINS)
    queries = [make_fingerprint(space, f"query-{10**9 + j}") for j in range(args.queries)]
    rows = []
    for sources in args.sources:
        for shards in ((1, 2, 4) if sources <= 10_000 else (8,)):
            found = run(sources, shards, queries, space)
            exact = found["merged"] == found["exhaustive"]
            mib = [b / 2**20 for b in found["nbytes"]]
            row = (f"{sources:,} sources, {shards} shard(s) ({'/'.join(sorted(found['kernels']))})",
                   f"index memory per shard {min(mib):.0f}–{max(mib):.0f} MiB; per-shard query "
                   f"p50 {found['shard_p50']:.1f} ms; fan-out p50/p99: shards in parallel "
                   f"{found['parallel'][0]:.1f}/{found['parallel'][1]:.1f} ms, one after "
                   f"another here {found['sequential'][0]:.1f}/{found['sequential'][1]:.1f} ms; "
                   f"identical to exhaustive top-{K} for {args.queries} queries: {exact}")
            print(" | ".join(row), flush=True)
            rows.append(row)
    if not args.no_write:
        write_section(rows, TITLE, "python -m bench.bench_shards")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
