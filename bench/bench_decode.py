"""How fast the cloud decodes a query's fingerprint: the standard library's base64 and zlib
against pybase64 and zlib-ng (what the cloud extra installs), side by side in one run.

    python -m bench.bench_decode [--samples 1000 10000] [--repeats 200] [--no-write]

Every query the service ranks is decoded first, on the replica's event loop (rayfp/cloud/wire.py):
base64, then zlib, then the checks. The query is a bench_shards source (D = 512, B = 100, widths
0.03-0.1) sent as the client sends it (encode_fingerprint: the narrowest count type, zlib level
1). The two library sets alternate in rounds, and each must give the same fingerprint.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import zlib

import numpy as np

from bench.bench_core import synthetic_space, write_section
from bench.bench_cpu import best_of
from bench.bench_shards import SourceShape
from rayfp.cloud import wire
from rayfp.cloud.models import Query

TITLE = "Query decoding: the standard library against pybase64 and zlib-ng"
ROUNDS = 5


@contextlib.contextmanager
def standard_library():
    """wire's decoding through the standard library, as on a light client."""
    saved = wire.b64decode, wire.zlib
    wire.b64decode, wire.zlib = base64.b64decode, zlib
    try:
        yield
    finally:
        wire.b64decode, wire.zlib = saved


def bench_samples(samples: int, repeats: int) -> list[tuple[str, str]]:
    space = synthetic_space(512, 100)
    query = SourceShape((0.03, 0.1), samples).make(space, "query-1000000001")
    body = json.dumps({"fingerprint": wire.encode_fingerprint(query), "k": 5})
    payload = Query.model_validate_json(body).fingerprint

    def decode():
        return wire.decode_fingerprint(
            space, task_id="<query>", counts=payload.counts, feature_sum=payload.feature_sum,
            n=payload.n, n_images=payload.n_images, counts_dtype=payload.counts_dtype,
            compression=payload.compression)

    raw = wire.b64decode(payload.counts)
    steps = {"decode_fingerprint": decode,
             "base64 of the counts": lambda: wire.b64decode(payload.counts, validate=True),
             "inflating the counts": lambda: wire.zlib.decompressobj().decompress(raw)}
    fast = {name: [] for name in steps}
    plain = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, run in steps.items():
            fast[name].append(best_of(run, repeats) * 1e3)
            with standard_library():
                plain[name].append(best_of(run, repeats) * 1e3)
    with standard_library():
        expected = decode()
    got = decode()
    assert np.array_equal(got.counts, expected.counts)
    assert np.array_equal(got.feature_sum, expected.feature_sum)
    label = (f"N = {samples:,}: {payload.counts_dtype} counts, {len(body) / 1e3:.0f} KB "
             f"request ({len(zlib.decompress(raw)) / 1e3:.0f} KB of counts)")
    rows = []
    for name in steps:
        before, after = float(np.median(plain[name])), float(np.median(fast[name]))
        rows.append((f"{label}, {name}",
                     f"{before:.3f} ms with the standard library, {after:.3f} ms with pybase64 "
                     f"and zlib-ng ({before / after:.1f}x)"))
    rows[0] = (rows[0][0], rows[0][1] + "; the same fingerprint either way")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--repeats", type=int, default=200, help="calls per round")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for samples in args.samples:
        rows += bench_samples(samples, args.repeats)
        for row in rows[-3:]:
            print(row, flush=True)
    if not args.no_write:
        from rayfp.search import cpu

        write_section(rows, f"{TITLE} ({cpu.describe()['torch_capability']})",
                      "python -m bench.bench_decode --samples "
                      + " ".join(map(str, args.samples)) + f" --repeats {args.repeats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
