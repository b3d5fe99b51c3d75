"""Core benchmarks: fingerprint size on disk, top-k speed (linear form vs direct
formula), DICOM decode throughput, local fingerprinting throughput per backbone.

    python -m bench.bench_core [--quick]

Prints a table and writes/updates the "core" section of BENCHMARKS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rayfp.cli.demo import dicom_corpus
from rayfp.core.distance import TARGET_SOFTMAX, LinearIndex, bkld
from rayfp.core.fingerprint import Fingerprint, FingerprintSpace
from rayfp.errors import DecodeError
from rayfp.extract.backbones import FeatureExtractor
from rayfp.extract.views import fingerprint_inventory
from rayfp.io import ImageSource, decode_file
from rayfp.io.inventory import take_inventory
from rayfp.search import cpu
from rayfp.store.store import Store

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """Where a number came from: CPU model, cores, SIMD, torch's CPU capability, BLAS."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()}: {cpu.one_line()}; {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def synthetic_space(dim: int, bins: int) -> FingerprintSpace:
    return FingerprintSpace(backbone="synthetic", weights_sha256="0" * 64, preprocessing={},
                            dim=dim, bins=bins, edges_lo=np.zeros(dim), edges_hi=np.ones(dim))


def realistic_fingerprint(rng, space: FingerprintSpace, task_id: str, n: int) -> Fingerprint:
    """Per dimension a discretised Gaussian of random centre/width, as real features look."""
    centres = rng.uniform(0.2, 0.8, space.dim)[:, None]
    widths = rng.uniform(0.05, 0.3, space.dim)[:, None]
    grid = (np.arange(space.bins)[None, :] + 0.5) / space.bins
    p = np.exp(-0.5 * ((grid - centres) / widths) ** 2)
    p /= p.sum(axis=1, keepdims=True)
    counts = np.stack([rng.multinomial(n, row) for row in p])
    return Fingerprint(task_id=task_id, space_id=space.space_id, counts=counts,
                       feature_sum=rng.random(space.dim) * n, n_samples=n, n_images=n // 10)


def bench_bytes(rng) -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        for dim in (512, 1280):
            for bins in (100, 1000):
                space = synthetic_space(dim, bins)
                store.put_space(space)
                fp = realistic_fingerprint(rng, space, f"t{dim}-{bins}", 10_000)
                store.put_fingerprint(fp)
                (path,) = store.fingerprint_files(space.space_id)["path"].to_pylist()
                size = (Path(tmp) / "fingerprints" / path).stat().st_size
                raw = dim * bins * 4
                rows.append((f"fingerprint on disk, D={dim}, B={bins}, N=10,000 (zstd Parquet)",
                             f"{size / 1024:.1f} KiB ({raw / size:.1f}x smaller than raw uint32)"))
    return rows


def bench_topk(rng, sizes: list[int]) -> list[tuple[str, str]]:
    rows = []
    space = synthetic_space(512, 100)
    for n in sizes:
        sources = [realistic_fingerprint(rng, space, f"s{i}", 1000) for i in range(n)]
        target = realistic_fingerprint(rng, space, "target", 1000)
        t0 = time.perf_counter()
        index = LinearIndex(sources)
        build = time.perf_counter() - t0
        queries = 20
        t0 = time.perf_counter()
        for _ in range(queries):
            linear = index.top_k(target, 5)
        linear_ms = (time.perf_counter() - t0) / queries * 1e3
        t0 = time.perf_counter()
        direct = np.array([bkld(target, s, weighting=TARGET_SOFTMAX) for s in sources])
        direct_ms = (time.perf_counter() - t0) * 1e3
        same = [t for t, _ in linear] == [sources[i].task_id for i in np.argsort(direct)[:5]]
        max_err = float(np.abs(index.bkld_all(target) - direct).max())
        rows.append((f"top-5 of {n:,} fingerprints (D=512, B=100), linear form (float64 GEMV)",
                     f"{linear_ms:.1f} ms/query (index build {build:.1f} s, "
                     f"{index.matrix.nbytes / 2**20:.0f} MiB)"))
        rows.append((f"top-5 of {n:,} fingerprints, direct formula",
                     f"{direct_ms:.0f} ms/query ({direct_ms / linear_ms:.0f}x slower; same top-5: "
                     f"{same}; max |diff| {max_err:.1e})"))
        del index, sources
    return rows


def bench_decode() -> list[tuple[str, str]]:
    files = dicom_corpus()
    frames = ok = 0
    t0 = time.perf_counter()
    for path in files:
        try:
            frames += len(decode_file(path))
            ok += 1
        except DecodeError:
            pass
    elapsed = time.perf_counter() - t0
    return [(f"decode pydicom + pydicom-data corpus ({len(files)} files, {ok} with pixels, "
             f"{frames} frames)", f"{frames / elapsed:.0f} frames/s, {len(files) / elapsed:.0f} "
             f"files/s ({elapsed:.1f} s)")]


def bench_fingerprint(samples: int) -> list[tuple[str, str]]:
    rows = []
    corpus = {p.name: p for p in dicom_corpus()}
    names = ["MR_small.dcm", "emri_small.dcm", "US1_UNCR.dcm", "CT_small.dcm", "RG1_UNCR.dcm",
             "OBXXXX1A.dcm", "MR2_UNCR.dcm"]
    inventory = take_inventory([ImageSource(str(corpus[n])) for n in names])
    for backbone, random_weights in (("efficientnet_lite0", False), ("resnet34", True)):
        extractor = FeatureExtractor(backbone, random_weights=random_weights,
                                     threads=os.cpu_count())
        dim = extractor.spec.feature_dim
        space = FingerprintSpace(backbone=backbone, weights_sha256=extractor.weights_sha256,
                                 preprocessing={}, dim=dim, bins=100, edges_lo=np.zeros(dim),
                                 edges_hi=np.full(dim, 2.0))
        fingerprint_inventory(inventory, space, extractor, samples=min(32, samples),
                              seed=0)  # warm-up
        t0 = time.perf_counter()
        fingerprint_inventory(inventory, space, extractor, samples=samples, seed=1)
        elapsed = time.perf_counter() - t0
        note = " (untrained weights: same compute)" if random_weights else ""
        rows.append((f"local fingerprinting, {backbone}{note}, {samples} views of "
                     f"{inventory.n_images} images", f"{samples / elapsed:.1f} views/s"))
    return rows


def write_section(rows: list[tuple[str, str]], title: str, command: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# rayfp benchmarks\n"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())  # shared VMs drift within a day
    lines = [f"## {title}", "", f"Machine: {machine()}  ", f"Date: {stamp}  ",
             f"Command: `{command}`", "", "| what | result |", "|---|---|"]
    lines += [f"| {what} | {result} |" for what, result in rows]
    section = "\n".join(lines) + "\n"
    pattern = re.compile(rf"## {re.escape(title)}\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 sources only, 16 views")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = bench_bytes(rng)
    rows += bench_decode()
    rows += bench_fingerprint(16 if args.quick else 512)  # quick: a run-through (the suite)
    rows += bench_topk(rng, [200] if args.quick else [1000, 10_000])
    width = max(len(w) for w, _ in rows)
    for what, result in rows:
        print(f"{what.ljust(width)}  {result}")
    if not args.quick:
        write_section(rows, "Core", "python -m bench.bench_core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
