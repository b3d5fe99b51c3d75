"""Local fingerprinting on a GPU (no Ray): where does the time go, per backbone?

    python -m bench.bench_gpu_local [--samples 10000] [--json OUT.json]

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

from rayfp import defaults
from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.extract.backbones import FeatureExtractor
from rayfp.extract.views import counts_of_frames, iter_frame_batches
from rayfp.io.inventory import TaskInventory, take_inventory
from rayfp.io.sources import discover_sources
from rayfp.io.work import plan_work


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def images():
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    return take_inventory(discover_sources([folder]), task_id="pydicom")


def bench_backbone(name: str, refs: TaskInventory, samples: int, batch_size: int) -> dict:
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

    # The path every fingerprint takes: decode + canonicalise on the CPU (frames), then crops,
    # forward and histogram where the extractor lives (counts).
    t_frames = t_counts = 0.0
    merged = PartialCounts.empty(space)
    t_start = t0 = time.perf_counter()
    for frames in iter_frame_batches(plan_work(refs, samples=samples, seed=0),
                                     views_per_batch=batch_size):
        t1 = time.perf_counter()
        for part in counts_of_frames(frames, extractor, space).values():
            merged = merged + part
        sync()
        t_frames += t1 - t0
        t_counts += time.perf_counter() - t1
        t0 = time.perf_counter()
    total = time.perf_counter() - t_start
    assert merged.n == samples
    return {"backbone": name, "device": str(extractor.device), "micro_batch": extractor.micro_batch,
            "forward_only_img_s": round(forward_only, 1),
            "pipeline_img_s": round(samples / total, 1), "samples": samples,
            "images": refs.n_images, "seconds": {"frames": round(t_frames, 2),
                                                 "counts": round(t_counts, 2)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=defaults.SAMPLES)
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
