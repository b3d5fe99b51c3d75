"""The CPU hot paths side by side on this machine: where a choice depends on the processor, which
option is faster here, and whether it would change a fingerprint.

    python -m bench.bench_cpu

- backbone forward: torch threads, channels-last memory format, bfloat16 (oneDNN);
- histogramming features into counts (numpy, the path every fingerprint takes; torch for scale);
- the service's wire decode (uint8 + zlib vs uint32 raw).

A faster option that changes the features (even in the last bit) changes counts, and so the
fingerprint, so it is reported but only used where the features stay bit-identical.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from bench.bench_core import realistic_fingerprint, synthetic_space, write_section
from rayfp.cloud.wire import decode_fingerprint, encode_fingerprint
from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.extract.backbones import FeatureExtractor
from rayfp.search import cpu


def best_of(fn, repeats: int = 5) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


# The backbones the forward benchmarks time: (name, random weights?). ResNet34's weights cannot
# be downloaded here; its speed does not depend on them.
FORWARD_BACKBONES = (("efficientnet_lite0", False), ("resnet34", True))


def random_views(views: int) -> torch.Tensor:
    """The same seeded batch of 224 x 224 views for every forward benchmark."""
    return torch.rand(views, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def bf16_row(extractor: FeatureExtractor, name: str, small: torch.Tensor,
             reference: np.ndarray) -> tuple[str, str]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        started = time.perf_counter()
        features = extractor.extract(small)
        seconds = time.perf_counter() - started
    diff = np.abs(features - reference[:len(small)]).max()
    return (f"forward {name}, bfloat16 autocast (oneDNN "
            f"{'available' if torch.backends.mkldnn.is_available() else 'missing'})",
            f"{len(small) / seconds:.1f} views/s; max feature difference {diff:.2e}")


def bench_forward(views: int, bf16_views: int = 16, repeats: int = 3
                  ) -> list[tuple[str, str]]:
    rows = []
    batch = random_views(views)
    for name, random_weights in FORWARD_BACKBONES:
        extractor = FeatureExtractor(name, random_weights=random_weights, threads=2)
        reference = extractor.extract(batch)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seconds = best_of(lambda e=extractor, b=batch: e.extract(b), repeats=repeats)
            same = np.array_equal(extractor.extract(batch), reference)
            rows.append((f"forward {name}, {len(batch)} views, torch threads {threads}",
                         f"{len(batch) / seconds:.1f} views/s; features identical to 2 threads: "
                         f"{same}"))
        torch.set_num_threads(2)
        model = extractor.model
        extractor.model = model.to(memory_format=torch.channels_last)
        seconds = best_of(lambda e=extractor, b=batch: e.extract(b.contiguous(
            memory_format=torch.channels_last)), repeats=repeats)
        diff = np.abs(extractor.extract(batch.contiguous(memory_format=torch.channels_last))
                      - reference).max()
        rows.append((f"forward {name}, channels-last", f"{len(batch) / seconds:.1f} views/s; max "
                     f"feature difference {diff:.2e}"))
        extractor.model = model.to(memory_format=torch.contiguous_format)
        # bf16 without AMX/AVX512-BF16 is slow (ResNet34 on the AVX2 EPYC: ~30 s for its first
        # view, oneDNN making its bf16 kernels): a short timing will do; 0 views: not timed.
        if bf16_views:
            rows.append(bf16_row(extractor, name, batch[:bf16_views], reference))
        for row in rows[-4:]:
            print(row, flush=True)
        batch = batch[:views // 2]  # resnet34 costs ~8x the FLOPs of EfficientNet-Lite0
    return rows


def torch_bin_counts(features: np.ndarray, space: FingerprintSpace) -> np.ndarray:
    """The same binning as rayfp.core.fingerprint.bin_indices, in torch (for comparison)."""
    x = torch.from_numpy(features).double()
    lo = torch.from_numpy(space.edges_lo.astype(np.float64))
    width = torch.from_numpy(space.edges_hi.astype(np.float64)) - lo
    safe = torch.where(width > 0, width, torch.ones_like(width))
    idx = torch.clamp(torch.floor((x - lo) / safe * space.bins), 0, space.bins - 1).long()
    idx[:, width <= 0] = 0
    flat = (torch.arange(space.dim) * space.bins + idx).reshape(-1)
    return torch.bincount(flat, minlength=space.dim * space.bins).reshape(
        space.dim, space.bins).numpy()


def bench_histogram(n: int) -> list[tuple[str, str]]:
    rows = []
    rng = np.random.default_rng(0)
    for dim, bins in ((512, 100), (1280, 1000)):
        space = FingerprintSpace(backbone="x", weights_sha256="0", preprocessing={}, dim=dim,
                                 bins=bins, edges_lo=np.zeros(dim), edges_hi=np.full(dim, 2.0))
        features = rng.gamma(1.0, 0.5, size=(n, dim)).astype(np.float32)
        numpy_s = best_of(lambda f=features, s=space: PartialCounts.from_features(f, s))
        torch_s = best_of(lambda f=features, s=space: torch_bin_counts(f, s))
        same = np.array_equal(PartialCounts.from_features(features, space).counts,
                              torch_bin_counts(features, space))
        rows.append((f"histogram {n} views into {dim} x {bins} bins",
                     f"numpy {n / numpy_s:,.0f} views/s, torch {n / torch_s:,.0f} views/s; "
                     f"identical counts: {same}"))
        print(rows[-1], flush=True)
    return rows


def bench_wire() -> list[tuple[str, str]]:
    rows = []
    rng = np.random.default_rng(0)
    for dim, bins, n in ((512, 100, 1_000), (1280, 1000, 10_000)):
        space = synthetic_space(dim, bins)
        fp = realistic_fingerprint(rng, space, "q", n)
        for compression in ("zlib", "none"):
            wire = encode_fingerprint(fp, compression=compression)
            payload = {k: v for k, v in wire.items() if k != "space_id"}
            seconds = best_of(lambda p=payload, s=space: decode_fingerprint(s, task_id="q", **p))
            rows.append((f"wire decode D={dim} B={bins} N={n}, {wire['counts_dtype']} "
                         f"{compression}", f"{seconds * 1e3:.2f} ms for "
                                           f"{len(wire['counts']) / 1024:.0f} KiB of counts"))
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=64, help="views per forward timing")
    parser.add_argument("--bf16-views", type=int, default=16,
                        help="views the bfloat16 forward is timed on (0: not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes each")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = bench_forward(args.views, args.bf16_views, args.repeats) + bench_histogram(1024) + bench_wire()
    if not args.no_write:
        write_section(rows, f"CPU hot paths ({cpu.describe()['torch_capability']})",
                      "python -m bench.bench_cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
