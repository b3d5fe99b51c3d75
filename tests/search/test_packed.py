"""int8-packed: the counts packed once into ONNX Runtime, the query's digits per call. Exact at
the edges an int8 dot product can break (int16 saturation on CPUs without VNNI, int32 sums),
after pickling and after the thread count changes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import make_space, random_fingerprint

from rayfp.core.distance import plogp_counts
from rayfp.search import columns, kernels
from rayfp.search.index import ScreenedIndex
from rayfp.search.kernels import (
    PACKED_DIGITS,
    UNSIGNED_BASE,
    Int8Columns,
    Int8Packed,
    Int8Sparse,
    _digits_numpy,
    _weighted_numpy,
    configure_threads,
    unsigned_digits,
    weighted_query,
)


def test_unsigned_digits_are_one_sided_and_within_the_stated_remainder():
    rng = np.random.default_rng(1)
    queries = rng.random((700, 4)) * np.array([1.0, 1e-9, 5e4, 0.0])  # incl. an all-zero query
    queries[::7, 0] = 0.0
    digits, scale = unsigned_digits(queries)
    assert digits.dtype == np.uint8 and digits.max() <= 127
    powers = float(UNSIGNED_BASE) ** -np.arange(PACKED_DIGITS)
    rebuilt = (np.moveaxis(digits, 2, 0) * powers).sum(axis=-1) * scale  # (L, T)
    remainder = scale * float(UNSIGNED_BASE) ** -(PACKED_DIGITS - 1)
    slack = 1e-12 * np.abs(queries)
    assert (rebuilt <= queries + slack).all()  # digits never overshoot: a lower bound
    assert (queries - rebuilt < remainder + slack).all()
    assert (queries - rebuilt)[:, :3].max(axis=0).min() > 0  # the bound is not vacuous
    # the light client's numpy digits are the compiled ones
    out = np.empty_like(digits)
    np.testing.assert_array_equal(_digits_numpy(np.ascontiguousarray(queries.T), out), scale)
    np.testing.assert_array_equal(out, digits)
    # other digit counts (numpy) agree on the digits they share
    two, two_scale = unsigned_digits(queries, 2)
    np.testing.assert_array_equal(two, digits[:, :2])
    np.testing.assert_array_equal(two_scale, scale)


def test_the_query_side_in_one_pass_equals_numpys():
    rng = np.random.default_rng(2)
    for top in (300, 70_000):  # the second beyond the c log c table: its own logs
        counts = rng.integers(0, top, (16, 30))
        counts[:, :5] = 0
        weights = rng.random(16)
        fast, slow = np.empty(16 * 30), np.empty(16 * 30)
        constant = weighted_query(counts, 1234, weights, fast)
        assert constant == pytest.approx(float(weights @ plogp_counts(counts, 1234)), rel=1e-12)
        assert constant == pytest.approx(_weighted_numpy(counts, 1234.0, weights, None, slow),
                                         rel=1e-12)
        np.testing.assert_array_equal(fast, slow)


def test_counts_and_digits_at_their_largest_stay_exact():
    """127 x 127 in every pair: the most an s8 x u8 pair-sum can hold without VNNI is 32,767
    (2 x 127 x 127 = 32,258). Counts of 200 go to the overflow, and a dimension total near
    int32's limit splits the product."""
    dim, bins = 6, 50
    counts = np.full((5, dim * bins), 127, np.int64)
    counts[1] = 200
    counts[2, ::3] = 0
    counts[3] = 0
    counts[3, ::bins] = 5_000_000  # 5e6 x 127 per dimension: chunks keep int32 sums exact
    queries = np.full((dim * bins, 2), 1.0)
    queries[:, 1] = np.linspace(0, 3, dim * bins)
    totals = counts.reshape(5, dim, bins).sum(axis=2)
    matrix = Int8Packed.build(counts, dim, bins, int(totals.max()))
    assert len(matrix.chunks) > 1 and matrix.overflow.nnz > 0
    digits, scale = unsigned_digits(queries)
    assert digits.max() == 127
    approx, error = matrix.inner(queries, counts.sum(axis=1).astype(np.float64))
    exact = counts.astype(np.float64) @ queries
    assert (np.abs(approx - exact) <= error).all()
    assert (error <= 1e-4 * np.maximum(exact, 1)).all()


def test_pickled_and_rethreaded_the_answers_stay_the_same():
    """Sessions do not pickle: a copy remakes them on first use; a new thread count makes its
    own session (ONNX Runtime fixes threads per session)."""
    rng = np.random.default_rng(3)
    space = make_space(dim=20, bins=30)
    fps = [random_fingerprint(rng, space, f"s{i:02d}", n=300) for i in range(60)]
    index = ScreenedIndex(fps, kernel="int8-packed")
    target = random_fingerprint(rng, space, "t", n=300)
    want = index.top_k(target, 7)
    copy = pickle.loads(pickle.dumps(index))
    assert copy.top_k(target, 7) == want
    matrix = index.segments[0].rows.counts
    before = set(matrix._sessions)
    previous = kernels._ORT_THREADS
    try:
        configure_threads(1)
        assert index.top_k(target, 7) == want
        assert set(matrix._sessions) == before | {1}
    finally:
        configure_threads(previous or 2)


def test_an_index_packs_its_segments_when_built_and_merges_pack_once(monkeypatch):
    """The first query must not pay for packing; a merge must not pack its parts on the way."""
    rng = np.random.default_rng(4)
    space = make_space(dim=12, bins=20)
    fps = [random_fingerprint(rng, space, f"s{i:02d}", n=200) for i in range(80)]
    packed = []
    real = kernels._packed_session
    monkeypatch.setattr(kernels, "_packed_session",
                        lambda chunk, threads: packed.append(len(chunk)) or real(chunk, threads))
    index = ScreenedIndex(fps[:60], kernel="int8-packed")
    assert packed == [60]  # at build time: the first query packs nothing
    index.top_k(fps[70], 5)
    assert packed == [60]
    index = index.with_changes(fps[60:80], ["s01"])  # waste > 25%: one merged segment
    assert len(index.segments) == 1 and packed == [60, 79]


@pytest.mark.parametrize("kernel", ["int8-sparse", "int8-columns"])
def test_the_column_kernels_read_only_the_columns_a_query_needs(kernel):
    """A query reads only the count columns where it is nonzero, stays within its bound, and
    answers as int8-packed, also after pickling (the columns are remade on use) and on one
    thread."""
    rng = np.random.default_rng(6)
    space = make_space(dim=16, bins=40)
    fps = [random_fingerprint(rng, space, f"s{i:02d}", n=500, zero_fraction=0.6)
           for i in range(90)]
    sparse_index = ScreenedIndex(fps, kernel=kernel)
    packed_index = ScreenedIndex(fps, kernel="int8-packed")
    matrix = sparse_index.segments[0].rows.counts
    assert matrix._columns is not None  # made when the index was built, not by a query
    counts = np.stack([fp.counts.ravel() for fp in fps]).astype(np.float64)
    total = counts.sum(axis=1)
    target = random_fingerprint(rng, space, "t", n=500, zero_fraction=0.6)
    query = (target.counts.ravel() / 500.0)[:, None]
    assert 0 < (query == 0).mean() < 1
    approx, error = matrix.inner(query, total)
    assert (np.abs(approx - counts @ query) <= error).all()
    read = []  # the coarse and uint16 rows the compiled loop is handed: all it reads
    loop = columns.compile_loops()["products"]
    columns._COMPILED["products"] = lambda narrow, n_rows, v, wide, w_rows, *rest: (
        read.append((n_rows.copy(), w_rows.copy())) or loop(narrow, n_rows, v, wide, w_rows,
                                                            *rest))
    try:
        np.testing.assert_array_equal(matrix.inner(query, total)[0], approx)
    finally:
        columns._COMPILED["products"] = loop
    codes = matrix._columns[0]
    coarse = codes.where >= 0
    handed = np.flatnonzero(np.where(coarse, np.isin(codes.where, read[0][0]),
                                     np.isin(-1 - codes.where, read[0][1])))
    np.testing.assert_array_equal(handed, np.flatnonzero(query[:, 0]))
    matrix._columns = None  # remade from the counts on use
    for index in (sparse_index, pickle.loads(pickle.dumps(sparse_index))):
        for t in [target, *fps[:3]]:
            assert [n for n, _ in index.top_k(t, 6)] == [n for n, _ in packed_index.top_k(t, 6)]
    previous = kernels._ORT_THREADS
    try:
        configure_threads(1)
        assert ([n for n, _ in sparse_index.top_k(target, 6)]
                == [n for n, _ in packed_index.top_k(target, 6)])
    finally:
        configure_threads(previous or 2)


@pytest.mark.parametrize("kind", [Int8Sparse, Int8Columns])
@pytest.mark.parametrize("largest", [255, 300, 3000, 70_000])
def test_the_columns_hold_every_count_within_its_rows_bound(kind, largest):
    """Counts above 127 (a third of the bins at the paper's N = 10,000) are in the column codes
    themselves, exact or within (2^s - 1)/2 of their row's shift; only what passes 65,535
    stays a float64 residual, and every product stays within its bound."""
    rng = np.random.default_rng(8)
    dim, bins, n = 8, 30, 70
    counts = rng.integers(0, 128, (n, dim * bins))
    counts[rng.random(counts.shape) < 0.3] = 0
    big = rng.random(counts.shape) < 0.2
    counts[big] = rng.integers(128, largest + 1, big.sum())
    counts[0, 5] = largest
    totals = counts.reshape(n, dim, bins).sum(axis=2)
    matrix = kind.build(counts, dim, bins, int(totals.max()))
    before = matrix.nbytes  # the most the columns may take, before they are made
    matrix.prepare()
    codes, residual = matrix._columns
    read, half = codes.decoded()
    off = np.abs(read + residual.toarray() - counts)
    assert (off <= half).all() and half.max() <= (2**columns.MAX_SHIFT - 1) / 2
    assert (off[:, codes.shift == 0] == 0).all()  # unshifted rows and uint16 rows are exact
    np.testing.assert_array_equal(residual.toarray(), np.maximum(counts - 65_535, 0))
    if largest <= 255:  # one byte a count, all exact
        assert len(codes.wide) == 0 and half.max() == 0 and codes.narrow.shape == (dim * bins, n)
    if kind is Int8Sparse:  # int8-packed's copies for its batches, and the columns
        held = Int8Packed(matrix.low, matrix.overflow, dim, bins, int(totals.max())).nbytes
    else:  # the whole counts row-major (the re-rank), no int8 copy, no overflow
        np.testing.assert_array_equal(matrix.whole, np.minimum(counts, 65_535))
        assert not hasattr(matrix, "overflow")
        held = matrix.whole.nbytes + residual.data.nbytes + residual.indices.nbytes
    assert matrix.nbytes == held + codes.nbytes
    assert codes.narrow.nbytes + codes.wide.nbytes <= before - held  # never more than uint16
    queries = rng.random((dim * bins, 2)) * (rng.random((dim * bins, 2)) < 0.5)
    queries[:, 1] *= 1e-40  # an underflowing query too
    approx, error = matrix._sparse_inner(queries, counts.sum(axis=1).astype(np.float64))
    exact = counts.astype(np.float64) @ queries
    assert (np.abs(approx - exact) <= error).all()
    coarse = (queries * half[:, None]).sum(axis=0)  # the codes' own share of the bound
    assert (error <= coarse + 1e-4 * np.abs(exact) + 1e-30).all()


def test_the_column_type_is_found_once_not_on_every_health_check(monkeypatch):
    """GET /v1/health reads nbytes: scanning the overflow for its largest count there took
    50 ms a request at 10,000 sources of N = 10,000 samples."""
    scans = []
    real = kernels._narrowest
    monkeypatch.setattr(kernels, "_narrowest", lambda peak: scans.append(peak) or real(peak))
    counts = np.full((70, 40), 300)
    matrix = Int8Sparse.build(counts, 4, 10, 3000)
    sizes = {matrix.nbytes for _ in range(3)}
    sizes.add(matrix.nbytes)
    matrix.prepare()
    assert scans == [300] and len(sizes) == 1
    assert matrix._columns[0].shift.max() == 1 and matrix.nbytes < sizes.pop()


@pytest.mark.parametrize("kernel", ["int8-columns", "int8-sparse"])
def test_segments_of_uint8_and_uint16_counts_merge_and_stay_exact(kernel):
    """Registrations of small tasks (exact one-byte columns) beside a big index of N = 5,000
    (shifted codes), and the other way round, answer as a fresh index; compaction codes the
    merged rows again."""
    rng = np.random.default_rng(9)
    space = make_space(dim=10, bins=20)
    large = [random_fingerprint(rng, space, f"L{i:02d}", n=5000) for i in range(70)]
    small = [random_fingerprint(rng, space, f"S{i:02d}", n=60) for i in range(70)]
    for first, then in ((large, small), (small, large)):
        index = ScreenedIndex(first[:60], kernel=kernel)
        index = index.with_changes(then[:5])
        shifts = [seg.rows.counts._columns_now()[0].shift.max() for seg in index.segments]
        assert sorted(shifts) == [0, 2]
        index = index.with_changes(then[5:60], [first[0].task_id])  # enough to compact
        assert len(index.segments) == 1
        assert index.segments[0].rows.counts._columns_now()[0].shift.max() == 2
        live = first[1:60] + then[:60]
        fresh = ScreenedIndex(live, kernel="float32-numpy")
        for target in [*then[60:63], *first[60:63]]:
            got, want = index.top_k(target, 6), fresh.top_k(target, 6)
            assert [t for t, _ in got] == [t for t, _ in want]
            # the re-ranks add the same float64 products in another order
            np.testing.assert_allclose([d for _, d in got], [d for _, d in want], rtol=1e-12)
        np.testing.assert_array_equal(index.source(70).counts, live[70].counts)
