"""The inner-product term of the linear form (docs/design.md §1.4), Σ_i q_i · c_s,i for every source s,
with a rigorous bound on its error, on the kernel this CPU runs fastest. rayfp.search.index screens
with these bounds and re-ranks the survivors exactly, so every kernel gives the same answers;
they differ in speed, memory and how many sources survive the screen:

- ``int8-gemm``: counts as int8 (1 byte; counts above 127 in a sparse overflow matrix) times the
  query written as 3 balanced base-254 integer digits, int32 sums (``torch._int_mm``): exact but
  for the last digit's remainder (~1e-8 of the value). Fast where the CPU has VNNI (AVX-512
  Xeons). Without VNNI the CPU kernel has no fast path: on an AVX2 EPYC it is an order of
  magnitude slower than the float32 product (BENCHMARKS.md).
- ``int8-onnxruntime``: the same int8 counts and digits, multiplied by ONNX Runtime's
  MatMulInteger (MLAS): counts read as uint8 against int8 digits, the form of the CPU's int8
  dot-product instructions (VNNI ``vpdpbusd`` and AMX on Xeons, ``vpmaddubsw`` on AVX2), exact
  int32 sums. A batch of 8 at 1,000 sources in half the time of ``torch._int_mm`` on the
  AVX-512 Xeon here.
- ``int8-packed``: the same int8 counts handed once to ONNX Runtime, which packs them for
  MLAS's integer GEMM; each call passes only the query's unsigned base-128 digits (3 rows per
  query), so a lone query streams the counts once and a batch costs little more than one.
  Costs a second copy of the counts (the row-major one stays for the exact re-rank).
- ``int8-sparse``: int8-packed, plus a column copy of the counts (D·B, N) for a lone query,
  which reads only the columns where the query is nonzero (a target's empty bins: most of a
  real fingerprint's). The columns are rayfp.search.columns' one-byte codes (uint16 rows only
  where no shift fits), summed in float32 256 rows at a time and in float64 beyond, under
  uint8-numba's bound for 256 terms plus the codes' own. Batches go to int8-packed's GEMM.
  Costs a third copy of the counts.
- ``int8-columns``: the whole counts row-major (the exact re-rank) and the column codes only;
  every query, alone or in a batch, reads its own nonzero columns.
- ``float32-torch`` and ``float32-numpy``: counts as float32 (4 bytes, exact below 2^24) times
  the query rounded to float32, one GEMV (FMA on any x86 or ARM CPU). The rounding of the query
  (u = 2^-24 each) and of the L-term sums (γ_L = L·u / (1 − L·u), any summation order) bound
  the error by ~3e-3 of the value for L = 51,200: loose, so a few more sources are re-ranked,
  but the GEMV reads one column where the digits need three (a 3-column float32 GEMM costs
  several GEMVs). The two differ only in whose BLAS runs the GEMV (torch's MKL or numpy's
  OpenBLAS).
- ``uint8-numba``: counts as uint8 (1 byte; counts above 255 in a sparse overflow matrix) times
  the float32 query, in a loop numba compiles for this CPU: each count is widened to float32 in
  registers, so a query reads a quarter of the float32 kernels' bytes. The same float32 error
  bound holds (the GEMV's rounding bound does not depend on the summation order). On CPUs
  without VNNI it is usually the fastest (memory-bound: a quarter of the bytes). A batch
  multiplies four queries per pass over a row (each count widened once for four of them).
  Measured times per kernel and CPU: BENCHMARKS.md.

`choose_kernel` times whole queries with each kernel on a slice of the index's own sources and
keeps the fastest; `rayfp serve` logs the choice and /v1/health reports it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Collection, Sequence

import numpy as np
from scipy import sparse

from rayfp.errors import ConfigError
from rayfp.registry import look_up
from rayfp.search import columns, cpu

INT8_MAX = 127
_INT32_MAX = 2**31 - 1
_FLOAT32_UNIT = 2.0**-24  # float32 unit roundoff
_FLOAT32_TINY = 2.0**-150  # half the smallest subnormal: the absolute rounding error floor
AUTO = "auto"
DIGIT = 127  # largest digit magnitude; the base is 2·DIGIT
DIGITS = 3  # remainder <= 0.5 · 254^-2 ≈ 8e-6 of the query's largest entry / 127
FLOAT_SLACK = 1e-12  # relative, covers float64 rounding when the digit products are combined


def configure_threads(threads: int) -> str:
    """Give the GEMM (torch's OpenMP pool) the cores and keep numpy/scipy BLAS at one
    thread: OpenBLAS threads spin-wait after each small call, which more than doubled torch's
    GEMM time on 2 cores when both pools had 2 threads. OpenMP's idle workers spin briefly
    (cpu.openmp_spin, set before torch loads libgomp); returns what spin is in effect."""
    global _ORT_THREADS
    spin = cpu.openmp_spin()
    _ORT_THREADS = threads  # int8-onnxruntime's sessions (made per thread count)
    import torch

    torch.set_num_threads(threads)
    _blas_threads(1)  # applied at once; float32-numpy raises it around its own GEMV
    return spin


def query_digits(queries: np.ndarray, digits: int = DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """Balanced base-(2·DIGIT) digits of each column of `queries` (L, T), all >= 0:
    queries[:, t] ≈ scale[t] · Σ_j digits[:, t, j] · base^-j, remainder <= scale/2 · base^-(J-1).
    Returns int8 digits (L, T, J) and float64 scales (T,)."""
    base = 2.0 * DIGIT
    top = queries.max(axis=0)
    scale = np.where(top > 0, top / DIGIT, 1.0)
    rest = queries / scale
    out = np.empty((*queries.shape, digits), np.int8)
    d = np.empty_like(rest)
    for j in range(digits):
        np.rint(rest, out=d)
        out[..., j] = d
        rest -= d
        rest *= base
    return out, scale


def _dimension_chunks(dim: int, bins: int, max_dimension_total: int) -> list[tuple[int, int]]:
    """Column ranges (whole dimensions) in which |Σ digit · count| <= DIGIT · Σ counts stays
    within int32; Σ counts over one dimension is at most the largest per-dimension total."""
    per_chunk = _INT32_MAX // (DIGIT * max(1, max_dimension_total))
    if per_chunk < 1:
        raise ConfigError(f"a dimension holds {max_dimension_total} samples: too many for an "
                          f"exact int32 sum")
    return [(lo * bins, min(dim, lo + per_chunk) * bins) for lo in range(0, dim, per_chunk)]


def split_counts(counts: np.ndarray, top: int, dtype: type = np.uint8
                 ) -> tuple[np.ndarray, sparse.csr_matrix]:
    """(N, D·B) counts >= 0 as (min(c, top) as ``dtype``, the rest c - top as a sparse float64
    CSR), the CSR made from its row pointers directly (COO's sort: 1.3x the time at the
    paper's N = 10,000 samples, where a third of the counts pass 127)."""
    low = np.minimum(counts, top).astype(dtype)
    above = counts > top
    indptr = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(above.sum(axis=1), out=indptr[1:])
    overflow = sparse.csr_matrix(((counts[above] - top).astype(np.float64),
                                  np.nonzero(above)[1], indptr), shape=counts.shape)
    return low, overflow


def rows_of(low: np.ndarray, rest: sparse.csr_matrix, rows: np.ndarray, dtype: type
            ) -> np.ndarray:
    """Whole counts of a few rows stored as dense ``low`` + sparse ``rest`` (every kernel that
    splits its counts so)."""
    out = low[rows].astype(dtype)
    for r, row in enumerate(rows):  # few rows, and most have no overflow at all
        a, b = rest.indptr[row], rest.indptr[row + 1]
        out[r, rest.indices[a:b]] += rest.data[a:b].astype(dtype)
    return out


def products_of(low: np.ndarray, rest: sparse.csr_matrix, rows: np.ndarray,
                weighted: np.ndarray) -> np.ndarray:
    """(len(rows), T) float64 Σ_i counts_s,i · weighted[t, i] of counts stored as rows_of's."""
    out = gather_products(low, np.asarray(rows, np.int64), weighted)
    if rest.nnz:
        out += rest[rows] @ weighted.T
    return out


def pairs_of(low: np.ndarray, rest: sparse.csr_matrix, rows: np.ndarray, targets: np.ndarray,
             weighted: np.ndarray) -> np.ndarray:
    """(len(rows),) float64 Σ_i counts_rows[j],i · weighted[targets[j], i] of counts stored as
    rows_of's: each row with its own target."""
    out = pair_products(low, rows, targets, weighted)
    if rest.nnz:
        part = rest[rows]
        for j in np.flatnonzero(np.diff(part.indptr)):  # rows with counts past ``low``
            a, b = part.indptr[j], part.indptr[j + 1]
            out[j] += part.data[a:b] @ weighted[targets[j], part.indices[a:b]]
    return out


class Int8Counts:
    """(N, D·B) counts as int8 + a sparse overflow, multiplied with ``torch._int_mm``."""

    kernel = "int8-gemm"
    MULTIPLIES_INT8_OVERFLOW = True  # every query's product reads the float64 overflow too

    def __init__(self, low: np.ndarray, overflow: sparse.csr_matrix, dim: int, bins: int,
                 max_dimension_total: int) -> None:
        self.low, self.overflow, self.dim, self.bins = low, overflow, dim, bins
        self.max_dimension_total = max_dimension_total
        self.chunks = _dimension_chunks(dim, bins, max_dimension_total)
        # One chunk (the usual case) shares the array's memory; several need contiguous copies.
        self.operands = [self._operand(low if len(self.chunks) == 1
                                       else np.ascontiguousarray(low[:, a:b]))
                         for a, b in self.chunks]

    @staticmethod
    def _operand(chunk: np.ndarray):
        """A chunk of the int8 counts as the GEMM takes it."""
        import torch  # the int8 GEMM; imported here so the rest of rayfp stays torch-free

        return torch.from_numpy(chunk)

    @classmethod
    def build(cls, counts: np.ndarray, dim: int, bins: int, max_dimension_total: int
              ) -> Int8Counts:
        """counts: (N, D·B) integers >= 0."""
        low, overflow = split_counts(counts, INT8_MAX)
        return cls(low.view(np.int8), overflow, dim, bins, max_dimension_total)

    def __len__(self) -> int:
        return len(self.low)

    @property
    def nbytes(self) -> int:
        copies = sum(op.nbytes for op in self.operands) if len(self.operands) > 1 else 0
        return (self.low.nbytes + copies + self.overflow.data.nbytes
                + self.overflow.indices.nbytes)

    def inner(self, queries: np.ndarray, count_total: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """(Σ_i q_i c_s,i, a bound on its error): two (N, T) float64 arrays from queries
        (D·B, T) >= 0; ``count_total`` (N,) is Σ_i c_s,i."""
        digits, scale = query_digits(queries)
        length, n_queries, n_digits = digits.shape
        exact = self.products(digits.reshape(length, n_queries * n_digits))
        powers = (2.0 * DIGIT) ** -np.arange(n_digits)
        combined = exact.reshape(len(self), n_queries, n_digits) @ powers * scale
        remainder = scale * 0.5 * (2.0 * DIGIT) ** -(n_digits - 1)
        return combined, np.outer(count_total, remainder) + FLOAT_SLACK * np.abs(combined)

    def products(self, digits: np.ndarray) -> np.ndarray:
        """Exact Σ_i digits[i, c] · counts_s[i]: (N, C) float64 from (D·B, C) int8 digits."""
        import torch

        exact = np.zeros((len(self), digits.shape[1]))
        for (a, b), low in zip(self.chunks, self.operands):
            exact += torch._int_mm(low, torch.from_numpy(np.ascontiguousarray(digits[a:b]))
                                   ).numpy()
        if self.overflow.nnz:  # counts above 127; integer products, exact in float64
            exact += self.overflow @ digits.astype(np.float64)
        return exact

    def counts(self, rows: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        return rows_of(self.low, self.overflow, rows, dtype)

    def exact_products(self, rows: np.ndarray, weighted: np.ndarray) -> np.ndarray:
        """(len(rows), T) float64 Σ_i counts_s,i · weighted[t, i] for the given rows."""
        return products_of(self.low, self.overflow, rows, weighted)

    def exact_pairs(self, rows: np.ndarray, targets: np.ndarray, weighted: np.ndarray
                    ) -> np.ndarray:
        """(len(rows),) float64 Σ_i counts_rows[j],i · weighted[targets[j], i]."""
        return pairs_of(self.low, self.overflow, rows, targets, weighted)

    def select(self, keep: np.ndarray) -> Int8Counts:
        return type(self)(self.low[keep], self.overflow[keep], self.dim, self.bins,
                          self.max_dimension_total)

    @classmethod
    def join(cls, parts: Sequence[Int8Counts]) -> Int8Counts:
        return cls(np.concatenate([p.low for p in parts]),
                   sparse.vstack([p.overflow for p in parts], format="csr"),
                   parts[0].dim, parts[0].bins,
                   max(p.max_dimension_total for p in parts))


_MATMUL_SESSIONS: dict[int, object] = {}
_ORT_THREADS: int | None = None  # configure_threads sets it; None: the machine's cores


def ranking_threads() -> int:
    """The threads a ranking may use (configure_threads'; the machine's cores before it)."""
    return _ORT_THREADS or os.cpu_count() or 1


@contextlib.contextmanager
def numba_threads(threads: int):
    """numba's parallel loops called inside run on at most ``threads`` threads (1: the calling
    thread alone); numba's setting is per calling thread, and this thread's comes back."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def run_on(threads: int, loop: Callable, *args) -> None:
    """A compiled parallel loop on at most ``threads`` of numba's threads (numba_threads)."""
    with numba_threads(threads):
        loop(*args)


def _probed(loop: Callable, *args) -> Callable | None:
    """A compiled parallel loop once a tiny call has run (compiling it), or None where it
    cannot (no thread-safe layer, e.g. no libgomp): the caller falls back to numpy."""
    try:
        loop(*args)
    except Exception:
        return None
    return loop


def _matmul_session():
    """One ONNX Runtime session computing MatMulInteger(A uint8, B int8) -> int32, per thread
    count: MLAS's integer GEMM (VNNI or AMX on Xeons, vpmaddubsw on AVX2 CPUs)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    threads = ranking_threads()
    session = _MATMUL_SESSIONS.get(threads)
    if session is None:
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "counts_times_digits",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, ["n", "l"]),
             helper.make_tensor_value_info("B", TensorProto.INT8, ["l", "c"])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, ["n", "c"])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        _MATMUL_SESSIONS[threads] = session
    return session


class Int8Onnx(Int8Counts):
    """The int8-gemm layout and digits, multiplied by ONNX Runtime's MatMulInteger instead of
    ``torch._int_mm``: the counts (0..127) are read as uint8 against the int8 digits, the form
    the CPU's int8 dot-product instructions take (u8 x s8), with exact int32 sums (a chunk's
    products stay below 2^31, as for int8-gemm)."""

    kernel = "int8-onnxruntime"
    spinning_pool = True  # ONNX Runtime's threads spin after each call (see lse_excess_terms)

    @staticmethod
    def _operand(chunk: np.ndarray) -> np.ndarray:
        import onnxruntime  # noqa: F401 - a missing library leaves this kernel out

        return chunk.view(np.uint8)  # counts 0..127: the same bytes as uint8

    def products(self, digits: np.ndarray) -> np.ndarray:
        session = _matmul_session()
        exact = np.zeros((len(self), digits.shape[1]))
        for (a, b), low in zip(self.chunks, self.operands):
            exact += session.run(None, {"A": low, "B": np.ascontiguousarray(digits[a:b])})[0]
        if self.overflow.nnz:
            exact += self.overflow @ digits.astype(np.float64)
        return exact


UNSIGNED_BASE = 128  # unsigned digits 0..127: u8 x s8 pairs stay below int16 saturation
PACKED_DIGITS = 3  # remainder < 128^-2 of the query's largest entry / 127 (one-sided)


def unsigned_digits(queries: np.ndarray, digits: int = PACKED_DIGITS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Floor base-128 digits of each column of `queries` (L, T), all >= 0:
    queries[:, t] = scale[t] · (Σ_j digits[t, j] · 128^-j + ρ), 0 <= ρ < 128^-(J-1).
    Returns uint8 digits (T, J, L) in 0..127 and float64 scales (T,). One-sided, so the
    products give a lower bound and lower + scale · 128^-(J-1) · Σ counts an upper one
    (rest - floor(rest) and the x128 are exact in float64; queries / scale rounds by an ulp,
    which FLOAT_SLACK covers)."""
    columns = np.ascontiguousarray(queries.T)
    out = np.empty((queries.shape[1], digits, queries.shape[0]), np.uint8)
    loop = _digits_loop() if digits == PACKED_DIGITS else _digits_numpy
    return out, loop(columns, out)


_DIGITS_LOOP = None


def _digits_loop():
    """numba's one pass over each query for its scale, one writing all three digits (numpy's
    floor/subtract/scale passes over a batch of 8 queries took longer than the product itself;
    a pass per digit, 1.4x as long as this); numpy without numba (the light client)."""
    global _DIGITS_LOOP
    if _DIGITS_LOOP is None:
        try:
            import numba
        except ImportError:
            _DIGITS_LOOP = _digits_numpy
            return _DIGITS_LOOP

        @numba.njit(cache=True, nogil=True)
        def loop(queries, out):  # pragma: no cover - compiled
            scale = np.empty(queries.shape[0])
            for t in range(queries.shape[0]):
                top = 0.0
                for i in range(queries.shape[1]):
                    top = max(top, queries[t, i])
                scale[t] = top / DIGIT if top > 0 else 1.0
                inverse = 1.0 / scale[t]
                first, second, third = out[t, 0], out[t, 1], out[t, 2]
                for i in range(queries.shape[1]):  # vectorised: the digits stay in registers
                    rest = min(queries[t, i] * inverse, float(DIGIT))
                    d = np.floor(rest)
                    first[i] = np.uint8(d)
                    rest = (rest - d) * UNSIGNED_BASE
                    d = np.floor(rest)
                    second[i] = np.uint8(d)
                    third[i] = np.uint8(np.floor((rest - d) * UNSIGNED_BASE))
            return scale

        _DIGITS_LOOP = loop
    return _DIGITS_LOOP


def _digits_numpy(queries: np.ndarray, out: np.ndarray) -> np.ndarray:
    """queries (T, L) -> scales (T,); any number of digits into out (T, J, L)."""
    top = queries.max(axis=1)
    scale = np.where(top > 0, top / DIGIT, 1.0)
    rest = np.minimum(queries * (1.0 / scale)[:, None], DIGIT)
    for j in range(out.shape[1]):
        d = np.floor(rest)
        out[:, j] = d
        rest = (rest - d) * UNSIGNED_BASE
    return scale


def _transposed(chunk: np.ndarray, block: int = 256) -> np.ndarray:
    """A C-contiguous transpose, a block of rows at a time (np.ascontiguousarray(chunk.T)
    took 3.5 s for 10,000 sources: every write a cache miss)."""
    out = np.empty(chunk.shape[::-1], chunk.dtype)
    for start in range(0, chunk.shape[0], block):
        out[:, start:start + block] = chunk[start:start + block].T
    return out


def _packed_session(chunk: np.ndarray, threads: int):
    """An ONNX Runtime session computing MatMulInteger(A uint8 (C, l), B) with B = this
    chunk's counts transposed (l, N) int8, given as an initializer: ONNX Runtime packs it once
    for MLAS's integer GEMM (VNNI/AMX on Xeons, vpmaddubsw on AVX2) and frees our copy."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    length, n = chunk.shape[1], chunk.shape[0]
    # The counts reach the session as an in-memory OrtValue (no 2 GiB protobuf, no copy
    # into it): the model names them as external data that add_external_initializers supplies.
    counts = TensorProto(name="B", data_type=TensorProto.INT8, dims=[length, n],
                         data_location=TensorProto.EXTERNAL)
    counts.external_data.add(key="location", value="B.bin")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "digits_times_counts",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["c", length])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["c", n])],
        initializer=[counts])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The OrtValue (and the array under it) must outlive the session's creation, which packs
    # a copy; afterwards ONNX Runtime holds only the packed one.
    transposed = ort.OrtValue.ortvalue_from_numpy(_transposed(chunk))
    options.add_external_initializers(["B"], [transposed])
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    del transposed
    return session


class Int8Packed(Int8Counts):
    """The int8 counts handed to ONNX Runtime once, packed for its integer GEMM; a query is the
    per-call operand, as unsigned base-128 digits. A lone query then streams the packed counts
    once (memory-bound, at the speed of reading them) and a batch of T queries costs little
    more than one (3·T rows of digits against the same stream). The packed copy doubles the
    index's memory: the row-major int8 counts stay for the exact re-rank.

    Exact as int8-gemm: digits 0..127 times counts 0..127 (pairs below int16 saturation, where
    the CPU has no VNNI), int32 sums kept below 2^31 by the dimension chunks."""

    kernel = "int8-packed"
    spinning_pool = True
    SMALL = 64  # sources below which a segment's product runs on one thread (registrations)

    def __init__(self, low: np.ndarray, overflow: sparse.csr_matrix, dim: int, bins: int,
                 max_dimension_total: int) -> None:
        import onnxruntime  # noqa: F401 - a missing library leaves this kernel out

        super().__init__(low, overflow, dim, bins, max_dimension_total)
        self._sessions: dict[int, list] = {}  # per thread count; see prepare

    def prepare(self) -> None:
        """Pack now (1.7 s for 10,000 sources): the index calls this for the segments it is
        built from, so the first query does not pay, while the parts select() and join() make
        on the way to a merged segment are never packed. Another thread count, or a copy from
        a pickle, packs on first use."""
        self._sessions_now()

    @staticmethod
    def _operand(chunk: np.ndarray) -> np.ndarray:
        return chunk  # the sessions (per thread count) are made from the chunks

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sessions": {}}  # sessions do not pickle: packed on use

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.low.nbytes  # + ONNX Runtime's packed copy

    def _sessions_now(self) -> list:
        threads = ranking_threads()
        sessions = self._sessions.get(threads)
        if sessions is None:
            # A small segment (recent registrations) multiplies on one thread: a pool of its
            # own would spin beside the big segment's after each call, and a batch over both
            # took twice as long.
            own = threads if len(self) >= self.SMALL else 1
            sessions = self._sessions[threads] = [_packed_session(chunk, own)
                                                  for chunk in self.operands]
        return sessions

    def inner(self, queries: np.ndarray, count_total: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        digits, scale = unsigned_digits(queries)
        n_queries, n_digits, length = digits.shape
        rows = digits.reshape(n_queries * n_digits, length)
        sessions = self._sessions_now()
        if len(sessions) == 1:  # the usual case: no zeroed sum to add into
            exact = sessions[0].run(None, {"A": rows})[0].T.astype(np.float64)
        else:
            exact = np.zeros((n_queries * n_digits, len(self)))
            for (a, b), session in zip(self.chunks, sessions):
                exact += session.run(None, {"A": np.ascontiguousarray(rows[:, a:b])})[0]
            exact = exact.T
        if self.overflow.nnz:  # counts above 127; integer products, exact in float64
            exact += self.overflow @ rows.T.astype(np.float64)
        powers = float(UNSIGNED_BASE) ** -np.arange(n_digits)
        lower = exact.reshape(len(self), n_queries, n_digits) @ powers * scale
        half = np.outer(count_total, scale * 0.5 * float(UNSIGNED_BASE) ** -(n_digits - 1))
        approx = lower + half
        return approx, half + FLOAT_SLACK * np.abs(approx)


COLUMN_DTYPES = (np.uint8, np.uint16)  # the row-major whole counts: the narrowest that holds them


def _narrowest(peak: int) -> type:
    """The narrowest of COLUMN_DTYPES that holds counts up to ``peak`` (uint16 beyond: the rest
    is a float64 residual)."""
    return next((d for d in COLUMN_DTYPES if peak <= np.iinfo(d).max), COLUMN_DTYPES[-1])


# A batch's last queries from this many on make a group with the last repeated (_SparseColumns)
PAD_GROUP_FROM = 3


class _SparseColumns:
    """The counts once more as columns (D·B, N), for queries that read only the columns where
    they are nonzero. A target's histogram is zero wherever none of its samples fell (51-80% of
    the bins of the demo's real fingerprints, 22% of bench_shards' default synthetic ones), so
    a query reads that much less. The columns are rayfp.search.columns' codes: one byte a count
    where a coarse code's error stays within a few counts, two where it cannot; the query's
    nonzero entries, rounded to float32, multiply them in numba's loop, with uint8-numba's
    float32 bound over those L terms plus the codes' own. A kernel mixing this in gives its
    row-major whole counts and their float64 residual above uint16 (_whole_rows)."""

    SMALL = 64  # sources below which a product runs on one thread (registrations)
    CODES = {"max_shift": columns.MAX_SHIFT, "share": columns.EXCEPTION_SHARE}

    def __init__(self, *args, **kwargs) -> None:
        columns.compile_loops()  # ConfigError here if this machine cannot run it
        # (codes, residual above uint16), made in prepare or on first use
        self._columns: tuple[columns.ColumnCodes, sparse.csr_matrix] | None = None
        super().__init__(*args, **kwargs)

    def _whole_rows(self) -> tuple[np.ndarray, sparse.csr_matrix]:
        raise NotImplementedError

    def _columns_nbytes(self, before: int) -> int:
        """The codes' bytes once made; ``before`` then (GET /v1/health reads nbytes: it must
        not make them)."""
        return before if self._columns is None else self._columns[0].nbytes

    def prepare(self) -> None:
        getattr(super(), "prepare", lambda: None)()  # int8-packed packs its copy too
        self._columns_now()

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_columns": None}  # remade on use

    def _columns_now(self) -> tuple[columns.ColumnCodes, sparse.csr_matrix]:
        if self._columns is None:  # two threads may both make them: the same arrays either way
            whole, residual = self._whole_rows()
            self._columns = columns.ColumnCodes.build(whole, **self.CODES), residual
        return self._columns

    def _sparse_inner(self, queries: np.ndarray, count_total: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """As inner, each query over its own nonzero columns: alone, or GROUP of a batch at a
        time over the union of theirs (each column row read once for the group)."""
        codes, residual = self._columns_now()
        scale = _power_of_two_scale(queries)
        threads = ranking_threads()
        shape = (threads if len(self) >= self.SMALL else 1, len(self))
        with numba_threads(shape[0]):
            approx, error = self._column_products(codes, queries, scale, count_total, shape)
        if residual.nnz:  # counts above 65,535: few integers times the query, float64
            approx = approx + residual @ queries
        return approx, error + FLOAT_SLACK * np.abs(approx)

    def _column_products(self, codes: columns.ColumnCodes, queries: np.ndarray,
                         scale: np.ndarray, count_total: np.ndarray, shape: tuple[int, int]
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's products over the codes and their error bounds, (N, T) each: groups
        of GROUP queries (a batch's last three too), GROUPS_A_PASS groups a pass over the
        codes, the rest alone; shape: (P threads, N)."""
        n_queries = queries.shape[1]
        approx = np.empty((len(self), n_queries))
        error = np.empty_like(approx)
        # the tiny term counts each product's roundings: exceptions add at most one a count
        ceiling = 2 * count_total

        def settle(at: slice, sums: np.ndarray, terms: int, middles: np.ndarray) -> None:
            # float32 sums of at most ``terms`` products, added in float64 (FLOAT_SLACK covers
            # that: < 2^-53 per sum of L / SUM_BLOCK + P of them)
            approx[:, at] = (sums + middles) * scale[at]
            error[:, at] = (_float32_error(sums * scale[at], terms, ceiling, scale[at])
                            + middles * scale[at])

        group = columns.GROUP
        # A batch's last 3 queries make one group too, the last one repeated: one pass over
        # the union of their rows beats a pass each. A search of 3 at 1,000 sources (AVX2
        # EPYC, one process, alternating): 15.7-17.7 against 20.7-22.9 ms on one thread,
        # 12.8-15.8 against 13.6-16.4 on two. Two queries gained nothing on one thread and
        # lost 10-20% on two; one goes alone (4-5 ms against a group's 11-13).
        grouped = (n_queries if n_queries % group >= PAD_GROUP_FROM
                   else n_queries - n_queries % group)
        widest = group * columns.GROUPS_A_PASS
        for j in range(0, grouped, widest):
            # (G·GROUP, L): rows of the index's (T, L) query table, as they lie
            members = min(widest, grouped - j)
            n_groups = -(-members // group)
            take = [*range(j, j + members)] + [j + members - 1] * (n_groups * group - members)
            rows = queries.T[j:j + members] if members == len(take) else queries.T[take]
            blocks = np.empty((shape[0], n_groups, group, shape[1]), np.float32)
            parts = np.empty((shape[0], n_groups, group, shape[1]))
            sums, terms, middles = codes.group_products(rows, scale[take], blocks, parts)
            settle(slice(j, j + members), sums[:, :members], terms, middles[:members])
        if grouped < n_queries:  # a lone query, or a batch's last one or two
            blocks, parts = np.empty(shape, np.float32), np.empty(shape)
        for j in range(grouped, n_queries):
            sums, terms, middle = codes.products(queries[:, j], scale[j], blocks, parts)
            settle(slice(j, j + 1), sums[:, None], terms, np.array([middle]))
        return approx, error


class Int8Columns(_SparseColumns):
    """The whole counts row-major (uint8, or uint16 once a count passes 255: the exact re-rank)
    and as column codes (_SparseColumns); every query, alone or in a batch, reads only its
    nonzero columns. Where queries are sparse enough, a batch run one query after another
    outruns the integer GEMM (10,000 sources, 40% nonzero, AVX2 EPYC: BENCHMARKS.md). At the
    paper's N = 10,000 a third of the counts pass 127: int8 + a float64 overflow held them in
    1.9 GB at 10,000 sources of bench_batches --samples 10000, uint16 in 1.0 GB; the codes
    halve the columns' share of that."""

    kernel = "int8-columns"

    def __init__(self, whole: np.ndarray, residual: sparse.csr_matrix, dim: int, bins: int
                 ) -> None:
        super().__init__()
        self.whole, self.residual, self.dim, self.bins = whole, residual, dim, bins

    @classmethod
    def build(cls, counts: np.ndarray, dim: int, bins: int, max_dimension_total: int
              ) -> Int8Columns:
        """counts: (N, D·B) integers >= 0; above 65,535 the float64 residual holds the rest."""
        dtype = _narrowest(int(counts.max(initial=0)))
        return cls(*split_counts(counts, np.iinfo(dtype).max, dtype), dim, bins)

    def __len__(self) -> int:
        return len(self.whole)

    @property
    def nbytes(self) -> int:  # row-major, the residual, the columns (or the most they take)
        return (self.whole.nbytes + self.residual.data.nbytes + self.residual.indices.nbytes
                + self._columns_nbytes(self.whole.size * 2))

    def _whole_rows(self) -> tuple[np.ndarray, sparse.csr_matrix]:
        return self.whole, self.residual

    def inner(self, queries: np.ndarray, count_total: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        return self._sparse_inner(queries, count_total)

    def counts(self, rows: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        return rows_of(self.whole, self.residual, rows, dtype)

    def exact_products(self, rows: np.ndarray, weighted: np.ndarray) -> np.ndarray:
        """(len(rows), T) float64 Σ_i counts_s,i · weighted[t, i] for the given rows."""
        return products_of(self.whole, self.residual, rows, weighted)

    def exact_pairs(self, rows: np.ndarray, targets: np.ndarray, weighted: np.ndarray
                    ) -> np.ndarray:
        return pairs_of(self.whole, self.residual, rows, targets, weighted)

    def select(self, keep: np.ndarray) -> Int8Columns:
        return type(self)(self.whole[keep], self.residual[keep], self.dim, self.bins)

    @classmethod
    def join(cls, parts: Sequence[Int8Columns]) -> Int8Columns:
        # uint8 parts widen to uint16 beside a uint16 one (numpy's promotion)
        return cls(np.concatenate([p.whole for p in parts]),
                   sparse.vstack([p.residual for p in parts], format="csr"),
                   parts[0].dim, parts[0].bins)


class Int8Sparse(_SparseColumns, Int8Packed):
    """int8-packed, plus the whole counts as columns (_SparseColumns) for a lone query, which
    reads only those where it is nonzero; a batch is int8-packed's GEMM, where MLAS's integer
    kernel outruns a float32 pass per query (dense queries, or the Xeon's VNNI/AMX). A third
    copy of the counts (row-major, packed, columns)."""

    kernel = "int8-sparse"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # once: nbytes is read on every GET /v1/health, and the overflow's scan took 50 ms at
        # 10,000 sources of N = 10,000 samples
        self._column_type = _narrowest(INT8_MAX + (int(self.overflow.data.max())
                                                   if self.overflow.nnz else 0))

    @property
    def nbytes(self) -> int:  # + the columns (or the most they take)
        return super().nbytes + self._columns_nbytes(
            self.low.size * np.dtype(self._column_type).itemsize)

    def _whole_rows(self) -> tuple[np.ndarray, sparse.csr_matrix]:
        return columns.whole_counts(self.low, self.overflow, self._column_type)

    def inner(self, queries: np.ndarray, count_total: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        if queries.shape[1] != 1:
            return super().inner(queries, count_total)
        return self._sparse_inner(queries, count_total)


# Row-target products from which the exact re-rank runs on every thread: a batch's ~50
# candidates x 4 targets (10 M products at D·B = 51,200) took 1.96 ms on one thread, 0.83 on
# two with four targets a pass (AVX2 EPYC, one process); whole batches of 4, 0.26 ms a query
# quicker (3.13 against 2.87). Below (a lone query's ~5 candidates) one thread: no gain, and no
# pool woken beside another's spin (ONNX Runtime's, after its GEMM).
GATHER_PARALLEL_FROM = 250_000
_RERANK: dict[str, Callable] | None = None  # the re-rank's loops, made once per process


def _compiled_rerank() -> dict[str, Callable] | None:
    """numba's compiled re-rank loops (None without numba): ``gather``, each candidate row
    read once per four targets, and ``pairs``, each row with its own target; rows or pairs
    split over the threads."""
    try:
        numba = columns.threadsafe_numba("the exact re-rank")
    except ConfigError:  # the light client (no rayfp[site]/[cloud]): numpy's product
        return None

    @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
    def gather(matrix, rows, weighted, out):  # pragma: no cover - compiled
        n_targets = weighted.shape[0]
        for r in numba.prange(rows.shape[0]):
            row = matrix[rows[r]]
            t = 0
            while t + 4 <= n_targets:
                q0, q1, q2, q3 = weighted[t], weighted[t + 1], weighted[t + 2], weighted[t + 3]
                a0 = a1 = a2 = a3 = 0.0
                for i in range(row.shape[0]):
                    x = np.float64(row[i])
                    a0 += x * q0[i]
                    a1 += x * q1[i]
                    a2 += x * q2[i]
                    a3 += x * q3[i]
                out[r, t], out[r, t + 1], out[r, t + 2], out[r, t + 3] = a0, a1, a2, a3
                t += 4
            while t < n_targets:
                query = weighted[t]
                total = 0.0
                for i in range(row.shape[0]):
                    total += np.float64(row[i]) * query[i]
                out[r, t] = total
                t += 1

    @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
    def pairs(matrix, rows, targets, weighted, out):  # pragma: no cover - compiled
        for j in numba.prange(rows.shape[0]):
            row, query = matrix[rows[j]], weighted[targets[j]]
            total = 0.0
            for i in range(row.shape[0]):
                total += np.float64(row[i]) * query[i]
            out[j] = total

    loops = {"gather": _probed(gather, np.ones((2, 8), np.uint8), np.arange(2), np.ones((5, 8)),
                               np.empty((2, 5))),
             "pairs": _probed(pairs, np.ones((2, 8), np.uint8), np.arange(2),
                              np.zeros(2, np.int64), np.ones((1, 8)), np.empty(2))}
    return None if None in loops.values() else loops


def _rerank(name: str, matrix: np.ndarray, rows: np.ndarray, *args: np.ndarray,
            out: np.ndarray) -> np.ndarray:
    """Run the re-rank loop ``name`` into ``out``: compiled, on every ranking thread from
    GATHER_PARALLEL_FROM products, or numpy's (the light client)."""
    global _RERANK
    if _RERANK is None:
        _RERANK = _compiled_rerank() or {"gather": _gather_numpy, "pairs": _pairs_numpy}
    loop = _RERANK[name]
    if loop in (_gather_numpy, _pairs_numpy):
        loop(matrix, rows, *args, out)
        return out
    wide = out.size * matrix.shape[1] >= GATHER_PARALLEL_FROM
    run_on(min(len(rows), ranking_threads()) if wide else 1, loop, matrix, rows, *args, out)
    return out


def gather_products(matrix: np.ndarray, rows: np.ndarray, weighted: np.ndarray) -> np.ndarray:
    """(len(rows), T) float64 Σ_i matrix[row, i] · weighted[t, i], each count widened to
    float64 in registers: the exact re-rank of a query's few candidates, without the
    (rows x D·B) float64 copy of their counts (a visible share of a query's time). Sums in any
    order are float64 sums of exact products, as the re-rank assumes."""
    return _rerank("gather", matrix, rows, np.ascontiguousarray(weighted, np.float64),
                   out=np.empty((len(rows), weighted.shape[0])))


def _gather_numpy(matrix: np.ndarray, rows: np.ndarray, weighted: np.ndarray,
                  out: np.ndarray) -> None:
    out[:] = matrix[rows].astype(np.float64) @ weighted.T


def pair_products(matrix: np.ndarray, rows: np.ndarray, targets: np.ndarray,
                  weighted: np.ndarray) -> np.ndarray:
    """(len(rows),) float64 Σ_i matrix[rows[j], i] · weighted[targets[j], i]: the exact
    re-rank of a batch whose queries share few candidates, every query's candidates in one
    call (8 calls of gather_products, one a query, took 2.4 ms of a batch of 8's 21 at 1,000
    sources, AVX2 EPYC). Float64 sums of exact products, as gather_products'."""
    return _rerank("pairs", matrix, np.asarray(rows, np.int64), np.asarray(targets, np.int64),
                   np.ascontiguousarray(weighted, np.float64), out=np.empty(len(rows)))


def _pairs_numpy(matrix: np.ndarray, rows: np.ndarray, targets: np.ndarray,
                 weighted: np.ndarray, out: np.ndarray) -> None:
    for j, (row, target) in enumerate(zip(rows, targets)):
        out[j] = matrix[row].astype(np.float64) @ weighted[target]


_WEIGHTED = None


def weighted_query(counts: np.ndarray, n: int, weights: np.ndarray, out: np.ndarray) -> float:
    """Write w_d · counts[d, b] / n into ``out`` (D·B,) and return Σ_d w_d Σ_b p log p, p =
    counts / n: a target's side of the linear form in one compiled pass (numpy without numba).
    Σ_b p log p = (Σ_b c log c − log n · Σ_b c) / n, with c log c from plogp_counts' table."""
    global _WEIGHTED
    if _WEIGHTED is None:
        try:
            import numba
        except ImportError:
            _WEIGHTED = _weighted_numpy
        else:
            @numba.njit(cache=True, nogil=True)
            def weighted(counts, n, weights, table, out):  # pragma: no cover - compiled
                dim, bins = counts.shape
                log_n = np.log(n)
                total = 0.0
                for d in range(dim):
                    w = weights[d]
                    xlogx = 0.0
                    mass = 0.0
                    for b in range(bins):
                        c = counts[d, b]
                        out[d * bins + b] = (c / n) * w
                        xlogx += table[c] if c < table.shape[0] else c * np.log(c) if c else 0.0
                        mass += c
                    total += w * ((xlogx - log_n * mass) / n)
                return total

            _WEIGHTED = weighted
    from rayfp.core.distance import xlogx_table

    return float(_WEIGHTED(counts, float(n), weights, xlogx_table(int(counts.max(initial=0))),
                           out))


def _weighted_numpy(counts, n, weights, table, out) -> float:
    from rayfp.core.distance import plogp_counts

    np.multiply(counts / n, weights[:, None], out=out.reshape(counts.shape))
    return float(weights @ plogp_counts(counts, int(n)))


_EXCESS = None
# Table entries (N·D) from which the screen's LSE terms are summed on every thread, where no
# other pool spins beside them (``spinning_pool`` kernels keep one thread: a parallel loop next
# to ONNX Runtime's spinning pool took 4 ms, not 0.1, for 1,000 sources). A lone query at
# 10,000 sources read the 20 MB table in 1.84 ms on one thread (AVX2 EPYC).
LSE_PARALLEL_FROM = 250_000


def _excess_loop():
    try:
        numba = columns.threadsafe_numba("the screen's LSE terms")
    except ConfigError:  # the light client: numpy's product
        return None

    @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
    def terms(excess, weights, out):  # pragma: no cover - compiled
        for s in numba.prange(excess.shape[0]):
            row = excess[s]
            for t in range(weights.shape[0]):
                w = weights[t]
                total = np.float32(0)
                for d in range(row.shape[0]):
                    total += row[d] * w[d]
                out[s, t] = total

    return _probed(terms, np.ones((2, 3), np.float32), np.ones((1, 3), np.float32),
                   np.empty((2, 1), np.float32))


def lse_excess_terms(excess: np.ndarray, weights: np.ndarray, *, threads: int = 1
                     ) -> np.ndarray:
    """(N, T) float64 of Σ_d weights[d, t] · excess[s, d] in float32 (the screen's share of
    the LSE term; rayfp.search.index bounds its rounding): half the bytes of the float64
    table. On up to ``threads`` threads from LSE_PARALLEL_FROM entries, else one."""
    global _EXCESS
    if _EXCESS is None:
        _EXCESS = _excess_loop() or _excess_numpy
    out = np.empty((excess.shape[0], weights.shape[1]), np.float32)
    weights = np.ascontiguousarray(weights.T, dtype=np.float32)
    if _EXCESS is _excess_numpy:
        _EXCESS(excess, weights, out)
    else:
        run_on(threads if excess.size >= LSE_PARALLEL_FROM else 1, _EXCESS, excess, weights,
               out)
    return out.astype(np.float64)


def _excess_numpy(excess: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    np.matmul(excess, weights.T, out=out)


def lse_excess_error(excess_peak: np.ndarray, weight_sums: np.ndarray, dim: int) -> np.ndarray:
    """(N, T) bound on lse_excess_terms' error against the float64 sums: the excess rounded to
    float32 (u each), the weights too (u, or 2^-150 below float32's range), and a D-term
    float32 sum in any order (γ_D), all against Σ_d w_d |excess_d| <= peak · Σ_d w_d; doubled
    for the products of the (1 + u) factors."""
    gamma = dim * _FLOAT32_UNIT / (1 - dim * _FLOAT32_UNIT)
    relative = 2 * (gamma + 3 * _FLOAT32_UNIT)
    return (np.outer(excess_peak, weight_sums) * relative
            + dim * 2 * _FLOAT32_TINY * (excess_peak[:, None] + 1))


_BLAS = None  # threadpoolctl's controller, made once (scanning the loaded libraries is slow)


def _blas_threads(threads: int):
    """A context in which numpy's BLAS uses ``threads`` threads (the replica keeps it at 1
    otherwise, see configure_threads); cheap to enter."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=threads, user_api="blas")


class Float32Screen:
    """(N, D·B) counts as float32 (exact below 2^24), one float32 GEMV per query, through
    torch's BLAS (MKL on x86 builds). Float32Numpy is the same through numpy's (OpenBLAS): which
    is faster depends on the CPU and the batch size, so both are candidates."""

    kernel = "float32-torch"

    def __init__(self, matrix: np.ndarray, dim: int, bins: int) -> None:
        self.matrix, self.dim, self.bins = matrix, dim, bins

    def _gemm(self, scaled: np.ndarray) -> np.ndarray:
        import torch

        # 'highest' keeps the GEMV in float32 (no bf16 or TF32 shortcuts) as the bound assumes.
        torch.set_float32_matmul_precision("highest")
        return (torch.from_numpy(self.matrix) @ torch.from_numpy(scaled)).numpy()

    @classmethod
    def build(cls, counts: np.ndarray, dim: int, bins: int, max_dimension_total: int
              ) -> Float32Screen:
        if counts.size and counts.max() >= 2**24:
            raise ConfigError(f"a count of {int(counts.max())} is not exact in float32")
        return cls(np.ascontiguousarray(counts, dtype=np.float32), dim, bins)

    def __len__(self) -> int:
        return len(self.matrix)

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes

    def inner(self, queries: np.ndarray, count_total: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """As Int8Counts.inner. The query is scaled by a power of two (exact) so its largest
        entry is in [0.5, 1): underflow can only touch entries 2^126 times smaller, and the
        absolute floor below covers them."""
        scale = _power_of_two_scale(queries)
        scaled = np.ascontiguousarray(queries / scale, dtype=np.float32)
        approx = self._gemm(scaled).astype(np.float64) * scale
        error = _float32_error(approx, self.matrix.shape[1], count_total, scale)
        return approx, error + FLOAT_SLACK * np.abs(approx)

    def counts(self, rows: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        return self.matrix[rows].astype(dtype)

    def exact_products(self, rows: np.ndarray, weighted: np.ndarray) -> np.ndarray:
        return gather_products(self.matrix, np.asarray(rows, np.int64), weighted)

    def exact_pairs(self, rows: np.ndarray, targets: np.ndarray, weighted: np.ndarray
                    ) -> np.ndarray:
        return pair_products(self.matrix, rows, targets, weighted)

    def select(self, keep: np.ndarray) -> Float32Screen:
        return type(self)(self.matrix[keep], self.dim, self.bins)

    @classmethod
    def join(cls, parts: Sequence[Float32Screen]) -> Float32Screen:
        return cls(np.concatenate([p.matrix for p in parts]), parts[0].dim, parts[0].bins)


class Float32Numpy(Float32Screen):
    """Float32Screen through numpy's BLAS, with as many threads as torch has (all usable
    cores when torch is not loaded: this kernel never loads it, so light commands use it)."""

    kernel = "float32-numpy"

    def _gemm(self, scaled: np.ndarray) -> np.ndarray:
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else len(os.sched_getaffinity(0))
        with _blas_threads(threads):
            return self.matrix @ scaled


def _power_of_two_scale(queries: np.ndarray) -> np.ndarray:
    """(T,) powers of two that bring each query column's largest entry into [0.5, 1): dividing
    by them is exact, and underflow can only touch entries 2^126 times smaller."""
    top = queries.max(axis=0)
    return np.exp2(np.ceil(np.log2(np.where(top > 0, top, 1.0))))


def _float32_error(approx: np.ndarray, length: int, count_total: np.ndarray, scale: np.ndarray
                   ) -> np.ndarray:
    """The error bound of a float32 product of L-term rows of counts with the query rounded to
    float32 (scaled by ``scale``). |fl(q)·c − q·c| <= u·q·c + tiny·c per term; the sums add γ_L
    of Σ |fl(q)|·c, in any summation order. With q, c >= 0, Σ q·c <= approx / (1 − g), so the
    bound follows from approx alone; underflow: each of the Σ c query roundings and nonzero
    products loses <= tiny."""
    gamma = length * _FLOAT32_UNIT / (1 - length * _FLOAT32_UNIT)
    g = _FLOAT32_UNIT + gamma * (1 + _FLOAT32_UNIT)
    return ((g / (1 - g)) * np.abs(approx)
            + np.outer(count_total * (1 + gamma), 2 * _FLOAT32_TINY * scale))


_UINT8_LOOP = None  # the compiled loop, made once per process
# Queries multiplied in one pass over a row by uint8-numba. A lone query is bound by memory;
# groups of four nearly halved a batch's time against one query at a time, and groups of
# eight or tiling the columns to keep the queries in L1 gained nothing more (AVX2 EPYC).
QUERY_GROUP = 4


def _uint8_loop():
    """numba's compiled (N, L) uint8 x (T, L) float32 -> (N, T) float32 loop. Reassociation lets
    LLVM vectorise the sums (any order keeps the bound); the parallel layer must be thread-safe
    (the service ranks from several threads), so it is OpenMP or TBB, never workqueue."""
    global _UINT8_LOOP
    if _UINT8_LOOP is None:
        numba = columns.threadsafe_numba("uint8-numba")

        @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
        def loop(counts, queries, out):  # pragma: no cover - compiled
            n_queries = queries.shape[0]
            grouped = n_queries - n_queries % 4
            for s in numba.prange(counts.shape[0]):
                row = counts[s]
                # Four queries per pass over the row: each count is widened once for four
                # FMAs. A lone query is bound by memory, a batch by the widening and the
                # query's loads; see QUERY_GROUP.
                for t in range(0, grouped, 4):
                    q0, q1, q2, q3 = queries[t], queries[t + 1], queries[t + 2], queries[t + 3]
                    a0 = np.float32(0)
                    a1 = np.float32(0)
                    a2 = np.float32(0)
                    a3 = np.float32(0)
                    for i in range(row.shape[0]):
                        c = np.float32(row[i])
                        a0 += c * q0[i]
                        a1 += c * q1[i]
                        a2 += c * q2[i]
                        a3 += c * q3[i]
                    out[s, t] = a0
                    out[s, t + 1] = a1
                    out[s, t + 2] = a2
                    out[s, t + 3] = a3
                for t in range(grouped, n_queries):
                    query = queries[t]
                    total = np.float32(0)
                    for i in range(row.shape[0]):
                        total += np.float32(row[i]) * query[i]
                    out[s, t] = total

        probe = np.ones((2, 8), np.float32)
        try:
            loop(np.ones((2, 8), np.uint8), probe, np.empty((2, 2), np.float32))
        except Exception as exc:  # no thread-safe layer (e.g. no libgomp): leave the kernel out
            raise ConfigError(f"uint8-numba cannot run here: {exc}") from None
        _UINT8_LOOP = loop
    return _UINT8_LOOP


class Uint8Numba:
    """(N, D·B) counts as uint8 + a sparse overflow, widened to float32 inside numba's loop."""

    kernel = "uint8-numba"
    LOW_MAX = 255

    def __init__(self, low: np.ndarray, overflow: sparse.csr_matrix, dim: int, bins: int
                 ) -> None:
        self.low, self.overflow, self.dim, self.bins = low, overflow, dim, bins

    @classmethod
    def build(cls, counts: np.ndarray, dim: int, bins: int, max_dimension_total: int
              ) -> Uint8Numba:
        _uint8_loop()  # ConfigError here if this machine cannot run it
        if counts.size and counts.max() >= 2**24:
            raise ConfigError(f"a count of {int(counts.max())} is not exact in float32")
        return cls(*split_counts(counts, cls.LOW_MAX), dim, bins)

    def __len__(self) -> int:
        return len(self.low)

    @property
    def nbytes(self) -> int:
        return self.low.nbytes + self.overflow.data.nbytes + self.overflow.indices.nbytes

    def inner(self, queries: np.ndarray, count_total: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """As Float32Screen.inner for the uint8 part (Σ low <= Σ c, so count_total bounds its
        floor too); the overflow's products are float64 sums of few integers times the query,
        within FLOAT_SLACK."""
        import numba
        import torch

        scale = _power_of_two_scale(queries)
        n_queries = queries.shape[1]
        # Queries left over after groups of four: two or three cost less as a padded group.
        padded = n_queries + (-n_queries % QUERY_GROUP if n_queries % QUERY_GROUP >= 2 else 0)
        scaled = np.zeros((padded, queries.shape[0]), np.float32)  # (T, L)
        scaled[:n_queries] = (queries / scale).T
        out = np.empty((len(self), padded), np.float32)
        numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        _uint8_loop()(self.low, scaled, out)
        approx = out[:, :n_queries].astype(np.float64) * scale
        error = _float32_error(approx, self.low.shape[1], count_total, scale)
        if self.overflow.nnz:
            approx = approx + self.overflow @ queries
        return approx, error + FLOAT_SLACK * np.abs(approx)

    counts = Int8Counts.counts  # low + its few overflow entries, row by row
    exact_products = Int8Counts.exact_products
    exact_pairs = Int8Counts.exact_pairs

    def select(self, keep: np.ndarray) -> Uint8Numba:
        return type(self)(self.low[keep], self.overflow[keep], self.dim, self.bins)

    @classmethod
    def join(cls, parts: Sequence[Uint8Numba]) -> Uint8Numba:
        return cls(np.concatenate([p.low for p in parts]),
                   sparse.vstack([p.overflow for p in parts], format="csr"),
                   parts[0].dim, parts[0].bins)


KERNELS: dict[str, type] = {k.kernel: k for k in (Int8Counts, Int8Onnx, Int8Packed, Int8Sparse,
                                                  Int8Columns, Float32Screen, Float32Numpy,
                                                  Uint8Numba)}


def kernel_class(name: str) -> type:
    return KERNELS[look_up("index kernel", name, KERNELS)]


# The order kernels are timed in: the usual winners first, so that a hopeless one (int8-gemm
# without VNNI: 80 ms a query at 1,024 sources on the AVX2 EPYC) stops after one query.
TIMING_ORDER = ("int8-packed", "int8-sparse", "int8-columns", "uint8-numba", "float32-numpy",
                "int8-onnxruntime",
                "float32-torch", "int8-gemm")
GIVE_UP = 4.0  # a first query this many times the best kernel's whole timing ends a timing
# Share of the counts above 127 from which the kernels that multiply an int8 overflow with every
# query are passed over without being built. Their float64 sparse product reads 12 bytes an
# entry (value and column) besides the 1-byte counts: past 1/12 that is over 2 bytes a count,
# the most int8-columns ever reads (uint16 columns, and only the query's nonzero ones), so no
# lone query can win; and at ~1 ns an entry and query digit the product costs more than a
# batch's dense products (~0.04 ns a count and query) from ~1.3%. At the paper's N = 10,000 a
# third of the counts pass 127; there the four ranked at 3-40x int8-columns' time on the AVX2
# EPYC, and building them was most of the choice (bench_choose, BENCHMARKS.md).
INT8_OVERFLOW_HOPELESS = 1 / 12


def overflow_share(counts: Sequence[np.ndarray]) -> float:
    """The share of all the given counts that are above 127."""
    above = sum(int(np.count_nonzero(np.asarray(c) > INT8_MAX)) for c in counts)
    return above / max(1, sum(np.asarray(c).size for c in counts))


def kernels_passed_over(share: float) -> dict[str, str]:
    """Kernels not worth timing on counts with ``share`` above 127, and why."""
    if share <= INT8_OVERFLOW_HOPELESS or importlib.util.find_spec("numba") is None:
        return {}  # (without numba, int8-columns, the kernel they cannot beat, is missing)
    why = (f"{share:.0%} of the counts are above 127: the float64 overflow product every query "
           f"pays reads more bytes than int8-columns' whole stream")
    return {name: why for name, kind in KERNELS.items()
            if getattr(kind, "MULTIPLIES_INT8_OVERFLOW", False)}
CLOSE = 1.25  # the two fastest within this factor: both are timed again, runner-up first


def choose_kernel(time_query: Callable[[str, float], float], *, close_calls: bool = True,
                  skip: Collection[str] = ()) -> tuple[str, dict[str, float]]:
    """Time every kernel but ``skip`` with ``time_query(name, give_up)`` (median seconds of a
    whole query on a sample of the index; it may stop early, returning what it measured, once a
    query takes over ``give_up`` seconds) and return the fastest name with every timing; a
    kernel that cannot hold the data exactly (ConfigError), or whose library this installation
    left out (torch, numba), is left out. ``close_calls``: time the two fastest again when
    close."""
    timings = {}
    for name in sorted(KERNELS, key=TIMING_ORDER.index):
        if name in skip:
            continue
        best = min(timings.values(), default=float("inf"))
        try:
            timings[name] = time_query(name, GIVE_UP * best)
        except (ConfigError, ImportError):
            continue
    if not timings:
        raise ConfigError("no index kernel can hold these counts exactly")
    # A close call is timed twice, in the other order, and decided on the mean: a 2-core VM's
    # timings drift by 10-15%, and on the AVX2 EPYC int8-packed and uint8-numba came within
    # that on 1,024 sources (int8-packed ranks 10,000 1.2-1.6x faster there).
    first, second = (sorted(timings, key=timings.get) + [None])[:2]
    if close_calls and second is not None and timings[second] < CLOSE * timings[first]:
        for name in (second, first):
            timings[name] = (timings[name] + time_query(name, float("inf"))) / 2
    return min(timings, key=timings.get), timings


CountMatrix = (Int8Counts | Int8Onnx | Int8Packed | Int8Sparse | Int8Columns | Float32Screen
               | Uint8Numba)
