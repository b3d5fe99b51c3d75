"""The service's exact top-k index for bKLD: an integer screen, then an exact float64 re-rank.

bKLD(t, s)·Σw = Σ_d w_d Σ_b P_t log P_t + Σ_d w_d LSE(P_s,d) − Σ_d w_d ⟨P_t,d, P_s,d⟩   (docs/design.md §1.4)

The inner-product term dominates the work (N sources x D·B). Its source side is made of integer
counts, so the index writes each query vector q = w ⊙ P_t as a few balanced base-β integer
digits (q ≈ scale · Σ_j x_j β^-j, |x_j| <= 127) and computes every digit's dot product with the
counts *exactly*, on whichever kernel of rayfp.search.kernels measured fastest on this CPU (int8
GEMM with VNNI, exact float32 GEMM without); only the last digit's remainder is unknown, and it
is bounded by scale/2 · β^-(J-1) · Σ counts (~1e-8 of the value, float32's own rounding would
be ~3e-3). Every source whose lower bound reaches the k-th best upper bound is re-ranked with
the float64 formula from its counts, so the answer is exactly the exhaustive top-k.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Sequence

import numpy as np

from rayfp.core.distance import (
    DEFAULT_METRIC,
    TARGET_SOFTMAX,
    dimension_weights,
    get_metric,
)
from rayfp.core.fingerprint import Fingerprint, common_space
from rayfp.errors import ConfigError, SpaceMismatchError
from rayfp.search.kernels import (  # noqa: F401 - DIGIT, DIGITS, query_digits: the digits' API
    AUTO,
    DIGIT,
    DIGITS,
    FLOAT_SLACK,
    CountMatrix,
    choose_kernel,
    configure_threads,
    kernel_class,
    kernels_passed_over,
    lse_excess_error,
    lse_excess_terms,
    overflow_share,
    query_digits,
    ranking_threads,
    weighted_query,
)
from rayfp.search.pages import without_hugepage_advice


@dataclasses.dataclass
class _Rows:
    """Per-source arrays of the index, row i = source i (concatenated on updates)."""

    task_ids: np.ndarray
    counts: CountMatrix  # (N, D·B) exact counts, stored as the chosen kernel multiplies them
    n: np.ndarray  # samples per dimension
    count_total: np.ndarray  # Σ counts (= D·n for a valid fingerprint)
    lse: np.ndarray  # (N, D) LSE_b(P_s,d,·), float64 for the exact re-rank
    # The screen's copy: LSE - log B in float32 (a small positive number, 1/B..log(1 + 1.72/B)
    # for a fingerprint, so float32 keeps it to ~1e-9) and its largest |value| per source.
    lse_excess: np.ndarray  # (N, D) float32
    lse_excess_peak: np.ndarray  # (N,)
    feature_sum: np.ndarray
    n_images: np.ndarray

    @classmethod
    def encode(cls, sources: Sequence[Fingerprint], dim: int, bins: int, kernel: type, *,
               batch: int = 16, like: _Rows | None = None) -> _Rows:
        """Vectorised over small batches of sources (16 measured fastest: cache-sized).
        ``like``: the same sources encoded for another kernel; only the counts are encoded
        again, the rest is shared."""
        n, length = len(sources), dim * bins
        lse = np.empty((n, dim), np.float64)
        per_dimension = np.empty((n, dim), np.int64)
        parts = []
        samples = np.array([s.n_samples for s in sources], np.float64)
        for start in range(0, n, batch):
            part = sources[start:start + batch]
            counts = np.stack([np.asarray(s.counts).reshape(length) for s in part]
                              ).astype(np.int64)
            cube = counts.reshape(len(part), dim, bins)
            per_dimension[start:start + len(part)] = cube.sum(axis=2)
            parts.append(kernel.build(counts, dim, bins,
                                      int(per_dimension[start:start + len(part)].max())))
            if like is None:
                probabilities = cube / samples[start:start + len(part), None, None]
                # P is in [0, 1], so Σ exp(P) is in [B, e·B]: no max-shift needed (2x faster).
                lse[start:start + len(part)] = np.log(np.exp(probabilities).sum(axis=2))
        counts = parts[0] if len(parts) == 1 else kernel.join(parts)
        if like is not None:
            if not np.array_equal(like.task_ids, [s.task_id for s in sources]):
                raise ConfigError("encode(like=...) needs the same sources in the same order")
            return dataclasses.replace(like, counts=counts)
        excess = (lse - np.log(bins)).astype(np.float32)
        return cls(task_ids=np.array([s.task_id for s in sources]),
                   counts=counts,
                   n=samples, count_total=per_dimension.sum(axis=1).astype(np.float64),
                   lse=lse, lse_excess=excess,
                   lse_excess_peak=np.abs(excess).max(axis=1, initial=0).astype(np.float64),
                   feature_sum=np.stack([s.feature_sum for s in sources]).astype(np.float64),
                   n_images=np.array([s.n_images for s in sources], np.int64))

    def select(self, keep: np.ndarray) -> _Rows:
        return _Rows(**{f.name: (getattr(self, f.name).select(keep) if f.name == "counts"
                                 else getattr(self, f.name)[keep])
                        for f in dataclasses.fields(self)})

    @staticmethod
    def join(parts: Sequence[_Rows]) -> _Rows:
        """All parts' rows in one copy (not one copy per part)."""
        def stack(name: str):
            arrays = [getattr(part, name) for part in parts]
            return type(arrays[0]).join(arrays) if name == "counts" else np.concatenate(arrays)
        return _Rows(**{f.name: stack(f.name) for f in dataclasses.fields(_Rows)})


class _Segment:
    """Encoded sources that never change."""

    def __init__(self, rows: _Rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows.task_ids)

    @property
    def nbytes(self) -> int:
        return self.rows.counts.nbytes + self.rows.lse.nbytes + self.rows.lse_excess.nbytes


    def counts(self, rows: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        return self.rows.counts.counts(rows, dtype)


@dataclasses.dataclass(frozen=True)
class _Targets:
    """The query side of the linear form for T targets, computed once per search."""

    targets: Sequence[Fingerprint]
    weights: np.ndarray  # (D, T) dimension weights w
    weighted: np.ndarray  # (T, D·B) w ⊙ P_t, rows contiguous
    constants: np.ndarray  # (T,) Σ_d w_d Σ_b p log p

    @classmethod
    def of(cls, targets: Sequence[Fingerprint], weighting: str) -> _Targets:
        weights = np.stack([dimension_weights(t, weighting) for t in targets], axis=1)
        dim, bins = targets[0].counts.shape
        weighted = np.empty((len(targets), dim * bins))
        constants = np.empty(len(targets))
        for j, t in enumerate(targets):
            # One compiled pass per target: w ⊙ counts / n and Σ_d w_d Σ_b p log p (a third
            # of a lone query's time went to numpy's passes for these).
            constants[j] = weighted_query(np.asarray(t.counts), t.n_samples, weights[:, j],
                                          weighted[j])
        return cls(targets, weights, weighted, constants)

    @property
    def probabilities(self) -> list[np.ndarray]:  # T of (D, B) P_t
        return [t.probabilities for t in self.targets]

    def column(self, j: int) -> _Targets:
        return _Targets(self.targets[j:j + 1], self.weights[:, j:j + 1],
                        self.weighted[j:j + 1], self.constants[j:j + 1])


@dataclasses.dataclass(frozen=True)
class TopK:
    """One query's answer: (task_id, distance) nearest first, and how many sources the integer
    screen could not rule out (re-ranked exactly in float64)."""

    neighbours: list[tuple[str, float]]
    candidates: int


def _time_queries(index: ScreenedIndex, give_up: float = float("inf"), pause: float = 0.0,
                  repeats: int = 7, batch: int = 8, batches: int = 3) -> float:
    """Seconds per top-5 query (screen + exact re-rank) on the index, its own sources as
    targets: the mean of a lone query's median time and the median per-query time inside a
    batch of ``batch`` (the service batches concurrent queries). Both count: latency when
    quiet, throughput under load; thin GEMMs differ between BLAS libraries far more than GEMVs
    do. Medians, as a 2-core VM's timings jump by 10-15% between calls. A first lone query
    over ``give_up`` seconds is the answer (the kernel cannot win). ``pause``: seconds to wait
    first."""
    rows = np.linspace(0, len(index) - 1, max(repeats + 1, batch)).astype(int)
    targets = [index.source(int(row)) for row in rows]
    time.sleep(pause)
    index.top_k(targets[0], 5)  # warm-up: allocations, thread pools
    lone = []
    for target in targets[1:repeats + 1]:
        started = time.perf_counter()
        index.top_k(target, 5)
        lone.append(time.perf_counter() - started)
        if len(lone) == 1 and lone[0] > give_up:  # this kernel cannot win: stop here
            return lone[0]
    batched = []
    for _ in range(batches):
        started = time.perf_counter()
        index.top_k_many(targets[:batch], 5)
        batched.append((time.perf_counter() - started) / batch)
    return (float(np.median(lone)) + float(np.median(batched))) / 2


class ScreenedIndex:
    """Immutable: with_changes returns a new index that shares the unchanged segments, so a
    query running on the old one is never disturbed by a registration.

    ``kernel``: "auto" times every exact kernel (rayfp.search.kernels) on up to
    KERNEL_SAMPLE of these sources and keeps the fastest on this CPU; or a kernel's name.
    ``kernel_timings`` holds what was measured (seconds per query, see _time_queries), empty
    if forced."""

    # Sources the kernels are timed on: enough that their counts (50 MiB at D·B = 51,200)
    # outgrow a server's L3, as the whole index's do. On 256 (13 MiB, cache-resident on the
    # AVX2 EPYC) uint8-numba and int8-packed timed alike and a 10,000-source index got
    # uint8-numba, which ranks a batch there at 1.6x int8-packed's time (BENCHMARKS.md).
    KERNEL_SAMPLE = 1024
    # From this many sources the timings are worth care, which costs ~0.5 s: a pause before
    # each kernel (the one timed before may leave a pool spinning: ONNX Runtime's spin for
    # milliseconds after a call, and uint8-numba's lone query then took 8 ms, not 4), more
    # repeats, and a second timing of a close call. Below, a query takes ~1 ms on any kernel,
    # and the kernel is chosen again as the space grows (should_remeasure).
    CAREFUL_FROM = 256

    @without_hugepage_advice()
    def __init__(self, sources: Sequence[Fingerprint], *, kernel: str = AUTO,
                 like: _Rows | None = None) -> None:
        """``like``: these same sources already encoded for another kernel (the kernel
        chooser's sample), whose kernel-independent tables (LSE, sums) are reused."""
        first = common_space(sources)
        self.space_id, self.dim, self.bins = first.space_id, first.dim, first.bins
        self.kernel_timings: dict[str, float] = {}
        self.passed_over: dict[str, str] = {}  # kernels not timed, and why
        self.measured_on = 0  # sources the kernel was chosen on (0: forced)
        if kernel == AUTO:
            self.measured_on = min(len(sources), self.KERNEL_SAMPLE)
            sample = sources[:self.KERNEL_SAMPLE]
            self.passed_over = kernels_passed_over(overflow_share([s.counts for s in sample]))
            kernel, self.kernel_timings, like = self._choose(sample, self.passed_over)
            if self.measured_on < len(sources):
                like = None
        self.kernel = kernel
        self._kernel_class = kernel_class(kernel)
        self._finish([_Segment(_Rows.encode(sources, self.dim, self.bins, self._kernel_class,
                                            like=like))],
                     np.ones(len(sources), bool))

    @classmethod
    def _choose(cls, sample: Sequence[Fingerprint], skip: Collection[str] = ()
                ) -> tuple[str, dict[str, float], _Rows | None]:
        """The fastest kernel on ``sample`` (leaving out ``skip``), every timing, and the
        sample's encoded rows (the exp/log of the LSE tables were half of each kernel's build:
        computed once here)."""
        encoded = None
        careful = len(sample) >= cls.CAREFUL_FROM

        def timed(name: str, give_up: float) -> float:
            nonlocal encoded
            index = ScreenedIndex(sample, kernel=name, like=encoded)
            encoded = index.segments[0].rows
            if careful:
                return _time_queries(index, give_up, pause=0.05, repeats=7, batches=3)
            return _time_queries(index, give_up, repeats=5, batches=1)

        kernel, timings = choose_kernel(timed, close_calls=careful, skip=skip)
        return kernel, timings, encoded

    def _finish(self, segments: list[_Segment], alive: np.ndarray) -> None:
        for segment in segments:  # ready to query (int8-packed packs its counts here)
            getattr(segment.rows.counts, "prepare", lambda: None)()
        self.segments, self.alive = segments, alive
        self.offsets = np.cumsum([0] + [len(seg) for seg in segments])
        self._ids = np.concatenate([seg.rows.task_ids for seg in segments])
        self.n = np.concatenate([seg.rows.n for seg in segments])
        self.count_total = np.concatenate([seg.rows.count_total for seg in segments])
        self.task_ids = self._ids[alive]  # the live sources, for callers
        self._row_of = {t: int(i) for i, t in zip(np.flatnonzero(alive), self.task_ids)}

    # Small changes go to a new segment (and dead rows are masked) instead of copying the big
    # one: copying a 10,000-source index takes seconds. Compact once the waste is a quarter.
    MAX_SEGMENTS = 8
    MAX_WASTE = 0.25

    @without_hugepage_advice()
    def with_changes(self, upserts: Sequence[Fingerprint], removed: Sequence[str] = ()
                     ) -> ScreenedIndex:
        """A new index with these fingerprints added or replaced and these task ids removed;
        only the changed fingerprints are encoded (a registration does not re-read the store)."""
        if upserts:
            common_space([*upserts, self.source(next(iter(self._row_of.values())))]
                         if self._row_of else upserts)
        gone = [self._row_of[t] for t in {*removed, *(fp.task_id for fp in upserts)}
                if t in self._row_of]
        alive = self.alive.copy()
        alive[gone] = False
        segments = list(self.segments)
        if upserts:
            segments.append(_Segment(_Rows.encode(upserts, self.dim, self.bins,
                                                  self._kernel_class)))
            alive = np.concatenate([alive, np.ones(len(upserts), bool)])
        if not alive.any():
            raise ConfigError("an index needs at least one fingerprint")
        waste = (~alive).sum() + sum(len(seg) for seg in segments[1:])
        bounds = np.cumsum([0] + [len(seg) for seg in segments])
        if waste > self.MAX_WASTE * len(segments[0]):
            merged = _Rows.join([seg.rows.select(alive[a:b])
                                 for seg, a, b in zip(segments, bounds, bounds[1:])])
            segments, alive = [_Segment(merged)], np.ones(len(merged.n), bool)
        elif len(segments) > self.MAX_SEGMENTS:
            # Many small segments: merge them, not the big first one, whose encoding (and
            # int8-packed's packed copy, 1.7 s for 10,000 sources) stays as it is.
            tail = _Rows.join([seg.rows.select(alive[a:b])
                               for seg, a, b in zip(segments[1:], bounds[1:], bounds[2:])])
            segments = [segments[0], _Segment(tail)]
            alive = np.concatenate([alive[:bounds[1]], np.ones(len(tail.n), bool)])
        new = object.__new__(ScreenedIndex)
        new.space_id, new.dim, new.bins = self.space_id, self.dim, self.bins
        new.kernel, new._kernel_class = self.kernel, self._kernel_class
        new.kernel_timings, new.measured_on = self.kernel_timings, self.measured_on
        new.passed_over = self.passed_over
        new._finish(segments, alive)
        return new

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def should_remeasure(self) -> bool:
        """An auto-chosen kernel was measured on under half the sample this index could give
        now (a space that started small): rebuild it to choose again."""
        return 0 < self.measured_on < min(len(self), self.KERNEL_SAMPLE) / 2

    def describe_kernel(self) -> str:
        """'float32-numpy (measured per query: int8-gemm 24.5 ms, float32-numpy 5.1 ms, ... on
        256 sources)', or '... (forced)'."""
        if not self.kernel_timings:
            return f"{self.kernel} (forced)"
        timings = ", ".join(f"{name} {seconds * 1e3:.1f} ms"
                            for name, seconds in self.kernel_timings.items())
        skipped = (f"; passed over: {', '.join(self.passed_over)}, "
                   f"{next(iter(self.passed_over.values()))}" if self.passed_over else "")
        return (f"{self.kernel} (measured per query: {timings} on {self.measured_on} "
                f"sources{skipped})")

    @property
    def nbytes(self) -> int:
        return sum(seg.nbytes + seg.rows.feature_sum.nbytes for seg in self.segments)

    def _locate(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def _per_segment(self, rows: np.ndarray, fetch, *aligned: np.ndarray) -> np.ndarray:
        """fetch(segment, its local rows, its share of each ``aligned`` array: one entry a
        row) for rows of the whole index, stacked in their order."""
        rows = np.asarray(rows, np.int64)
        if len(self.segments) == 1 or len(rows) == 0:
            return fetch(self.segments[0], rows, *aligned)
        where = self._locate(rows)
        parts = {seg: fetch(self.segments[seg], rows[where == seg] - self.offsets[seg],
                            *(a[where == seg] for a in aligned))
                 for seg in np.unique(where)}
        first = next(iter(parts.values()))
        out = np.empty((len(rows), *first.shape[1:]), first.dtype)
        for seg, part in parts.items():
            out[where == seg] = part
        return out

    def counts(self, rows: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        """Exact integer counts of the given sources (rows of the whole index, live or not):
        (len(rows), D·B), int64 or any type that holds them exactly (float64 for the maths)."""
        return self._per_segment(rows, lambda seg, local: seg.counts(local, dtype))

    def _lse_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._per_segment(rows, lambda seg, local: seg.rows.lse[local])

    def fingerprint_of(self, task_id: str) -> Fingerprint | None:
        """A live source's fingerprint by task id (its counts, sum and sizes; not its privacy
        record), or None: a query by task id needs no store read."""
        row = self._row_of.get(task_id)
        return None if row is None else self.source(row)

    def source(self, row: int) -> Fingerprint:
        """The source in a row of the whole index as a Fingerprint (for metrics without a fast
        path)."""
        seg = int(self._locate(np.array([row]))[0])
        segment, local = self.segments[seg], row - int(self.offsets[seg])
        return Fingerprint(task_id=str(self._ids[row]), space_id=self.space_id,
                           counts=segment.counts(np.array([local]))[0].reshape(self.dim,
                                                                               self.bins),
                           feature_sum=segment.rows.feature_sum[local],
                           n_samples=int(segment.rows.n[local]),
                           n_images=int(segment.rows.n_images[local]))

    def top_k_metric(self, target: Fingerprint, k: int, metric: str = DEFAULT_METRIC, *,
                     exclude_self: bool = True) -> list[tuple[str, float]]:
        """Any metric: the screened path for bKLD, the direct formula for the others."""
        spec = get_metric(metric)
        if spec.weighting is not None:
            return self.top_k(target, k, weighting=spec.weighting, exclude_self=exclude_self)
        self._check(target)
        rows = [i for t, i in self._row_of.items() if not (exclude_self and t == target.task_id)]
        found = sorted((spec.pairwise(target, self.source(i)), str(self._ids[i])) for i in rows)
        return [(task_id, d) for d, task_id in found[:k]]

    def _check(self, target: Fingerprint) -> None:
        if target.space_id != self.space_id or target.counts.shape != (self.dim, self.bins):
            raise SpaceMismatchError(f"target {target.task_id!r} is in space {target.space_id}, "
                                     f"the index in {self.space_id}")

    def _lse_terms(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Σ_d w_d LSE_s,d for every source and weight column (D, T), and a rigorous bound on
        each value's error: log B · Σ w (float64) plus the float32 excess terms."""
        # every thread, unless the kernel leaves a pool spinning beside them
        threads = 1 if getattr(self._kernel_class, "spinning_pool", False) else ranking_threads()
        terms = np.concatenate([lse_excess_terms(seg.rows.lse_excess, weights, threads=threads)
                                for seg in self.segments])
        peak = np.concatenate([seg.rows.lse_excess_peak for seg in self.segments])
        sums = weights.sum(axis=0)
        base = np.log(self.bins) * sums
        error = (lse_excess_error(peak, sums, self.dim)
                 + FLOAT_SLACK * (np.abs(base) + np.abs(terms)))
        return base + terms, error

    def _inner_products(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Σ_i queries[i, t] · P_s,i for every source s and query t, with a rigorous bound on
        each value's error: two (N, T) float64 arrays over the rows of the whole index."""
        parts = [seg.rows.counts.inner(queries, seg.rows.count_total) for seg in self.segments]
        inner = np.concatenate([p[0] for p in parts])
        error = np.concatenate([p[1] for p in parts])
        return inner / self.n[:, None], error / self.n[:, None]

    def top_k_many(self, targets: Sequence[Fingerprint], k: int, *,
                   weighting: str = TARGET_SOFTMAX, exclude_self: bool = True
                   ) -> list[list[tuple[str, float]]]:
        """The exact top-k (task_id, bKLD) per target, nearest first, ties by task id."""
        return [found.neighbours for found in self.search_many(
            targets, k, weighting=weighting, exclude_self=exclude_self)]

    def search_many(self, targets: Sequence[Fingerprint], k: int, *,
                    weighting: str = TARGET_SOFTMAX, exclude_self: bool = True) -> list[TopK]:
        """top_k_many, with how many sources each query re-ranked exactly. Nothing is written
        to the index: concurrent queries share it."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        for t in targets:
            self._check(t)
        query = _Targets.of(targets, weighting)
        weights = query.weights
        inner, error = self._inner_products(query.weighted.T)
        lse_term, lse_error = self._lse_terms(weights)
        approx = lse_term - inner
        error = error + lse_error
        candidates = []
        live = np.flatnonzero(self.alive)
        for j, target in enumerate(targets):
            own = self._row_of.get(target.task_id) if exclude_self else None
            rows = live if own is None else live[live != own]
            kk = min(k, len(rows))
            if kk == 0:
                candidates.append(rows[:0])
                continue
            upper = approx[rows, j] + error[rows, j]
            threshold = np.partition(upper, kk - 1)[kk - 1]
            candidates.append(rows[approx[rows, j] - error[rows, j] <= threshold])
        exacts = self._exact_many(candidates, query)
        results = []
        for rows, exact in zip(candidates, exacts):
            order = np.lexsort((self._ids[rows], exact))[:min(k, len(rows))]
            results.append(TopK([(str(self._ids[rows][i]), float(exact[i])) for i in order],
                                len(rows)))
        return results

    # Rows re-ranked together when the targets' candidates overlap this much (a query and its
    # replicates): their counts are read once and multiplied with every target in one batched
    # product. Measured 15x a single query for R = 32 when each target read its own.
    SHARED_CANDIDATES = 4
    UNION_BLOCK = 256
    # Targets up to which each count is widened in registers (gather_products, four targets a
    # pass) rather than copied to float64 for one GEMM. At 1,000 sources of D·B = 51,200 (AVX2
    # EPYC, 2 threads, one process): a batch of 8 sharing 18 candidates 0.6 against 2.1 ms;
    # 64 rows x 33 targets (a query and 32 replicates) 7.4 against 12.2 ms.
    GATHER_TARGETS = 64

    def _exact_table(self, rows: np.ndarray, query: _Targets) -> np.ndarray:
        """(len(rows), T) bKLD of every target to every given row: the rows' counts read once
        (in blocks) and multiplied with all targets in one batched product."""
        # Σ_d w_d <p_t,d, P_s,d> for all (s, t). Up to GATHER_TARGETS targets (a batch, or a
        # query and its replicates): each count widened in registers, no float64 copy of the
        # rows. More: one float64 GEMM per block of rows.
        if len(query.constants) <= self.GATHER_TARGETS:
            inner = self._per_segment(rows, lambda seg, local: seg.rows.counts.exact_products(
                local, query.weighted))
        else:
            inner = np.empty((len(rows), len(query.constants)))
            for start in range(0, len(rows), self.UNION_BLOCK):
                block = rows[start:start + self.UNION_BLOCK]
                inner[start:start + len(block)] = (self.counts(block, np.float64)
                                                   @ query.weighted.T)
        table = self._lse_rows(rows) @ query.weights - inner / self.n[rows][:, None]
        return (table + query.constants) / query.weights.sum(axis=0)

    def _exact_pairs(self, rows: np.ndarray, targets: np.ndarray, query: _Targets
                     ) -> np.ndarray:
        """(len(rows),) bKLD of target targets[j] to row rows[j]: _exact_table's formula, each
        row with its own target, in one pass over all of a batch's candidates."""
        rows = np.asarray(rows, np.int64)
        inner = self._per_segment(rows, lambda seg, local, own: seg.rows.counts.exact_pairs(
            local, own, query.weighted), targets)
        weights = query.weights[:, targets]  # (D, pairs)
        lse = np.einsum("pd,dp->p", self._lse_rows(rows), weights)
        return (lse - inner / self.n[rows] + query.constants[targets]) / weights.sum(axis=0)

    def _exact_many(self, candidates: list[np.ndarray], query: _Targets) -> list[np.ndarray]:
        """Each target's bKLD to its candidate rows, in float64; targets whose candidates
        overlap share one read of the counts."""
        if len(candidates) == 1:  # a lone query: nothing to share
            return [self._exact_table(candidates[0], query)[:, 0] if len(candidates[0]) else
                    np.zeros(0)]
        union, where = np.unique(np.concatenate(candidates), return_inverse=True)
        pairs = sum(len(rows) for rows in candidates)
        if len(union) * len(candidates) > self.SHARED_CANDIDATES * pairs:
            exact = self._exact_pairs(np.concatenate(candidates), np.repeat(
                np.arange(len(candidates)), [len(rows) for rows in candidates]), query)
            return np.split(exact, np.cumsum([len(rows) for rows in candidates])[:-1])
        table = self._exact_table(union, query)
        out, offset = [], 0
        for j, rows in enumerate(candidates):
            out.append(table[where[offset:offset + len(rows)], j])
            offset += len(rows)
        return out

    def search_with_replicates(self, target: Fingerprint, replicates: Sequence[Fingerprint],
                               k: int, *, weighting: str = TARGET_SOFTMAX,
                               candidates: int = 64) -> tuple[list[TopK], np.ndarray, bool]:
        """The top-k of a query and of each of its replicates, and every replicate's exact
        distance to the query's top-k.

        Replicates lie near their query, so one screening of the query (a GEMV, not a GEMM of
        R + 1 columns) certifies a small candidate set for all of them. With w~ the normalised
        dimension weights, P_s the source's probabilities and H_t = Σ p log p:
            d(r, s) - d(q, s) = c_r + e_rs,  c_r independent of s,
            |e_rs| <= Δ_r = Σ_d w~_r,d ||p_r,d - p_q,d||_1 · M_d / 2
                            + Σ_d |w~_r,d - w~_q,d| · (lse range_d + M_d) / 2,
        where M_d is the largest P_s,db of any stored source and the lse range_d that of
        lse_s,d over the stored sources (the p-part is a zero-sum vector against values in
        [0, M_d]; the w-part, centred per dimension, moves c_r only by constants). So s can be
        in a replicate's top-k only if d(q, s) <= (the query's k-th distance) + 2Δ_r: those
        sources, by the query's screening bounds, are re-ranked exactly for the query and every
        replicate in one batched product. The bound is loose (measured 10-30x the actual spread
        of e_rs): when it lets through more than ``candidates`` sources, the replicates are
        ranked among the query's ``candidates`` nearest instead, and ``certified`` is False.
        The query's own top-k is exact either way.

        Returns ([query, *replicates] TopKs, (R, k) distances of each replicate to the query's
        top-k, certified)."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        everyone = [target, *replicates]
        for t in everyone:
            self._check(t)
        query = _Targets.of(everyone, weighting)
        weights = query.weights
        probs = query.probabilities
        w_q, p_q = weights[:, 0], probs[0]
        inner, error = self._inner_products(query.weighted[:1].T)
        lse_term, lse_error = self._lse_terms(weights[:, :1])
        const_q = float(query.constants[0])
        lower = (lse_term[:, 0] - inner[:, 0] - error[:, 0] - lse_error[:, 0]
                 + const_q) / w_q.sum()
        upper = (lse_term[:, 0] - inner[:, 0] + error[:, 0] + lse_error[:, 0]
                 + const_q) / w_q.sum()
        rows = np.flatnonzero(self.alive)
        rows = rows[self._ids[rows] != target.task_id]
        kk = min(k, len(rows))
        if kk == 0:
            return [TopK([], 0) for _ in everyone], np.zeros((len(replicates), 0)), True
        normalised = weights / weights.sum(axis=0)
        peak, lse_range = self._dimension_ranges()
        deltas = [float(normalised[:, j] @ (np.abs(p - p_q).sum(axis=1) * peak / 2)
                        + np.abs(normalised[:, j] - normalised[:, 0]) @ (lse_range + peak) / 2)
                  for j, p in enumerate(probs)]
        threshold = np.partition(upper[rows], kk - 1)[kk - 1] + 2 * max(deltas) + 1e-9
        pool = rows[lower[rows] <= threshold]
        certified = len(pool) <= max(candidates, kk)
        if not certified:  # the query's `candidates` nearest by its screening bounds
            keep = max(candidates, kk)
            pool = rows[np.argsort(upper[rows], kind="stable")[:keep]]
            query_pool = rows[lower[rows] <= np.partition(upper[rows], kk - 1)[kk - 1]]
            pool = np.union1d(pool, query_pool)  # the query's own answer stays exact
        table = self._exact_table(pool, query)  # (len(pool), R + 1)
        found, ids = [], self._ids[pool]
        for exact in table.T:
            order = np.lexsort((ids, exact))[:kk]
            found.append(TopK([(str(ids[i]), float(exact[i])) for i in order], len(pool)))
        position = {str(t): i for i, t in enumerate(ids)}
        answer = [position[t] for t, _ in found[0].neighbours]  # in the pool: it is exact
        return found, table[answer, 1:].T, certified

    def _dimension_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(D,) largest source probability and (D,) range of lse_s,d over the live sources;
        computed once per index (an index is immutable: changes make a new one)."""
        cached = getattr(self, "_ranges", None)
        if cached is None:
            rows = np.flatnonzero(self.alive)
            peak = np.zeros(self.dim)
            lse_lo, lse_hi = np.full(self.dim, np.inf), np.full(self.dim, -np.inf)
            for start in range(0, len(rows), self.UNION_BLOCK):
                block = rows[start:start + self.UNION_BLOCK]
                counts = self.counts(block, np.float64).reshape(len(block), self.dim, self.bins)
                peak = np.maximum(peak, (counts.max(axis=2) / self.n[block, None]).max(axis=0))
                lse = self._lse_rows(block)
                lse_lo, lse_hi = np.minimum(lse_lo, lse.min(axis=0)), np.maximum(
                    lse_hi, lse.max(axis=0))
            cached = self._ranges = (peak, lse_hi - lse_lo)
        return cached

    def distances_to(self, targets: Sequence[Fingerprint], task_ids: Sequence[str], *,
                     weighting: str = TARGET_SOFTMAX) -> np.ndarray:
        """(T, S) exact bKLD of each target to each of the given stored tasks (e.g. one
        answer's neighbours, for every replicate of the query)."""
        missing = [t for t in task_ids if t not in self._row_of]
        if missing:
            raise ConfigError(f"not in the index: {missing}")
        rows = np.array([self._row_of[t] for t in task_ids], np.int64)
        for target in targets:
            self._check(target)
        if not len(targets):
            return np.zeros((0, len(rows)))
        exact = self._exact_many([rows] * len(targets), _Targets.of(targets, weighting))
        return np.stack(exact)

    def top_k(self, target: Fingerprint, k: int = 5, *, weighting: str = TARGET_SOFTMAX,
              exclude_self: bool = True) -> list[tuple[str, float]]:
        return self.top_k_many([target], k, weighting=weighting, exclude_self=exclude_self)[0]
