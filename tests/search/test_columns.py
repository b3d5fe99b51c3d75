"""The count columns' codes (rayfp/search/columns.py), attacked where a one-byte code can break:
the edges of each shift, rows that hold exactly as many exceptions as allowed and one more,
counts past uint16, and float32 sums over more rows than one block."""

from __future__ import annotations

import numpy as np
import pytest

from rayfp import defaults
from rayfp.search import columns
from rayfp.search.columns import EXCEPTION_SHARE, MAX_SHIFT, SUM_BLOCK, ColumnCodes, row_shifts
from rayfp.search.kernels import Int8Columns


def _read(codes: ColumnCodes) -> tuple[np.ndarray, np.ndarray]:
    read, half = codes.decoded()
    return read, half


@pytest.mark.parametrize("shift", range(MAX_SHIFT + 1))
def test_every_count_at_a_shifts_edges_reads_within_its_bound(shift):
    """Counts at 255·2^s, the last a code holds (256·2^s − 1) and the first it cannot (an
    exact exception), in one row that needs exactly this shift."""
    sources = 256
    edges = np.array([0, 1, (255 << shift), (256 << shift) - 1, 256 << shift, 65_535])
    row = np.resize(edges[:4], sources)  # all fit this shift...
    row[:3] = [256 << shift, 65_535, (256 << shift) + 7]  # ...but three (<= 1/64 of 256)
    if shift:  # and the row needs the shift: one count only shift s holds, past shift s - 1's
        row[3:3 + int(sources * EXCEPTION_SHARE) + 1] = (256 << shift) - 1
    whole = row[:, None].astype(np.uint16)
    codes = ColumnCodes.build(whole)
    assert codes.shift[0] == shift and codes.where[0] >= 0
    read, half = _read(codes)
    assert (np.abs(read[:, 0] - row) <= half[0]).all() and half[0] == (2**shift - 1) / 2
    exceptions = row >= (256 << shift)
    np.testing.assert_array_equal(read[exceptions, 0], row[exceptions])  # exact beside 255
    assert codes.indptr[-1] == exceptions.sum() == 3


def test_a_row_one_exception_past_the_share_takes_the_next_shift_or_stays_exact():
    sources, limit = 640, int(640 * EXCEPTION_SHARE)
    at = np.full(sources, 10)
    at[:limit] = 300  # exactly the share of exceptions at shift 0: stays shift 0
    past = at.copy()
    past[limit] = 300  # one more: shift 1
    wide = np.full(sources, 10)
    wide[:limit + 1] = 4000  # past shift 2's reach: the row stays uint16, exact
    whole = np.stack([at, past, wide], axis=1).astype(np.uint16)
    codes = ColumnCodes.build(whole)
    assert list(codes.shift[:2]) == [0, 1] and codes.where[2] < 0
    read, half = _read(codes)
    np.testing.assert_array_equal(read[:, [0, 2]], whole[:, [0, 2]])
    assert (np.abs(read[:, 1] - whole[:, 1]) <= half[1]).all()
    assert list(half) == [0.0, 0.5, 0.0]


def test_shifts_follow_the_histogram():
    hist = np.zeros((4, MAX_SHIFT + 2), np.int64)  # per row: counts needing shift 0, 1, ...
    hist[0, 0] = 10  # fits in a byte
    hist[1, :2] = 5  # half need shift 1
    hist[2, 0], hist[2, -1] = 9, 1  # one beyond MAX_SHIFT: an exception at shift 0
    hist[3, -1] = 10  # all beyond: uint16
    shift, coarse = row_shifts(hist, 10, share=0.1)
    assert list(coarse) == [True, True, True, False] and list(shift[:3]) == [0, 1, 0]


def test_sums_over_many_blocks_stay_within_a_tight_bound_past_uint16():
    """A query over more rows than SUM_BLOCK, counts up to 2^24 (the residual), and sources
    whose products span 2^30: the bound holds and is float32's for SUM_BLOCK terms, not L."""
    rng = np.random.default_rng(3)
    n, dim, bins = 96, 40, 50  # L = 2,000 rows, ~8 blocks
    counts = rng.integers(0, 200, (n, dim * bins))
    counts[:, ::50] = rng.integers(3000, 9000, (n, dim))  # uint16 rows (a ReLU's zero bin)
    counts[:2, ::7] = 2**24  # past uint16: the float64 residual
    counts[5] *= 0  # an empty source
    matrix = Int8Columns.build(counts, dim, bins, int(counts.reshape(n, dim, bins).sum(2).max()))
    matrix.prepare()
    codes, residual = matrix._columns
    assert len(codes.wide) >= dim and residual.nnz > 0
    query = rng.random((dim * bins, 1)) * np.exp2(rng.integers(-30, 0, (dim * bins, 1)))
    approx, error = matrix.inner(query, counts.sum(axis=1).astype(np.float64))
    exact = counts.astype(np.float64) @ query
    assert (np.abs(approx - exact) <= error).all()
    _, half = codes.decoded()
    own = (query[:, 0] * half).sum()
    float32 = error[:, 0] - own
    assert (float32 <= 2 * SUM_BLOCK * 2.0**-24 * np.abs(exact[:, 0]) + 1e-9).all()
    assert error[5, 0] <= own + 1e-9  # nothing but the codes' share for an empty source


def test_a_query_that_hits_no_coarse_row_adds_nothing_for_the_codes():
    whole = np.array([[300, 5], [20, 6], [1000, 7]], np.uint16)  # row 0 shifts, row 1 exact
    codes = ColumnCodes.build(whole)
    assert codes.shift[0] >= 1 and codes.shift[1] == 0
    parts, blocks = np.empty((1, 3)), np.empty((1, 3), np.float32)
    sums, terms, middle = codes.products(np.array([0.0, 1.0]), 1.0, blocks, parts)
    assert middle == 0 and terms == 1 and list(sums) == [5, 6, 7]
    sums, _, middle = codes.products(np.array([1.0, 0.0]), 1.0, blocks, parts)
    assert middle == (2**codes.shift[0] - 1) / 2
    assert (np.abs(sums + middle - whole[:, 0]) <= middle).all()


def test_exceptions_keep_two_bytes_a_source_until_a_segment_outgrows_them(monkeypatch):
    """An exception's source is uint16 up to 65,536 sources and int32 past them; its count,
    two bytes above 255·2^s, reads back exactly up to 65,535 either way, alone and in a group."""
    assert columns.source_type(65_536) == np.uint16 and columns.source_type(65_537) == np.int32
    rng = np.random.default_rng(11)
    whole = rng.integers(0, 1000, (128, 300)).astype(np.uint16)
    whole[rng.integers(0, 128, 300), np.arange(300)] = 65_535  # one exception a row at most
    whole[:2, :100] = 2000
    query = rng.random((4, 300)) * (rng.random((4, 300)) < 0.6)
    answers = []
    for kind in (np.uint16, np.int32):
        monkeypatch.setattr(columns, "source_type", lambda sources, kind=kind: kind)
        codes = ColumnCodes.build(whole)
        assert codes.source.dtype == kind and codes.extra.dtype == np.uint16
        assert codes.indptr[-1] > 100
        read, half = codes.decoded()
        exceptions = np.zeros(whole.shape, bool)
        rows = np.repeat(np.arange(300), np.diff(codes.indptr))
        exceptions[codes.source, rows] = True
        np.testing.assert_array_equal(read[exceptions], whole[exceptions])  # exact
        assert (whole[exceptions] == 65_535).any()
        lone = [codes.products(q, 1.0, np.empty((2, 128), np.float32), np.empty((2, 128)))
                for q in query]
        group = codes.group_products(query, np.ones(4), np.empty((2, 1, 4, 128), np.float32),
                                     np.empty((2, 1, 4, 128)))
        for t, (sums, _, middle) in enumerate(lone):
            exact = whole.astype(np.float64) @ query[t]
            assert (np.abs(sums + middle - exact) <= middle + 1e-4 * exact).all()
            np.testing.assert_allclose(group[0][:, t], sums, rtol=1e-6)
        answers.append(np.stack([sums for sums, _, _ in lone]))
    np.testing.assert_array_equal(answers[0], answers[1])


def test_codes_refuse_a_shift_past_uint16():
    with pytest.raises(columns.ConfigError, match="max_shift"):
        ColumnCodes.build(np.zeros((2, 2), np.uint16), max_shift=8)


@pytest.mark.parametrize("batch", [2, 3, 4, 5, 6, 7, 8])
def test_a_batch_in_groups_answers_as_its_queries_one_by_one(batch):
    """GROUP queries share one pass over the union of their rows (zero where a query is zero);
    a batch's last 3 make a group with the last repeated, a last one or two go alone. Every
    query keeps its own bound, and its own codes' share: a query nonzero only in exact rows
    adds nothing for the shifted ones its group reads."""
    rng = np.random.default_rng(11)
    n, dim, bins = 130, 12, 40
    counts = rng.integers(0, 900, (n, dim * bins)) * (rng.random((n, dim * bins)) < 0.7)
    counts[:, ::3] //= 5  # a third of the rows fit a byte: exact
    matrix = Int8Columns.build(counts, dim, bins, int(counts.reshape(n, dim, bins).sum(2).max()))
    matrix.prepare()
    codes = matrix._columns[0]
    _, half = codes.decoded()
    assert half.max() > 0 and (half == 0).any()
    queries = rng.random((dim * bins, batch)) * (rng.random((dim * bins, batch)) < 0.4)
    queries[:, 1] = np.where(half == 0, rng.random(dim * bins), 0)  # exact rows only
    total = counts.sum(axis=1).astype(np.float64)
    import numba

    numba.set_num_threads(1)  # the caller's setting (per thread) comes back after the loops
    approx, error = matrix.inner(queries, total)
    assert numba.get_num_threads() == 1
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    exact = counts.astype(np.float64) @ queries
    assert (np.abs(approx - exact) <= error).all()
    float32 = 2 * SUM_BLOCK * 2.0**-24 * exact  # float32's share, at most
    for j in range(batch):
        alone, alone_error = matrix.inner(queries[:, j:j + 1], total)
        np.testing.assert_allclose(approx[:, j], alone[:, 0], rtol=1e-5)
        own = (queries[:, j] * half).sum()  # this query's codes' share, in a group or not
        for bound in (error[:, j], alone_error[:, 0]):
            assert (bound >= own).all() and (bound <= own + float32[:, j] + 1e-9).all()
    assert (error[:, 1] <= float32[:, 1] + 1e-9).all()


def test_a_new_process_loads_the_loops_from_numbas_cache_and_compiles_nothing():
    """Every Ray worker and Serve replica loads these loops: jitted closures calling jitted
    closures once missed numba's disk cache in every process (~20 s each). After one process
    has compiled them, the next must only load them, and a query compiles nothing more."""
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from rayfp.search import columns\n"
        "from rayfp.search.kernels import Int8Columns\n"
        "columns.compile_loops()\n"
        "counts = np.random.default_rng(0).integers(0, 900, (80, 60))\n"
        "m = Int8Columns.build(counts, 6, 10, 9000)\n"
        "m.inner(np.random.default_rng(1).random((60, 1)), counts.sum(1) * 1.0)\n"
        "m.inner(np.random.default_rng(1).random((60, 5)), counts.sum(1) * 1.0)\n"
        "from rayfp.search import column_loops as loops\n"
        "names = ('histogram', 'encode', 'products', 'entries', 'group_products',\n"
        "         'group_split')\n"
        "stats = [getattr(loops, n).stats for n in names]\n"
        "print(sum(sum(s.cache_misses.values()) for s in stats),\n"
        "      sum(sum(s.cache_hits.values()) for s in stats),\n"
        "      sum(len(getattr(loops, n).signatures) for n in names))\n")
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=600, check=True).stdout.split() for _ in range(2)]
    misses, hits, signatures = map(int, runs[1])
    assert misses == 0 and hits == signatures >= 8


def test_a_ranking_processs_openmp_workers_sleep_soon_after_a_query():
    """libgomp's default spin (300,000 pauses) kept a worker busy ~9 ms after every query on a
    2-core VM, a core taken from the event loop and the clients. A ranking process
    (configure_threads, as every Serve replica) sets a short spin before torch loads libgomp
    (numba's loops then run on torch's), so the process is idle right after a query. A spin
    the user chose is kept (and shows that an idle gap is measured: a long spin burns it); one
    that comes too late, after libgomp loaded, is reported as not in effect."""
    import os
    import subprocess
    import sys

    script = (
        "import os, resource, sys, time\n"
        "import numpy as np\n"
        "if sys.argv[1] == 'late':\n"
        "    import torch\n"
        "from rayfp.search.kernels import Int8Columns, configure_threads\n"
        "spin = configure_threads(2)\n"
        "rng = np.random.default_rng(0)\n"
        "counts = rng.integers(0, 900, (400, 3000))\n"
        "m = Int8Columns.build(counts, 300, 10, 10 ** 6)\n"
        "query, totals = rng.random((3000, 1)), counts.sum(1) * 1.0\n"
        "m.inner(query, totals)\n"
        "def cpu():\n"
        "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    return r.ru_utime + r.ru_stime\n"
        "idle = []\n"
        "for _ in range(5):\n"
        "    m.inner(query, totals)\n"
        "    before = cpu()\n"
        "    time.sleep(0.1)\n"
        "    idle.append(cpu() - before)\n"
        "print(sorted(idle)[2], '|', spin)\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT",
                                                                 "OMP_WAIT_POLICY")}

    def idle_cpu_after_a_query(when: str = "first", **extra: str) -> tuple[float, str]:
        out = subprocess.run([sys.executable, "-c", script, when], capture_output=True,
                             text=True, timeout=600, check=True, env={**clean, **extra})
        idle, spin = out.stdout.strip().split(" | ")
        return float(idle), spin

    ours, spin = idle_cpu_after_a_query()
    assert spin == f"GOMP_SPINCOUNT={defaults.OMP_SPINCOUNT}"
    assert ours < 0.004  # CPU s in a 0.1 s sleep after a query (libgomp default: 0.009)
    theirs, spin = idle_cpu_after_a_query(GOMP_SPINCOUNT="10000000000")
    assert spin == "GOMP_SPINCOUNT=10000000000 (the environment's)" and theirs > 0.05
    late, spin = idle_cpu_after_a_query("late")
    assert spin == "libgomp's default (loaded before it could be set)"
