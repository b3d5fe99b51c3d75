"""The service's exact top-k index for bKLD: an integer screen, then an exact float64 re-rank.

bKLD(t, s)·Σw = Σ_d w_d Σ_b P_t log P_t + Σ_d w_d LSE(P_s,d) − Σ_d w_d ⟨P_t,d, P_s,d⟩   (DESIGN §1.4)

The inner-product term dominates the work (N sources x D·B). Its source side is made of integer
counts, so the index writes each query vector q = w ⊙ P_t as a few balanced base-β integer
digits (q ≈ scale · Σ_j x_j β^-j, |x_j| <= 127) and computes every digit's dot product with the
counts *exactly*, on whichever kernel of rayfp.core.kernels measured fastest on this CPU (int8
GEMM with VNNI, exact float32 GEMM without); only the last digit's remainder is unknown, and it
is bounded by scale/2 · β^-(J-1) · Σ counts (~1e-8 of the value, float32's own rounding would
be ~3e-3). Every source whose lower bound reaches the k-th best upper bound is re-ranked with
the float64 formula from its counts, so the answer is exactly the exhaustive top-k.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from rayfp.core.distance import (
    DEFAULT_METRIC,
    TARGET_SOFTMAX,
    dimension_weights,
    get_metric,
    plogp_rows,
)
from rayfp.core.fingerprint import Fingerprint, common_space
from rayfp.core.kernels import (  # noqa: F401 - DIGIT, DIGITS, query_digits: the digits' API
    AUTO,
    DIGIT,
    DIGITS,
    FLOAT_SLACK,
    CountMatrix,
    choose_kernel,
    configure_threads,
    kernel_class,
    query_digits,
)
from rayfp.errors import ConfigError, SpaceMismatchError


@dataclasses.dataclass
class _Rows:
    """Per-source arrays of the index, row i = source i (concatenated on updates)."""

    task_ids: np.ndarray
    counts: CountMatrix  # (N, D·B) exact counts, stored as the chosen kernel multiplies them
    n: np.ndarray  # samples per dimension
    count_total: np.ndarray  # Σ counts (= D·n for a valid fingerprint)
    lse: np.ndarray  # (N, D) LSE_b(P_s,d,·)
    feature_sum: np.ndarray
    n_images: np.ndarray

    @classmethod
    def encode(cls, sources: Sequence[Fingerprint], dim: int, bins: int, kernel: type, *,
               batch: int = 16) -> _Rows:
        """Vectorised over small batches of sources (16 measured fastest: cache-sized)."""
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
            probabilities = cube / samples[start:start + len(part), None, None]
            # P is in [0, 1], so Σ exp(P) is in [B, e·B]: no max-shift needed (2x faster).
            lse[start:start + len(part)] = np.log(np.exp(probabilities).sum(axis=2))
        return cls(task_ids=np.array([s.task_id for s in sources]),
                   counts=parts[0] if len(parts) == 1 else kernel.join(parts),
                   n=samples, count_total=per_dimension.sum(axis=1).astype(np.float64),
                   lse=lse,
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
        return self.rows.counts.nbytes + self.rows.lse.nbytes


    def counts(self, rows: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        return self.rows.counts.counts(rows, dtype)


@dataclasses.dataclass(frozen=True)
class TopK:
    """One query's answer: (task_id, distance) nearest first, and how many sources the integer
    screen could not rule out (re-ranked exactly in float64)."""

    neighbours: list[tuple[str, float]]
    candidates: int


def _time_queries(index: ScreenedIndex, repeats: int = 5, batch: int = 8) -> float:
    """Seconds per top-5 query (screen + exact re-rank) on the index, its own sources as
    targets: the mean of a lone query's median time and the per-query time inside a batch of
    ``batch`` (the service batches concurrent queries). Both count: latency when quiet,
    throughput under load; thin GEMMs differ between BLAS libraries far more than GEMVs do."""
    rows = np.linspace(0, len(index) - 1, max(repeats + 1, batch)).astype(int)
    targets = [index.source(int(row)) for row in rows]
    index.top_k(targets[0], 5)  # warm-up: allocations, thread pools
    lone = []
    for target in targets[1:repeats + 1]:
        started = time.perf_counter()
        index.top_k(target, 5)
        lone.append(time.perf_counter() - started)
    started = time.perf_counter()
    index.top_k_many(targets[:batch], 5)
    batched = (time.perf_counter() - started) / batch
    return (float(np.median(lone)) + batched) / 2


class ScreenedIndex:
    """Immutable: with_changes returns a new index that shares the unchanged segments, so a
    query running on the old one is never disturbed by a registration.

    ``kernel``: "auto" times every exact kernel (rayfp.core.kernels) on up to
    KERNEL_SAMPLE of these sources and keeps the fastest on this CPU; or a kernel's name.
    ``kernel_timings`` holds what was measured (seconds per query, see _time_queries), empty
    if forced."""

    KERNEL_SAMPLE = 256

    def __init__(self, sources: Sequence[Fingerprint], *, kernel: str = AUTO) -> None:
        first = common_space(sources)
        self.space_id, self.dim, self.bins = first.space_id, first.dim, first.bins
        self.kernel_timings: dict[str, float] = {}
        self.measured_on = 0  # sources the kernel was chosen on (0: forced)
        if kernel == AUTO:
            self.measured_on = min(len(sources), self.KERNEL_SAMPLE)
            kernel, self.kernel_timings = choose_kernel(
                lambda name: _time_queries(ScreenedIndex(sources[:self.KERNEL_SAMPLE],
                                                         kernel=name)))
        self.kernel = kernel
        self._kernel_class = kernel_class(kernel)
        self._finish([_Segment(_Rows.encode(sources, self.dim, self.bins, self._kernel_class))],
                     np.ones(len(sources), bool))

    def _finish(self, segments: list[_Segment], alive: np.ndarray) -> None:
        self.segments, self.alive = segments, alive
        self.offsets = np.cumsum([0] + [len(seg) for seg in segments])
        self._ids = np.concatenate([seg.rows.task_ids for seg in segments])
        self.n = np.concatenate([seg.rows.n for seg in segments])
        self.count_total = np.concatenate([seg.rows.count_total for seg in segments])
        self.task_ids = self._ids[alive]  # the live sources, for callers
        self._row_of = {t: int(i) for i, t in zip(np.flatnonzero(alive), self.task_ids)}

    # Small changes go to a new segment (and dead rows are masked) instead of copying the big
    # one: measured 2.7 s to copy a 10,000-source index. Compact once the waste is a quarter.
    MAX_SEGMENTS = 8
    MAX_WASTE = 0.25

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
        if len(segments) > self.MAX_SEGMENTS or waste > self.MAX_WASTE * len(segments[0]):
            bounds = np.cumsum([0] + [len(seg) for seg in segments])
            merged = _Rows.join([seg.rows.select(alive[a:b])
                                 for seg, a, b in zip(segments, bounds, bounds[1:])])
            segments, alive = [_Segment(merged)], np.ones(len(merged.n), bool)
        new = object.__new__(ScreenedIndex)
        new.space_id, new.dim, new.bins = self.space_id, self.dim, self.bins
        new.kernel, new._kernel_class = self.kernel, self._kernel_class
        new.kernel_timings, new.measured_on = self.kernel_timings, self.measured_on
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
        return f"{self.kernel} (measured per query: {timings} on {self.measured_on} sources)"

    @property
    def nbytes(self) -> int:
        return sum(seg.nbytes + seg.rows.feature_sum.nbytes for seg in self.segments)

    def _locate(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def _per_segment(self, rows: np.ndarray, fetch) -> np.ndarray:
        """fetch(segment, its local rows) for rows of the whole index, stacked in their order."""
        rows = np.asarray(rows, np.int64)
        if len(self.segments) == 1 or len(rows) == 0:
            return fetch(self.segments[0], rows)
        where = self._locate(rows)
        parts = {seg: fetch(self.segments[seg], rows[where == seg] - self.offsets[seg])
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
        weights = np.stack([dimension_weights(t, weighting) for t in targets], axis=1)  # (D, T)
        probs = [t.probabilities for t in targets]
        queries = np.stack([(p * w[:, None]).ravel() for p, w in zip(probs, weights.T)], axis=1)
        inner, error = self._inner_products(queries)
        lse_term = np.concatenate([seg.rows.lse @ weights for seg in self.segments])
        approx = lse_term - inner
        error = error + FLOAT_SLACK * np.abs(lse_term)
        results = []
        for j, target in enumerate(targets):
            rows = np.flatnonzero(self.alive)
            if exclude_self:
                rows = rows[self._ids[rows] != target.task_id]
            kk = min(k, len(rows))
            if kk == 0:
                results.append(TopK([], 0))
                continue
            upper = approx[rows, j] + error[rows, j]
            threshold = np.partition(upper, kk - 1)[kk - 1]
            rows = rows[approx[rows, j] - error[rows, j] <= threshold]
            exact = self._exact(rows, probs[j], weights[:, j])
            order = np.lexsort((self._ids[rows], exact))[:kk]
            results.append(TopK([(str(self._ids[rows][i]), float(exact[i])) for i in order],
                                len(rows)))
        return results

    def _exact(self, rows: np.ndarray, p_t: np.ndarray, w: np.ndarray) -> np.ndarray:
        """bKLD(target, source) in float64 for the given rows; p_t the target's probabilities,
        w its dimension weights."""
        c_s = self.counts(rows, np.float64).reshape(len(rows), self.dim, self.bins)
        inner_exact = np.einsum("sdb,db->sd", c_s, p_t) / self.n[rows, None]
        return ((self._lse_rows(rows) - inner_exact) @ w
                + float((w * plogp_rows(p_t)).sum())) / w.sum()

    def distances_to(self, targets: Sequence[Fingerprint], task_ids: Sequence[str], *,
                     weighting: str = TARGET_SOFTMAX) -> np.ndarray:
        """(T, S) exact bKLD of each target to each of the given stored tasks (e.g. one
        answer's neighbours, for every replicate of the query)."""
        missing = [t for t in task_ids if t not in self._row_of]
        if missing:
            raise ConfigError(f"not in the index: {missing}")
        rows = np.array([self._row_of[t] for t in task_ids], np.int64)
        out = np.empty((len(targets), len(rows)))
        for j, target in enumerate(targets):
            self._check(target)
            out[j] = self._exact(rows, target.probabilities,
                                 dimension_weights(target, weighting))
        return out

    def top_k(self, target: Fingerprint, k: int = 5, *, weighting: str = TARGET_SOFTMAX,
              exclude_self: bool = True) -> list[tuple[str, float]]:
        return self.top_k_many([target], k, weighting=weighting, exclude_self=exclude_self)[0]
