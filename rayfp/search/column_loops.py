"""The compiled loops of the count columns (rayfp.search.columns), at module level so numba can
cache them on disk: jitted closures that call other jitted closures missed the cache in every
process (each Ray worker compiled them again, ~20 s). Imported only by columns.compile_loops,
which sets numba's thread-safe layer first: numba is not part of the light client install."""

from __future__ import annotations

import numba
import numpy as np

from rayfp.search.columns import GROUP, ROW_BLOCK, SUM_BLOCK


@numba.njit(parallel=True, cache=True, nogil=True)
def histogram(whole, top):  # pragma: no cover - compiled
    """(L, top + 1): per row, how many counts need each shift (top: more than MAX_SHIFT)."""
    n, length = whole.shape
    hist = np.zeros((length, top + 1), np.int64)
    for b in numba.prange((length + 255) // 256):
        lo, hi = b * 256, min(b * 256 + 256, length)
        for s in range(n):
            row = whole[s]
            for r in range(lo, hi):
                c, k = np.int64(row[r]) >> 8, 0
                while c > 0 and k < top:
                    k += 1
                    c >>= 1
                hist[r, k] += 1
    return hist


@numba.njit(parallel=True, cache=True, nogil=True)
def encode(whole, where, shift, indptr, narrow, wide, source, extra):  # pragma: no cover
    n, length = whole.shape
    for b in numba.prange((length + ROW_BLOCK - 1) // ROW_BLOCK):
        lo, hi = b * ROW_BLOCK, min(b * ROW_BLOCK + ROW_BLOCK, length)
        fill = indptr[lo:hi].copy()
        for s in range(n):
            row = whole[s]
            for r in range(lo, hi):
                c, w = np.int64(row[r]), where[r]
                if w < 0:
                    wide[-1 - w, s] = c
                    continue
                k = shift[r]
                code = c >> k
                if code > 255:  # an exception: exact beside the saturated code
                    narrow[w, s] = 255
                    e = fill[r - lo]
                    source[e] = s
                    extra[e] = c - (255 << k)
                    fill[r - lo] = e + 1
                else:
                    narrow[w, s] = code


@numba.njit(inline="always")
def excess_middle(k):  # pragma: no cover - compiled
    """What a saturated code's reading adds above 255 << k, (2^k − 1)/2: an exception's
    excess over that reading is extra − this, a half-integer below 2^16, exact in float32."""
    return np.float32(((1 << k) - 1) * 0.5)


@numba.njit(inline="always", fastmath={"reassoc", "contract"})
def rows_into(acc, columns, rows, values, r, end):  # pragma: no cover - compiled
    """acc += Σ values[i] · columns[rows[i]] for i in [r, end): eight rows per pass over
    acc (8% faster than four); reassociation lets LLVM vectorise, any order keeps the
    float32 bound."""
    n = acc.shape[0]
    while r + 8 <= end:
        c0, c1 = columns[rows[r]], columns[rows[r + 1]]
        c2, c3 = columns[rows[r + 2]], columns[rows[r + 3]]
        c4, c5 = columns[rows[r + 4]], columns[rows[r + 5]]
        c6, c7 = columns[rows[r + 6]], columns[rows[r + 7]]
        v0, v1, v2, v3 = values[r], values[r + 1], values[r + 2], values[r + 3]
        v4, v5, v6, v7 = values[r + 4], values[r + 5], values[r + 6], values[r + 7]
        for s in range(n):
            acc[s] += (((v0 * np.float32(c0[s]) + v1 * np.float32(c1[s]))
                        + (v2 * np.float32(c2[s]) + v3 * np.float32(c3[s])))
                       + ((v4 * np.float32(c4[s]) + v5 * np.float32(c5[s]))
                          + (v6 * np.float32(c6[s]) + v7 * np.float32(c7[s]))))
        r += 8
    while r < end:
        column, value = columns[rows[r]], values[r]
        for s in range(n):
            acc[s] += value * np.float32(column[s])
        r += 1


@numba.njit(inline="always", fastmath={"reassoc", "contract"})
def blocks_into(acc, block, columns, rows, values, r, end):  # pragma: no cover - compiled
    """acc (float64) += the rows' products, summed in float32 SUM_BLOCK rows at a time."""
    while r < end:
        stop = min(r + SUM_BLOCK, end)
        block[:] = 0
        rows_into(block, columns, rows, values, r, stop)
        for s in range(acc.shape[0]):
            acc[s] += block[s]
        r = stop


@numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def products(narrow, n_rows, n_values, wide, w_rows, w_values, shift, indptr, source, extra,
             e_rows, e_values, blocks, parts):  # pragma: no cover - compiled
    """(P, N) float64 partial sums, one per thread, each over its share of the query's
    coarse rows, uint16 rows and exception rows; each SUM_BLOCK rows are summed in float32
    (``blocks``, (P, N): in cache) and then added in float64, so float32's rounding
    stays that of SUM_BLOCK terms, not of every row."""
    n_parts = parts.shape[0]
    for p in numba.prange(n_parts):
        acc, block = parts[p], blocks[p]
        acc[:] = 0
        blocks_into(acc, block, narrow, n_rows, n_values, len(n_rows) * p // n_parts,
                    len(n_rows) * (p + 1) // n_parts)
        blocks_into(acc, block, wide, w_rows, w_values, len(w_rows) * p // n_parts,
                    len(w_rows) * (p + 1) // n_parts)
        i, end = len(e_rows) * p // n_parts, len(e_rows) * (p + 1) // n_parts
        while i < end:  # at most one exception of a source per row
            stop = min(i + SUM_BLOCK, end)
            block[:] = 0
            for j in range(i, stop):
                r, v = e_rows[j], e_values[j]
                middle = excess_middle(shift[r])
                for e in range(indptr[r], indptr[r + 1]):
                    block[source[e]] += v * (np.float32(extra[e]) - middle)
            for s in range(acc.shape[0]):
                acc[s] += block[s]
            i = stop


@numba.njit(cache=True, nogil=True)
def entries(query, scale, where, shift, indptr):  # pragma: no cover - compiled
    """A query's nonzero entries / scale, split into coarse rows (times 2^s, exact),
    uint16 rows and rows with exceptions, and Σ (q / scale)·(2^s − 1)/2: the codes' middle,
    added to every source, which is also their error bound (float64)."""
    length = query.shape[0]
    n_rows, w_rows, e_rows = (np.empty(length, np.int64), np.empty(length, np.int64),
                              np.empty(length, np.int64))
    n_values, w_values, e_values = (np.empty(length, np.float32),
                                    np.empty(length, np.float32),
                                    np.empty(length, np.float32))
    nn = nw = ne = 0
    middle = 0.0
    for i in range(length):
        if query[i] == 0:
            continue
        v = query[i] / scale
        w = where[i]
        if w >= 0:
            k = shift[i]
            n_rows[nn] = w
            n_values[nn] = np.float32(v) * np.float32(1 << k)
            middle += v * ((1 << k) - 1) * 0.5
            nn += 1
            if indptr[i + 1] > indptr[i]:
                e_rows[ne] = i
                e_values[ne] = np.float32(v)
                ne += 1
        else:
            w_rows[nw] = -1 - w
            w_values[nw] = np.float32(v)
            nw += 1
    return (n_rows[:nn], n_values[:nn], w_rows[:nw], w_values[:nw], e_rows[:ne],
            e_values[:ne], middle)


@numba.njit(inline="always", fastmath={"reassoc", "contract"})
def group_into(acc, columns, rows, values, r, end):  # pragma: no cover - compiled
    """acc (GROUP, N) += Σ values[i, t] · columns[rows[i]] for i in [r, end): each count
    widened once for the GROUP queries of a batch (a row read once for all of them). The 16
    weights are scalars before the loop: read from ``values`` inside it, LLVM reloaded them
    (6-20% slower in one process, AVX2 EPYC)."""
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    n = a0.shape[0]
    while r + 4 <= end:
        c0, c1 = columns[rows[r]], columns[rows[r + 1]]
        c2, c3 = columns[rows[r + 2]], columns[rows[r + 3]]
        v = values[r:r + 4]
        p00, p01, p02, p03 = v[0, 0], v[0, 1], v[0, 2], v[0, 3]
        p10, p11, p12, p13 = v[1, 0], v[1, 1], v[1, 2], v[1, 3]
        p20, p21, p22, p23 = v[2, 0], v[2, 1], v[2, 2], v[2, 3]
        p30, p31, p32, p33 = v[3, 0], v[3, 1], v[3, 2], v[3, 3]
        for s in range(n):
            x0, x1 = np.float32(c0[s]), np.float32(c1[s])
            x2, x3 = np.float32(c2[s]), np.float32(c3[s])
            a0[s] += (p00 * x0 + p10 * x1) + (p20 * x2 + p30 * x3)
            a1[s] += (p01 * x0 + p11 * x1) + (p21 * x2 + p31 * x3)
            a2[s] += (p02 * x0 + p12 * x1) + (p22 * x2 + p32 * x3)
            a3[s] += (p03 * x0 + p13 * x1) + (p23 * x2 + p33 * x3)
        r += 4
    while r < end:
        c0, w0 = columns[rows[r]], values[r]
        for s in range(n):
            x0 = np.float32(c0[s])
            a0[s] += w0[0] * x0
            a1[s] += w0[1] * x0
            a2[s] += w0[2] * x0
            a3[s] += w0[3] * x0
        r += 1


@numba.njit(inline="always", fastmath={"reassoc", "contract"})
def group_blocks_into(acc, block, columns, rows, values, r, end):  # pragma: no cover
    while r < end:
        stop = min(r + SUM_BLOCK, end)
        block[:] = 0
        group_into(block, columns, rows, values, r, stop)
        for t in range(GROUP):
            for s in range(acc.shape[1]):
                acc[t, s] += block[t, s]
        r = stop


@numba.njit(inline="always", fastmath={"reassoc", "contract"})
def exceptions_into(acc, block, shift, indptr, source, extra, e_rows, e_values, i, end
                    ):  # pragma: no cover - compiled
    """One group's exceptions (acc, block: (GROUP, N)) into the scratch read as (N, GROUP): a
    source's GROUP sums side by side, so an exception is one 4-wide add, not four scattered
    ones (1.01 against 0.80 ms a group at 1,000 sources, AVX2 EPYC)."""
    side = block.reshape((block.shape[1], GROUP))
    while i < end:
        stop = min(i + SUM_BLOCK, end)
        side[:] = 0
        for j in range(i, stop):
            r = e_rows[j]
            v0, v1, v2, v3 = e_values[j, 0], e_values[j, 1], e_values[j, 2], e_values[j, 3]
            if v0 == 0 and v1 == 0 and v2 == 0 and v3 == 0:  # the other group's row
                continue
            middle = excess_middle(shift[r])
            for e in range(indptr[r], indptr[r + 1]):
                x = np.float32(extra[e]) - middle
                into = side[source[e]]
                into[0] += v0 * x
                into[1] += v1 * x
                into[2] += v2 * x
                into[3] += v3 * x
        for s in range(acc.shape[1]):
            into = side[s]
            acc[0, s] += into[0]
            acc[1, s] += into[1]
            acc[2, s] += into[2]
            acc[3, s] += into[3]
        i = stop


@numba.njit(cache=True, nogil=True)
def group_split(queries, n_parts):  # pragma: no cover - compiled
    """For group_products: how many queries read each row (bin), which groups do (a bit
    each), and (n_parts + 1,) bounds that split the rows into parts of about equal work (a
    row costs a pass for each group that reads it)."""
    n_queries, length = queries.shape
    readers = np.zeros(length, np.uint8)
    groups = np.zeros(length, np.uint8)
    for q in range(n_queries):
        query, bit = queries[q], np.uint8(1 << (q // GROUP))
        for i in range(length):
            nonzero = query[i] != 0
            readers[i] += nonzero
            groups[i] |= bit * nonzero
    cost = np.zeros(length, np.int64)
    for g in range(n_queries // GROUP):
        for i in range(length):
            cost[i] += groups[i] >> g & 1
    total = np.cumsum(cost)
    bounds = np.empty(n_parts + 1, np.int64)
    bounds[0], bounds[n_parts] = 0, length
    for p in range(1, n_parts):
        bounds[p] = np.searchsorted(total, total[-1] * p // n_parts)
    return bounds, readers, groups


@numba.njit(inline="always")
def one_reader(queries, row):  # pragma: no cover - compiled
    """The query that reads a row only one does."""
    q = 0
    while queries[q, row] == 0:
        q += 1
    return q


@numba.njit(inline="always")
def part_entries(queries, inverse, where, shift, indptr, readers, groups, lo, hi
                 ):  # pragma: no cover - compiled
    """group_products' rows among the bins [lo, hi): the coarse rows two or more queries read,
    in classes by which groups read them (class m, a bit per group, in ``n_ptr[m]:n_ptr[m +
    1]``), with each group's values (G, rows, GROUP; zero where a query is); the coarse rows
    only one reads, by query (query q's in ``single_ptr[q]:single_ptr[q + 1]``); the uint16
    rows and the rows with exceptions any reads, with each group's values; each query's share
    of its middle. readers, groups: group_split's. Scales are powers of two: q · (1 / scale)
    is q / scale exactly."""
    n_queries = queries.shape[0]
    n_groups = n_queries // GROUP
    readers, groups = readers[lo:hi], groups[lo:hi]
    size = hi - lo
    n_ptr = np.zeros((1 << n_groups) + 1, np.int64)
    single_ptr = np.zeros(n_queries + 1, np.int64)
    n_wide = n_exceptional = 0
    for i in range(size):
        if readers[i] == 0:
            continue
        if where[lo + i] < 0:
            n_wide += 1
            continue
        n_exceptional += indptr[lo + i + 1] > indptr[lo + i]
        if readers[i] == 1:
            single_ptr[one_reader(queries, lo + i) + 1] += 1
        else:
            n_ptr[groups[i] + 1] += 1
    n_ptr, single_ptr = np.cumsum(n_ptr), np.cumsum(single_ptr)
    n_fill, single_fill = n_ptr[:-1].copy(), single_ptr[:-1].copy()
    n_rows, w_rows, e_rows = (np.empty(n_ptr[-1], np.int64), np.empty(n_wide, np.int64),
                              np.empty(n_exceptional, np.int64))
    n_values = np.empty((n_groups, n_ptr[-1], GROUP), np.float32)
    w_values = np.empty((n_groups, n_wide, GROUP), np.float32)
    e_values = np.empty((n_groups, n_exceptional, GROUP), np.float32)
    single = np.empty(single_ptr[-1], np.int64)
    single_values = np.empty(single_ptr[-1], np.float32)
    middles = np.zeros(n_queries)
    v = np.empty(n_queries)
    nw = ne = 0
    for i in range(size):
        if readers[i] == 0:
            continue
        row = lo + i
        for q in range(n_queries):
            v[q] = queries[q, row] * inverse[q]
        w = where[row]
        if w >= 0:
            k = shift[row]
            half = ((1 << k) - 1) * 0.5
            for q in range(n_queries):
                middles[q] += v[q] * half
            if readers[i] == 1:
                q = one_reader(queries, row)
                single[single_fill[q]] = w
                single_values[single_fill[q]] = np.float32(v[q]) * np.float32(1 << k)
                single_fill[q] += 1
            else:
                at = n_fill[groups[i]]
                n_fill[groups[i]] += 1
                n_rows[at] = w
                for q in range(n_queries):
                    n_values[q // GROUP, at, q % GROUP] = np.float32(v[q]) * np.float32(1 << k)
            if indptr[row + 1] > indptr[row]:
                e_rows[ne] = row
                for q in range(n_queries):
                    e_values[q // GROUP, ne, q % GROUP] = np.float32(v[q])
                ne += 1
        else:
            w_rows[nw] = -1 - w
            for q in range(n_queries):
                w_values[q // GROUP, nw, q % GROUP] = np.float32(v[q])
            nw += 1
    return (n_rows, n_values, n_ptr, w_rows, w_values, e_rows, e_values, single,
            single_values, single_ptr, middles)


@numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def group_products(narrow, wide, queries, scales, where, shift, indptr, source, extra, split,
                   blocks, parts, middles, longest):  # pragma: no cover - compiled
    """products for G groups of GROUP queries (G·GROUP, L) in one pass over the union of their
    rows: parts (P, G, GROUP, N), each part's share of each query's middle (P, G·GROUP) and
    the most terms any of its float32 sums added (P,). Part p takes the bins bounds[p] to
    bounds[p + 1] (split: group_split's), finds its rows there (part_entries: on every thread; one
    thread took 1.4 ms a batch of 8 at 1,000 sources) and multiplies them. A block of
    SUM_BLOCK coarse rows is multiplied with each group that reads it while it is in cache,
    so a batch of 8 reads a row shared by both its groups once from memory, not twice (15-20%
    less time than a pass a group, AVX2 EPYC); a coarse row only one query reads goes into
    that query's sums alone (rows_into's pass), not with GROUP − 1 zero products."""
    n_parts, n_groups = parts.shape[0], parts.shape[1]
    inverse = 1.0 / scales
    bounds, readers, groups = split
    for p in numba.prange(n_parts):
        (n_rows, n_values, n_ptr, w_rows, w_values, e_rows, e_values, single, single_values,
         single_ptr, part_middles) = part_entries(queries, inverse, where, shift, indptr,
                                                  readers, groups, bounds[p], bounds[p + 1])
        middles[p] = part_middles
        most = min(max(len(w_rows), len(e_rows)), SUM_BLOCK)
        acc, block = parts[p], blocks[p]
        acc[:] = 0
        for m in range(1, len(n_ptr) - 1):
            r, end = n_ptr[m], n_ptr[m + 1]
            most = max(most, min(end - r, SUM_BLOCK))
            while r < end:
                stop = min(r + SUM_BLOCK, end)
                for g in range(n_groups):
                    if m >> g & 1:
                        scratch, sums = block[g], acc[g]
                        scratch[:] = 0
                        group_into(scratch, narrow, n_rows, n_values[g], r, stop)
                        for t in range(GROUP):
                            for s in range(sums.shape[1]):
                                sums[t, s] += scratch[t, s]
                r = stop
        for g in range(n_groups):
            group_blocks_into(acc[g], block[g], wide, w_rows, w_values[g], 0, len(w_rows))
            for t in range(GROUP):
                q = g * GROUP + t
                most = max(most, min(single_ptr[q + 1] - single_ptr[q], SUM_BLOCK))
                blocks_into(acc[g, t], block[g, 0], narrow, single, single_values,
                            single_ptr[q], single_ptr[q + 1])
            exceptions_into(acc[g], block[g], shift, indptr, source, extra, e_rows,
                            e_values[g], 0, len(e_rows))
        longest[p] = most
