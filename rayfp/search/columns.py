"""The counts as columns (D·B rows of N sources) for queries that read only their nonzero rows,
in one byte a count wherever a coarse code keeps the bound tight.

A lone query reads every count of its nonzero rows once. At the paper's N = 10,000 samples a
sixth of the counts pass 255, so whole counts need two bytes. Here each row (one bin of one
dimension, over every source) gets the smallest shift s <= MAX_SHIFT that fits all but a few of
its counts in 8 bits: code = c >> s, read as the middle of its range, c ∈ code·2^s + [0, 2^s),
so the code is off by at most (2^s − 1)/2 counts. Counts the code cannot reach (at most
EXCEPTION_SHARE of a row) are exceptions: the code holds 255 and the count above 255·2^s is
stored beside it (two bytes, and two for the source while a segment holds at most 65,536), so
they are exact. Rows no shift fits (a ReLU's zero bin holds most samples of every source) stay
uint16, exact. A query's error bound adds Σ_q (2^s − 1)/2 · q over its coarse rows: the same
for every source, at most 1.5e-4 of a bKLD at N = 10,000 (s <= 2), below the gaps between
neighbours, so few more sources survive the screen to the exact re-rank.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import sparse

from rayfp.errors import ConfigError

# Measured on 1,000 sources of N = 10,000 (BENCHMARKS.md "Count columns"): shift <= 2 and 1/64
# exceptions held the columns in 52 MiB instead of 99 (uint16; 137 instead of 256 at D = 1,280),
# a lone query 4-12% quicker, with 5.4 sources re-ranked a query instead of 5.2 on real-shaped
# fingerprints (14 instead of 5 on bench_shards' close-packed synthetic ones).
MAX_SHIFT = 2  # a code is off by at most 1.5 counts; a row that needs more stays uint16
EXCEPTION_SHARE = 1 / 64  # exceptions a coarse row may hold (8 bytes each): <= 1/8 byte a count
ROW_BLOCK = 64  # rows encoded per task: the sources' row-major counts read once per block
# Rows summed in float32 before their sum joins a float64 one: float32's error bound is then
# γ_256 ≈ 1.5e-5 of the value, not γ_L ≈ 4e-3 for L = 73,000 nonzero entries, which let ~7x
# more sources through the screen to the exact re-rank (a query of real-shaped fingerprints).
SUM_BLOCK = 256
# Queries of a batch multiplied in one pass over the union of their rows: each count is read
# and widened once for all four (batches of 8 at 1,000 sources: 3.05 ms a query against 4.04
# one after another, bench_batches).
GROUP = 4
# Groups of a batch in one pass (group_products): a block of rows is read from memory once for
# both groups of a batch of 8. Wider groups (8 queries a row) vectorised worse (numba): slower.
GROUPS_A_PASS = 2

_COMPILED: dict[str, object] = {}


def threadsafe_numba(kernels: str):
    """numba with a thread-safe parallel layer (OpenMP or TBB, never workqueue: the service
    ranks from several threads), for the parallel loops of ``kernels``."""
    try:
        import numba
    except ImportError as exc:  # pragma: no cover - numba is a dependency
        raise ConfigError(f"{kernels} need numba: {exc}") from None
    numba.config.THREADING_LAYER = "threadsafe"
    return numba


def compile_loops() -> dict[str, object]:
    """The compiled loops (rayfp.search.column_loops), loaded once per process from numba's
    disk cache (compiled on the first use on a machine); a ConfigError where they cannot run."""
    if _COMPILED:
        return _COMPILED
    threadsafe_numba("int8-sparse and int8-columns")  # ConfigError without numba
    from rayfp.search import column_loops as loops

    histogram, encode, entries, group_split = (loops.histogram, loops.encode, loops.entries,
                                               loops.group_split)
    products, group_products = loops.products, loops.group_products
    # compiled now, not on a first query; a segment past 65,536 sources (int32 sources, see
    # source_type) compiles its own on first use, once per machine (numba's disk cache)
    try:
        u8, u16 = np.zeros((1, 8), np.uint8), np.zeros((1, 8), np.uint16)
        none, no_values = np.zeros(0, np.int64), np.zeros(0, np.float32)
        source, extra = np.zeros(0, np.uint16), np.zeros(0, np.uint16)
        products(u8, none, no_values, u16, none, no_values, none, np.zeros(2, np.int64), source,
                 extra, none, no_values, np.empty((1, 8), np.float32), np.empty((1, 8)))
        queries = np.zeros((GROUP, 1))
        group_products(u8, u16, queries, np.ones(GROUP), np.zeros(1, np.int64),
                       np.zeros(1, np.int64), np.zeros(2, np.int64), source, extra,
                       group_split(queries, 1), np.empty((1, 1, GROUP, 8), np.float32),
                       np.empty((1, 1, GROUP, 8)), np.empty((1, GROUP)),
                       np.empty(1, np.int64))
        for dtype in (np.uint8, np.uint16):
            whole = np.zeros((2, 3), dtype)
            encode(whole, np.array([0, 1, -1]), np.zeros(3, np.int64), np.zeros(4, np.int64),
                   np.empty((2, 2), np.uint8), np.empty((1, 2), np.uint16), source, extra)
        entries(np.zeros(1), 1.0, np.zeros(1, np.int64), np.zeros(1, np.int64),
                np.zeros(2, np.int64))
        for dtype in (np.uint8, np.uint16):
            histogram(np.zeros((2, 3), dtype), MAX_SHIFT + 1)
    except Exception as exc:  # no thread-safe layer (e.g. no libgomp): leave the kernels out
        raise ConfigError(f"int8-sparse and int8-columns cannot run here: {exc}") from None
    _COMPILED.update({name: getattr(loops, name) for name in (
        "histogram", "encode", "products", "entries", "group_products", "group_split")})
    return _COMPILED


def source_type(sources: int) -> type:
    """The exceptions' source index: uint16 while it fits (the common case: half the bytes),
    int32 for a segment of more sources."""
    return np.uint16 if sources <= np.iinfo(np.uint16).max + 1 else np.int32


def row_shifts(hist: np.ndarray, sources: int, *, max_shift: int = MAX_SHIFT,
               share: float = EXCEPTION_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the smallest shift whose exceptions are at most ``share`` of the sources, and
    whether any is (False: the row stays uint16). hist: (L, max_shift + 2) counts per shift
    needed (histogram's)."""
    above = hist[:, ::-1].cumsum(axis=1)[:, ::-1]  # above[:, k]: counts needing shift >= k
    fits = above[:, 1:] <= int(sources * share)  # (L, max_shift + 1): exceptions at shift s
    return fits.argmax(axis=1), fits.any(axis=1)


@dataclasses.dataclass
class ColumnCodes:
    """The counts of N sources as columns (rows = the D·B bins), each row coarse (uint8 codes
    c >> shift, exceptions exact beside them) or wide (uint16, exact); counts above uint16
    stay in the caller's float64 residual."""

    narrow: np.ndarray  # (Rn, N) uint8 codes
    wide: np.ndarray  # (Rw, N) uint16 whole counts, capped at 65,535
    where: np.ndarray  # (L,) int64: a row's position in narrow, or -1 - its position in wide
    shift: np.ndarray  # (L,) int64: a coarse row's shift (0 for wide rows)
    indptr: np.ndarray  # (L + 1,) int64: each row's exceptions
    # (E,) the exception's source: uint16 up to 65,536 sources (half the bytes a query reads
    # for its exceptions: a lone query 0.15 ms quicker at 1,000 sources), int32 beyond
    source: np.ndarray
    # (E,) uint16: its count minus 255 << shift (exact: a count is < 2^16); the count is
    # the code's reading plus extra − (2^shift − 1)/2
    extra: np.ndarray

    @classmethod
    def build(cls, whole: np.ndarray, *, max_shift: int = MAX_SHIFT,
              share: float = EXCEPTION_SHARE) -> ColumnCodes:
        """whole: (N, L) uint8 or uint16 counts, row-major (the index's own copy)."""
        if not 0 <= max_shift <= 7:  # 255 << 7 stays below uint16's 65,535
            raise ConfigError(f"max_shift must be in 0..7, got {max_shift}")
        compiled = compile_loops()
        whole = np.ascontiguousarray(whole)
        n, length = whole.shape
        hist = compiled["histogram"](whole, max_shift + 1)
        shift, coarse = row_shifts(hist, n, max_shift=max_shift, share=share)
        shift[~coarse] = 0
        where = np.empty(length, np.int64)
        where[coarse] = np.arange(int(coarse.sum()))
        where[~coarse] = -1 - np.arange(length - int(coarse.sum()))
        needs = hist[:, ::-1].cumsum(axis=1)[:, ::-1][np.arange(length), shift + 1] * coarse
        indptr = np.zeros(length + 1, np.int64)
        np.cumsum(needs, out=indptr[1:])
        codes = cls(np.empty((int(coarse.sum()), n), np.uint8),
                    np.empty((length - int(coarse.sum()), n), np.uint16), where, shift, indptr,
                    np.empty(indptr[-1], source_type(n)), np.empty(indptr[-1], np.uint16))
        compiled["encode"](whole, where, shift, indptr, codes.narrow, codes.wide, codes.source,
                           codes.extra)
        return codes

    @property
    def sources(self) -> int:
        return max(self.narrow.shape[1], self.wide.shape[1])

    @property
    def nbytes(self) -> int:
        return (self.narrow.nbytes + self.wide.nbytes + self.source.nbytes + self.extra.nbytes
                + self.where.nbytes + self.shift.nbytes + self.indptr.nbytes)

    def decoded(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) float64 the counts as a query reads them, and (L,) each row's largest error
        (for tests and the benchmarks; a query never makes this)."""
        coarse = self.where >= 0
        out = np.empty((self.sources, len(self.where)))
        shift = self.shift[coarse]
        out[:, coarse] = (self.narrow[self.where[coarse]].T * 2.0 ** shift
                          + (2.0 ** shift - 1) / 2)
        out[:, ~coarse] = self.wide[-1 - self.where[~coarse]].T
        rows = np.repeat(np.arange(len(self.where)), np.diff(self.indptr))
        out[self.source, rows] += self.extra - (2.0 ** self.shift[rows] - 1) / 2
        return out, np.where(coarse, (2.0 ** self.shift - 1) / 2, 0.0)

    def products(self, query: np.ndarray, scale: float, blocks: np.ndarray, parts: np.ndarray
                 ) -> tuple[np.ndarray, int, float]:
        """Σ_i query[i] / scale · c_s,i for every source, read from the codes, as (N,) float64
        sums of float64 sums of float32 sums, the most terms any float32 sum added (its error
        bound's L), and the codes' middle: add it to every sum; it is also the codes' error
        bound (both in units of scale). blocks: (P, N) float32 and parts (P, N) float64
        scratch, P the threads."""
        compiled = compile_loops()
        n_rows, n_values, w_rows, w_values, e_rows, e_values, middle = compiled["entries"](
            np.ascontiguousarray(query), float(scale), self.where, self.shift, self.indptr)
        compiled["products"](self.narrow, n_rows, n_values, self.wide, w_rows, w_values,
                             self.shift, self.indptr, self.source, self.extra, e_rows, e_values,
                             blocks, parts)
        longest = max(min(len(rows), SUM_BLOCK) for rows in (n_rows, w_rows, e_rows))
        return parts.sum(axis=0), longest, middle


    def group_products(self, queries: np.ndarray, scales: np.ndarray, blocks: np.ndarray,
                       parts: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """products for G groups of GROUP queries (G·GROUP, L) in one pass: (N, G·GROUP)
        sums, the most terms any float32 sum added, and each query's middle (G·GROUP,).
        scales: powers of two; blocks, parts: (P, G, GROUP, N)."""
        compiled = compile_loops()
        queries = np.ascontiguousarray(queries)
        n_parts = parts.shape[0]
        middles, longest = np.empty((n_parts, len(queries))), np.empty(n_parts, np.int64)
        compiled["group_products"](self.narrow, self.wide, queries,
                                   np.asarray(scales, np.float64), self.where, self.shift,
                                   self.indptr, self.source, self.extra,
                                   compiled["group_split"](queries, n_parts), blocks, parts,
                                   middles, longest)
        return (parts.sum(axis=0).reshape(-1, parts.shape[-1]).T, int(longest.max()),
                middles.sum(axis=0))


def whole_counts(low: np.ndarray, overflow: sparse.csr_matrix, dtype: type, block: int = 256
                 ) -> tuple[np.ndarray, sparse.csr_matrix]:
    """Row-major whole counts from int8 ``low`` (127 where the overflow holds count − 127) and
    the overflow, as ``dtype``, and the residual above dtype's range (float64 CSR, (N, L))."""
    top = np.iinfo(dtype).max
    whole = np.empty(low.shape, dtype)
    for start in range(0, low.shape[0], block):
        part = low[start:start + block].view(np.uint8).astype(dtype)
        extra = overflow[start:start + block].tocoo()
        if extra.nnz:
            part[extra.row, extra.col] = np.minimum(extra.data + 127, top).astype(dtype)
        whole[start:start + block] = part
    residual = overflow.copy()
    residual.data = np.maximum(residual.data + 127 - top, 0)
    residual.eliminate_zeros()
    return whole, residual
