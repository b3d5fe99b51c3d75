"""CPU extraction engines side by side: how fast each runs the backbone on this machine, how far
its features are from eager torch's, and what that does to counts and rankings.

    python -m bench.bench_engines [--views 64] [--samples 100]

1. Forward pass, 2 threads, the extractor's fixed micro-batch: eager torch, channels-last,
   ONNX Runtime (the backbone exported to ONNX) and OpenVINO (when installed), on
   EfficientNet-Lite0 (real weights) and ResNet34 (random weights: the same arithmetic).
2. The demo's tasks (real CT, MR, US, X-ray, fundus, histology, brain images from the
   packages), each fingerprinted twice in one space (the same edges): once with torch, once
   with ONNX Runtime. Reported: the share of counts that moved to another bin, the bKLD
   between a task's two fingerprints next to the smallest bKLD between two different tasks,
   and whether every task's nearest neighbours come out in the same order.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_core import write_section
from bench.bench_cpu import FORWARD_BACKBONES, random_views
from rayfp.extract.backbones import MICRO_BATCH, FeatureExtractor, OnnxBackbone
from rayfp.search import cpu


def views_per_second(fn, views: int, repeats: int = 3) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return views * repeats / (time.perf_counter() - started)


def openvino_forward(extractor: FeatureExtractor):
    """OpenVINO on the same ONNX graph (f32 inference), or None when it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(extractor.model, (torch.zeros(MICRO_BATCH, 3, 224, 224),), buffer,
                          input_names=["views"], output_names=["features"], dynamo=False)
    core = ov.Core()
    model = core.read_model(buffer.getvalue())
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 2,
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda chunk: torch.from_numpy(request.infer({0: chunk.numpy()})[
        compiled.output(0)].copy())


def bench_forward(views: int, repeats: int = 3) -> list[tuple[str, str]]:
    rows = []
    batch = random_views(views)
    for name, random_weights in FORWARD_BACKBONES:
        extractor = FeatureExtractor(name, random_weights=random_weights, threads=2)
        reference = extractor.extract(batch)
        eager = views_per_second(lambda e=extractor, b=batch: e.extract(b), len(batch), repeats)
        rows.append((f"{name}, eager torch", f"{eager:.1f} views/s"))
        engines = {"channels-last torch": None,
                   "ONNX Runtime": OnnxBackbone(extractor.model, batch=MICRO_BATCH, threads=2),
                   "OpenVINO (f32)": openvino_forward(extractor)}
        model = extractor.model
        for engine, forward in engines.items():
            if engine == "channels-last torch":
                cl = model.to(memory_format=torch.channels_last)
                extractor.forward = lambda x, m=cl: m(x.contiguous(
                    memory_format=torch.channels_last))
            elif forward is None:
                rows.append((f"{name}, {engine}", "not installed"))
                continue
            else:
                extractor.forward = forward
            speed = views_per_second(lambda e=extractor, b=batch: e.extract(b), len(batch),
                                     repeats)
            features = extractor.extract(batch)
            diff = np.abs(features - reference).max()
            rows.append((f"{name}, {engine}",
                         f"{speed:.1f} views/s ({speed / eager:.2f}x eager); max feature "
                         f"difference {diff:.2e} ({diff / np.abs(reference).max():.1e} of the "
                         "largest feature)"))
        extractor.model = model.to(memory_format=torch.contiguous_format)
        for row in rows[-4:]:
            print(row, flush=True)
        batch = batch[:max(MICRO_BATCH, views // 2)]  # resnet34: ~8x the FLOPs
    return rows


def bench_counts(samples: int, task_limit: int | None = None) -> list[tuple[str, str]]:
    """The demo's tasks (the first ``task_limit``, or all) fingerprinted with both engines in
    one space's edges."""
    from rayfp.cli.demo import DEMO_BACKBONE, DEMO_MIN_IMAGES, build_demo_tasks
    from rayfp.core.distance import LinearIndex, bkld
    from rayfp.extract.api import create_space, extractor_for_space, fingerprint_task
    from rayfp.privacy.mechanism import PrivacySpec
    from rayfp.store.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        tasks = build_demo_tasks(Path(tmp) / "data")
        names = list(tasks)[:task_limit]
        base = create_space([[tasks[t][0]] for t in names], backbone=DEMO_BACKBONE, bins=100,
                            store=store, samples_per_task=max(samples // 2, 16),
                            reference_names=names, engine="torch").space
        spaces = {"torch": base}
        spaces["onnxruntime"] = dataclasses.replace(
            base, preprocessing={**base.preprocessing, "engine": "onnxruntime"})
        store.put_space(spaces["onnxruntime"])
        fps, seconds = {}, {}
        for engine, space in spaces.items():
            extractor = extractor_for_space(space, threads=2)
            started = time.perf_counter()
            fps[engine] = [fingerprint_task([tasks[t][0]], task_id=t, space_id=space.space_id,
                                            store=store, samples=samples, seed=i,
                                            min_images=DEMO_MIN_IMAGES, extractor=extractor,
                                            privacy=PrivacySpec.none()).fingerprint
                           for i, t in enumerate(names)]
            seconds[engine] = time.perf_counter() - started
            print(f"{engine}: {len(names)} tasks in {seconds[engine]:.0f} s", flush=True)
    torch_fps = fps["torch"]
    # The same edges: compare the two engines' counts as if in one space.
    ort_fps = [dataclasses.replace(fp, space_id=base.space_id) for fp in fps["onnxruntime"]]
    moved = [np.abs(a.counts - b.counts).sum() / (2 * a.counts.sum())
             for a, b in zip(torch_fps, ort_fps)]
    # bKLD of a fingerprint with itself is not 0 (the paper's formula), so compare each pair's
    # distance under the two engines with the gaps that decide rankings.
    pairs = [(i, j) for i in range(len(names)) for j in range(len(names)) if i != j]
    change = max(abs(bkld(ort_fps[i], ort_fps[j]) - bkld(torch_fps[i], torch_fps[j]))
                 for i, j in pairs)
    gaps = []
    for i in range(len(names)):
        ranked = sorted(bkld(torch_fps[i], torch_fps[j]) for j in range(len(names)) if j != i)
        gaps += list(np.diff(ranked))
    orders = []
    for engine in ("torch", "onnxruntime"):
        index = LinearIndex(fps[engine])
        orders.append([[t for t, _ in index.top_k(fp, len(names) - 1)] for fp in fps[engine]])
    same_order = sum(a == b for a, b in zip(*orders))
    same_top1 = sum(a[0] == b[0] for a, b in zip(*orders))
    views = samples * len(names)
    return [
        (f"demo: {len(names)} tasks x {samples} views, end to end (decode, views, forward, "
         "counts)", f"torch {views / seconds['torch']:.1f} views/s, ONNX Runtime "
                    f"{views / seconds['onnxruntime']:.1f} views/s "
                    f"({seconds['torch'] / seconds['onnxruntime']:.2f}x)"),
        ("counts that moved to another bin (ONNX Runtime vs torch)",
         f"mean {np.mean(moved):.2e}, max {np.max(moved):.2e} of all counts"),
        ("largest change of a pair's bKLD (ONNX Runtime vs torch)",
         f"{change:.2e}; the smallest gap between two neighbours in any task's ranking: "
         f"{min(gaps):.2e}, the median gap {np.median(gaps):.2e}"),
        ("every task's ranking of the other tasks",
         f"identical order for {same_order}/{len(names)} tasks; identical top-1 for "
         f"{same_top1}/{len(names)}"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=64, help="views per forward timing")
    parser.add_argument("--samples", type=int, default=100, help="views per demo task")
    parser.add_argument("--tasks", type=int, default=None,
                        help="the first N demo tasks only (the test suite's tiny run)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per engine")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = bench_forward(args.views, args.repeats) + bench_counts(args.samples, args.tasks)
    for what, result in rows:
        print(f"{what}: {result}")
    if not args.no_write:
        write_section(rows, f"CPU extraction engines ({cpu.describe()['torch_capability']})",
                      f"python -m bench.bench_engines --views {args.views} --samples "
                      f"{args.samples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
