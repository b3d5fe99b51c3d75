"""Local fingerprinting on a GPU (no Ray): where does the time go, per backbone?

    python bench/bench_gpu_local.py [--samples 10000] [--json OUT.json]

Measures, for each backbone: (1) the bare network forward (fixed micro-batches, fp32) and
(2) the whole local path of `rayfp fingerprint` (decode -> canonicalise -> crop/flip -> forward ->
histogram) over pydicom's bundled images, with the time split between view generation, forward
and binning. Run it where a GPU is; it also runs on CPU with --samples 256.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rayfp.backbones import FeatureExtractor
from rayfp.extract import iter_view_batches, take_inventory
from rayfp.fingerprint import FingerprintSpace, PartialCounts, merge_counts, sample_plan
from rayfp.io import discover_sources


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def images():
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    return take_inventory(discover_sources([folder])).images


def bench_backbone(name: str, refs, samples: int, batch_size: int) -> dict:
    extractor = FeatureExtractor(name, random_weights=(name == "resnet34"))
    dim = extractor.spec.feature_dim
    space = FingerprintSpace(backbone=name, weights_sha256=extractor.weights_sha256,
                             preprocessing={}, dim=dim, bins=100, edges_lo=np.zeros(dim),
                             edges_hi=np.full(dim, 2.0))
    views = torch.rand(extractor.micro_batch * 8, 3, 224, 224)
    extractor.extract(views)  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(3):
        extractor.extract(views)
    sync()
    forward_only = 3 * len(views) / (time.perf_counter() - t0)

    plan = sample_plan(len(refs), samples, seed=0)
    t_views = t_forward = t_bin = 0.0
    parts = []
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    for batch in iter_view_batches(refs, plan, batch_size, device=extractor.device):
        t1 = time.perf_counter()
        features = extractor.extract(batch)
        t2 = time.perf_counter()
        parts.append(PartialCounts.from_features(features, space))
        t3 = time.perf_counter()
        t_views += t1 - t0
        t_forward += t2 - t1
        t_bin += t3 - t2
        t0 = time.perf_counter()
    total = time.perf_counter() - t_start
    merged = merge_counts(parts)
    assert merged.n == samples
    return {"backbone": name, "device": str(extractor.device), "micro_batch": extractor.micro_batch,
            "forward_only_img_s": round(forward_only, 1),
            "pipeline_img_s": round(samples / total, 1), "samples": samples,
            "images": len(refs), "seconds": {"views": round(t_views, 2),
                                             "forward": round(t_forward, 2),
                                             "binning": round(t_bin, 2)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    refs = images()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    results = {"machine": f"{platform.node()}: {gpu}, torch {torch.__version__}", "runs": []}
    for name in ("efficientnet_lite0", "resnet34"):
        run = bench_backbone(name, refs, args.samples, args.batch_size)
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
