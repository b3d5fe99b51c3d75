"""The service's screened index returns exactly the exhaustive top-k."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_space, random_fingerprint

from rayfp.core.distance import METRICS, TARGET_SOFTMAX, UNIFORM, LinearIndex, distance
from rayfp.core.fingerprint import Fingerprint
from rayfp.errors import ConfigError, SpaceMismatchError
from rayfp.search.index import DIGIT, DIGITS, ScreenedIndex, query_digits
from rayfp.search.kernels import (
    CLOSE,
    GIVE_UP,
    INT8_OVERFLOW_HOPELESS,
    KERNELS,
    Float32Screen,
    Int8Columns,
    Int8Counts,
    Uint8Numba,
    choose_kernel,
    kernels_passed_over,
    overflow_share,
)

ALL_KERNELS = sorted(KERNELS)


@pytest.fixture(scope="module")
def sources():
    rng = np.random.default_rng(11)
    space = make_space(dim=32, bins=40)
    return space, [random_fingerprint(rng, space, f"s{i:03d}", n=400, zero_fraction=0.5)
                   for i in range(300)]


@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("weighting", [TARGET_SOFTMAX, UNIFORM])
def test_screened_top_k_equals_the_exhaustive_linear_form(sources, weighting, kernel):
    space, fps = sources
    screened, linear = ScreenedIndex(fps, kernel=kernel), LinearIndex(fps)
    assert screened.kernel == kernel and screened.kernel_timings == {}  # forced: not measured
    rng = np.random.default_rng(5)
    targets = [random_fingerprint(rng, space, f"t{i}", n=400) for i in range(6)] + fps[:3]
    for k in (1, 5, 400):
        got = screened.top_k_many(targets, k, weighting=weighting)
        for target, answer in zip(targets, got):
            want = linear.rank(linear.bkld_all(target, weighting=weighting), k,
                               exclude=target.task_id)
            assert [t for t, _ in answer] == [t for t, _ in want]
            np.testing.assert_allclose([d for _, d in answer], [d for _, d in want],
                                       rtol=0, atol=1e-12)
    assert screened.top_k(fps[0], 3)[0][0] != "s000"  # itself excluded


def test_screening_prunes_and_other_metrics_use_the_direct_formula(sources):
    space, fps = sources
    screened = ScreenedIndex(fps)
    target = random_fingerprint(np.random.default_rng(9), space, "t", n=400)
    found = screened.search_many([target], 5)[0]
    assert found.neighbours == screened.top_k(target, 5)
    assert 5 <= found.candidates <= 10  # the integer screen leaves few to re-rank
    for metric in ("cosine", "js", "emd", "p2l"):
        want = sorted((distance(target, s, metric), s.task_id) for s in fps)[:4]
        assert screened.top_k_metric(target, 4, metric) == [(t, d) for d, t in want]
    assert set(METRICS) >= {"bkld-small", "bkld-large"}
    other = random_fingerprint(np.random.default_rng(1), make_space(dim=32, bins=40, hi=2.0),
                               "x")
    with pytest.raises(SpaceMismatchError):
        screened.top_k(other, 1)


def test_query_digits_reconstruct_within_the_stated_remainder():
    rng = np.random.default_rng(3)
    queries = rng.random((500, 4)) * np.array([1.0, 1e-6, 3e3, 0.0])  # incl. an all-zero query
    digits, scale = query_digits(queries)
    assert digits.dtype == np.int8 and np.abs(digits.astype(int)).max() <= DIGIT
    base = 2.0 * DIGIT
    rebuilt = (digits * base ** -np.arange(DIGITS)).sum(axis=-1) * scale
    bound = scale * 0.5 * base ** -(DIGITS - 1)
    assert (np.abs(rebuilt - queries) <= bound * (1 + 1e-9)).all()
    assert (np.abs(rebuilt - queries).max(axis=0)[:3] > 0).all()  # the bound is not vacuous


def concentrated(space, task_id: str, n: int) -> Fingerprint:
    """All n samples of every dimension in one bin: counts as large as they get."""
    counts = np.zeros((space.dim, space.bins), np.int64)
    counts[:, 3] = n
    return Fingerprint(task_id=task_id, space_id=space.space_id, counts=counts,
                       feature_sum=np.ones(space.dim), n_samples=n, n_images=n)


@pytest.mark.parametrize("kernel,largest", [("int8-gemm", 2_000_000), ("int8-packed", 2_000_000),
                                            ("int8-sparse", 2_000_000), ("int8-columns", 2_000_000),
                                            ("float32-torch", 2_000_000), ("float32-numpy", 2_000_000),
                                            ("uint8-numba", 2_000_000), ("auto", 2_000_000)])
def test_large_counts_overflow_and_dimension_chunks_stay_exact(kernel, largest):
    """int8: counts above 127 live in the sparse overflow matrix, and huge n splits the GEMM by
    dimension so int32 sums cannot overflow. uint8: counts above 255 overflow likewise, and the
    float32 loop is exact up to 2^24. float32: large counts are exact up to 2^24. Every
    way must leave the top-k exact; "auto" must leave out a kernel that cannot hold the counts
    exactly (float32 once a count reaches 2^24)."""
    rng = np.random.default_rng(8)
    space = make_space(dim=24, bins=10)
    fps = [random_fingerprint(rng, space, f"s{i:02d}", n=int(n), zero_fraction=0.4)
           for i, n in enumerate(rng.choice([300, 5_000, largest], size=40))]
    if kernel == "auto":
        fps.append(concentrated(space, "s99", 2**24))
    index = ScreenedIndex(fps, kernel=kernel)
    matrix = index.segments[0].rows.counts
    if kernel == "auto":
        # only the int8 kernels hold 2^24 exactly (the column kernels' float32 sums too: their
        # columns hold counts up to 65,535, the rest is a float64 residual)
        int8 = {"int8-gemm", "int8-onnxruntime", "int8-packed", "int8-sparse", "int8-columns"}
        # most of these counts pass 127: the kernels multiplying an int8 overflow are passed
        # over untimed, and the column kernel is left
        assert set(index.passed_over) == int8 - {"int8-columns"}
        assert index.kernel == "int8-columns" and set(index.kernel_timings) == {"int8-columns"}
        # few counts pass 127 (one source of 2^24 among small ones): all five are timed
        small = [random_fingerprint(rng, space, f"t{i:02d}", n=300, zero_fraction=0.4)
                 for i in range(40)]
        few = ScreenedIndex([*small, concentrated(space, "t99", 2**24)])
        assert few.passed_over == {} and few.kernel in int8 and set(few.kernel_timings) == int8
    if isinstance(matrix, Int8Counts):
        assert matrix.overflow.nnz > 0 and len(matrix.chunks) > 1
    elif isinstance(matrix, Int8Columns):
        assert matrix.residual.nnz > 0 and matrix.whole.dtype == np.uint16
    elif isinstance(matrix, Uint8Numba):
        assert matrix.overflow.nnz > 0 and matrix.low.max() == 255
        with pytest.raises(ConfigError, match="not exact in float32"):
            ScreenedIndex(fps + [concentrated(space, "huge", 2**24)], kernel="uint8-numba")
    else:
        assert isinstance(matrix, Float32Screen) and matrix.matrix.max() > 2**20
        with pytest.raises(ConfigError, match="not exact in float32"):
            ScreenedIndex(fps + [concentrated(space, "huge", 2**24)], kernel="float32-torch")
    for i, fp in enumerate(fps[:3]):
        np.testing.assert_array_equal(index.source(i).counts, fp.counts)
    linear = LinearIndex(fps)
    for weighting in (TARGET_SOFTMAX, UNIFORM):
        for target in [random_fingerprint(rng, space, "t", n=largest)] + fps[:2]:
            got = index.top_k(target, 6, weighting=weighting)
            want = linear.rank(linear.bkld_all(target, weighting=weighting), 6,
                               exclude=target.task_id)
            assert [t for t, _ in got] == [t for t, _ in want]
            np.testing.assert_allclose([d for _, d in got], [d for _, d in want], atol=1e-12)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_changes_go_to_new_segments_then_compact_and_stay_exact(sources, kernel, monkeypatch):
    space, fps = sources
    exact_pairs, paired = ScreenedIndex._exact_pairs, []
    monkeypatch.setattr(ScreenedIndex, "_exact_pairs", lambda self, rows, *rest: (
        paired.append(len(rows)) or exact_pairs(self, rows, *rest)))
    rng = np.random.default_rng(4)
    index = ScreenedIndex(fps[:200], kernel=kernel)
    live = {fp.task_id: fp for fp in fps[:200]}
    steps = [(fps[200:203], ["s005"]),                                   # add 3, remove 1
             ([random_fingerprint(rng, space, "s201", n=400)], []),      # replace a new one
             ([random_fingerprint(rng, space, "s010", n=400)], ["s011"]),  # replace an old one
             (fps[203:300], [])]                                          # enough to compact
    for step, (upserts, removed) in enumerate(steps):
        index = index.with_changes(upserts, removed)
        assert len(index.segments) == (step + 2 if step < 3 else 1)  # no copy until compaction
        for t in removed:
            live.pop(t)
        live.update({fp.task_id: fp for fp in upserts})
        fresh = ScreenedIndex(list(live.values()), kernel=kernel)
        assert index.kernel == kernel
        assert sorted(index.task_ids) == sorted(live)
        for target in [random_fingerprint(rng, space, "t", n=400), live["s010"]]:
            for weighting in (TARGET_SOFTMAX, UNIFORM):
                assert (index.top_k(target, 7, weighting=weighting)
                        == fresh.top_k(target, 7, weighting=weighting))
            assert index.top_k_metric(target, 3, "js") == fresh.top_k_metric(target, 3, "js")
        # a batch re-ranks each query's own candidates in one pass over every segment
        batch = [random_fingerprint(rng, space, f"b{i}", n=400) for i in range(7)]
        paired.clear()
        for got, target in zip(index.top_k_many([*batch, live["s010"]], 7),
                               [*batch, live["s010"]]):
            want = fresh.top_k(target, 7)
            assert [t for t, _ in got] == [t for t, _ in want]
            np.testing.assert_allclose([d for _, d in got], [d for _, d in want], rtol=0,
                                       atol=1e-12)
        assert paired and paired[0] >= 8 * 7
    assert index.alive.all()
    with pytest.raises(ConfigError, match="at least one"):
        ScreenedIndex(fps[:1]).with_changes([], ["s000"])


def test_every_kernels_error_bound_holds_and_auto_keeps_the_fastest(sources):
    """Each kernel's inner products lie within its stated bound of the exact float64 value,
    also for queries spanning many orders of magnitude (underflow in float32)."""
    space, fps = sources
    counts = np.stack([fp.counts.ravel() for fp in fps[:50]]).astype(np.int64)
    total = counts.sum(axis=1).astype(np.float64)
    rng = np.random.default_rng(2)
    queries = np.stack([rng.random(counts.shape[1]),
                        rng.random(counts.shape[1]) * 10.0 ** rng.uniform(-60, 3, counts.shape[1]),
                        np.zeros(counts.shape[1])], axis=1)
    exact = counts.astype(np.float64) @ queries
    for name, cls in KERNELS.items():
        matrix = cls.build(counts, space.dim, space.bins, int(counts.reshape(
            50, space.dim, space.bins).sum(axis=2).max()))
        approx, error = matrix.inner(queries, total)
        assert (np.abs(approx - exact) <= error).all(), name
        assert (error[:, 0] < 1e-2 * exact[:, 0]).all(), name  # and the bound is useful
        for j in range(queries.shape[1]):  # each query alone: some kernels have a lone path
            approx, error = matrix.inner(queries[:, j:j + 1], total)
            assert (np.abs(approx - exact[:, j:j + 1]) <= error).all(), (name, j)
        np.testing.assert_array_equal(matrix.counts(np.array([3, 7])), counts[[3, 7]])
        # the re-rank's float64 products of a few rows, with every query at once
        np.testing.assert_allclose(matrix.exact_products(np.array([7, 3]), queries.T),
                                   exact[[7, 3]], rtol=1e-12, atol=0)
    fake = {"int8-gemm": 2.0, "int8-onnxruntime": 2.5, "int8-packed": 1.5, "int8-sparse": 2.2,
            "int8-columns": 2.4, "float32-torch": 1.0, "float32-numpy": 3.0, "uint8-numba": 4.0}
    chosen, timings = choose_kernel(lambda name, give_up: fake[name])
    assert chosen == "float32-torch" and timings == fake
    chosen, timings = choose_kernel(lambda name, give_up: fake[name], skip={"float32-torch"})
    assert chosen == "int8-packed" and "float32-torch" not in timings  # never timed
    # each timing may stop once it is GIVE_UP times the best so far (int8-packed's, timed
    # first); a kernel that stops early keeps what it measured and cannot win
    limits = {}
    choose_kernel(lambda name, give_up: limits.setdefault(name, give_up) and fake[name])
    assert limits["int8-packed"] == float("inf")
    assert limits["float32-torch"] == GIVE_UP * 1.5 and limits["int8-gemm"] == GIVE_UP * 1.0
    # a close call (within CLOSE) is timed again, runner-up first, and decided on the means
    calls, second_round = [], {"int8-packed": 1.0, "uint8-numba": 1.8}
    first_round = {**fake, "int8-packed": 1.1, "uint8-numba": 1.0, "float32-torch": 5.0}

    def timed(name, give_up):
        calls.append(name)
        return (second_round if calls.count(name) > 1 else first_round)[name]

    chosen, timings = choose_kernel(timed)
    assert 1.0 * CLOSE > 1.1 and calls[-2:] == ["int8-packed", "uint8-numba"]
    assert chosen == "int8-packed" and timings["uint8-numba"] == pytest.approx(1.4)
    calls.clear()  # a small sample's close call is not timed again
    assert choose_kernel(timed, close_calls=False)[0] == "uint8-numba"
    assert len(calls) == len(KERNELS)
    index = ScreenedIndex(fps)
    assert index.kernel in KERNELS and set(index.kernel_timings) == set(KERNELS)
    assert index.kernel_timings[index.kernel] == min(index.kernel_timings.values())
    with pytest.raises(ConfigError, match="unknown index kernel 'int4'"):
        ScreenedIndex(fps, kernel="int4")


def test_kernels_multiplying_an_int8_overflow_are_passed_over_beyond_a_twelfth():
    assert overflow_share([np.array([[0, 128], [127, 500]]), np.zeros((2, 2))]) == 0.25
    assert kernels_passed_over(INT8_OVERFLOW_HOPELESS) == {}
    over = kernels_passed_over(0.09)
    assert set(over) == {"int8-gemm", "int8-onnxruntime", "int8-packed", "int8-sparse"}
    assert "9% of the counts are above 127" in over["int8-packed"]


def test_the_kernel_chooser_shares_one_encoding_and_it_answers_as_a_fresh_one(sources):
    """The chooser encodes its sample's LSE tables once for every kernel (``like``): an index
    built that way holds the same tables and gives the same answers as one encoded afresh,
    and rows of other sources cannot be passed off as them."""
    space, fps = sources
    fresh = ScreenedIndex(fps, kernel="uint8-numba")
    shared = ScreenedIndex(fps, kernel="int8-packed", like=fresh.segments[0].rows)
    own = ScreenedIndex(fps, kernel="int8-packed")
    for name in ("lse", "lse_excess", "lse_excess_peak", "count_total", "n"):
        np.testing.assert_array_equal(getattr(shared.segments[0].rows, name),
                                      getattr(own.segments[0].rows, name))
    assert shared.top_k_many(fps[:4], 5) == own.top_k_many(fps[:4], 5)
    with pytest.raises(ConfigError, match="same sources"):
        ScreenedIndex(fps[1:] + fps[:1], kernel="int8-packed", like=fresh.segments[0].rows)
    # an automatic choice over the whole (small) space reuses the sample's tables too
    auto = ScreenedIndex(fps)
    np.testing.assert_array_equal(auto.segments[0].rows.lse, own.segments[0].rows.lse)


def test_the_light_clients_gather_sums_as_the_compiled_one():
    """Without numba (the light client) the exact re-rank's products come from numpy: the
    same float64 sums of exact products, to rounding, on one thread or (a batch's many
    candidates) on every thread, four targets a pass and the rest one by one, or each row with
    its own target; the caller's numba thread count comes back."""
    import numba

    from rayfp.search import kernels
    from rayfp.search.kernels import _gather_numpy, _pairs_numpy, gather_products, pair_products

    rng = np.random.default_rng(5)
    for n_rows, n_targets, length in ((4, 3, 600), (33, 6, 1_500)):
        matrix = rng.integers(0, 300, (40, length)).astype(np.uint16)
        rows = rng.choice(40, n_rows, replace=False)
        weighted = rng.random((n_targets, length))
        out = np.empty((n_rows, n_targets))
        _gather_numpy(matrix, rows, weighted, out)
        wide = out.size * length >= kernels.GATHER_PARALLEL_FROM
        assert wide == (n_rows > 4)  # both paths run
        before = numba.get_num_threads()
        np.testing.assert_allclose(out, gather_products(matrix, rows, weighted), rtol=1e-12)
        assert numba.get_num_threads() == before
        # each row with its own target (a batch's own candidates): the same sums
        targets = rng.integers(0, n_targets, n_rows)
        alone = np.empty(n_rows)
        _pairs_numpy(matrix, rows, targets, weighted, alone)
        np.testing.assert_allclose(alone, out[np.arange(n_rows), targets], rtol=1e-12)
        np.testing.assert_allclose(pair_products(matrix, rows, targets, weighted), alone,
                                   rtol=1e-12)
        assert numba.get_num_threads() == before


def test_the_screens_float32_lse_terms_stay_within_their_bound():
    """The screen reads LSE - log B in float32; its terms must lie within the stated bound of the
    float64 sums, also for weights far below float32's range and excesses of either sign."""
    from rayfp.search.kernels import (
        LSE_PARALLEL_FROM,
        _excess_numpy,
        lse_excess_error,
        lse_excess_terms,
    )

    rng = np.random.default_rng(9)
    dim = 512
    lse = np.log(100) + rng.uniform(-0.02, 0.02, (40, dim))
    excess = (lse - np.log(100)).astype(np.float32)
    peak = np.abs(excess).max(axis=1).astype(np.float64)
    weights = np.stack([rng.random(dim), rng.random(dim) * 10.0 ** rng.uniform(-60, 0, dim),
                        np.full(dim, 1e-45)], axis=1)
    exact = (lse - np.log(100)) @ weights
    got = lse_excess_terms(excess, weights)
    bound = lse_excess_error(peak, weights.sum(axis=0), dim) + 1e-12 * np.abs(exact)
    assert (np.abs(got - exact) <= bound).all()
    # and it is useful: far below the whole LSE term (log B · Σ w), of which this is the excess
    assert (bound[:, 0] < 1e-6 * np.log(100) * weights[:, 0].sum()).all()
    out = np.empty((40, 3), np.float32)
    _excess_numpy(excess, np.ascontiguousarray(weights.T, dtype=np.float32), out)
    np.testing.assert_allclose(out, got, rtol=1e-4, atol=1e-30)
    # on every thread (a table past LSE_PARALLEL_FROM): each source's sum is the same sum
    many = np.tile(excess, (LSE_PARALLEL_FROM // excess.size + 1, 1))
    assert many.size >= LSE_PARALLEL_FROM
    np.testing.assert_array_equal(lse_excess_terms(many, weights, threads=2),
                                  np.tile(got, (len(many) // 40, 1)))


def test_many_small_changes_merge_among_themselves_and_keep_the_big_segment():
    """Registrations one at a time: past MAX_SEGMENTS the small segments merge into one, and
    the first (big) segment, with its encoding, stays the same object; answers stay exact."""
    rng = np.random.default_rng(6)
    space = make_space(dim=16, bins=20)
    fps = [random_fingerprint(rng, space, f"s{i:03d}", n=200) for i in range(120)]
    index = ScreenedIndex(fps[:100], kernel="int8-packed")
    big = index.segments[0]
    for i, fp in enumerate(fps[100:112]):
        index = index.with_changes([fp], ["s003"] if i == 5 else [])
        assert index.segments[0] is big
        assert len(index.segments) <= ScreenedIndex.MAX_SEGMENTS + 1
    assert len(index.segments) < 12
    live = [fp for fp in fps[:112] if fp.task_id != "s003"]
    fresh = ScreenedIndex(live, kernel="int8-packed")
    target = random_fingerprint(rng, space, "t", n=200)
    assert index.top_k(target, 9) == fresh.top_k(target, 9)
    assert sorted(index.task_ids) == sorted(fp.task_id for fp in live)


def test_a_batchs_exact_rerank_answers_alike_by_gather_gemm_or_pairs(sources, monkeypatch):
    """Shared candidates are re-ranked by widening counts in registers (up to GATHER_TARGETS
    targets) or by a float64 GEMM (more), few shared by each query's own pairs: one answer."""
    space, fps = sources
    index = ScreenedIndex(fps)
    rng = np.random.default_rng(8)
    targets = [random_fingerprint(rng, space, f"t{i}", n=400) for i in range(9)]
    want = [index.top_k(t, 5) for t in targets]  # one by one: no sharing
    for gather_targets, shared in ((64, 100), (0, 100), (64, 0)):  # gather, GEMM, pairs
        monkeypatch.setattr(ScreenedIndex, "GATHER_TARGETS", gather_targets)
        monkeypatch.setattr(ScreenedIndex, "SHARED_CANDIDATES", shared)
        for got, alone in zip(index.top_k_many(targets, 5), want):
            assert [t for t, _ in got] == [t for t, _ in alone]
            np.testing.assert_allclose([d for _, d in got], [d for _, d in alone], rtol=0,
                                       atol=1e-12)
