"""Per-query confidence: is it calibrated, and what does it cost?

Parts (each writes bench/results/confidence-<part>.json; `report` writes BENCHMARKS.md's
"Per-query confidence" section and docs/confidence.png):

- ``calibration``: 1,000 synthetic tasks in 20 families (D = 512, B = 100) as the knowledge base
  (their large-sample fingerprints). Held-out tasks of the same families are queried with M
  images (5 ... 1,000) and N views; each query carries R = 32 bootstrap replicates from its view
  table, ranked exactly as the service does (KnowledgeBase.nearest_with_replicates). Truth: the
  top-1 of the query task's large-sample fingerprint. Exact queries, and private ones at ε = 1
  (replicates at ε = 1 too, total composed).
- ``demo``: the demo's 14 real tasks (EfficientNet-Lite0), each queried against the other 13
  with 32 replicates; truth: its same-modality partner (what the demo checks).
- ``cost``: one query against a query with R = 32 replicates, at 1,000 and 10,000 sources,
  side by side in one run (the ranking step, and decoding the replicates from the wire).

    python -m bench.bench_confidence calibration demo cost report [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.core.fingerprint import PartialCounts, bin_indices, finalize
from rayfp.core.replicates import ViewTable
from rayfp.core.sampling import sample_plan
from rayfp.privacy.mechanism import PrivacySpec, release
from rayfp.privacy.replicates import query_replicates
from rayfp.privacy.synthetic import TaskFamilies, expected_fingerprint, synthetic_space
from rayfp.store.store import Store

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
R = 32


def _save(part: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"confidence-{part}.json").write_text(json.dumps(payload, indent=1))


def _load(part: str) -> dict | None:
    path = RESULTS / f"confidence-{part}.json"
    return json.loads(path.read_text()) if path.is_file() else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatentFamilies(TaskFamilies):
    """Tasks of a family differ along the family's image factors (latent shift ``shift`` per
    factor) instead of independently per dimension: a few images, whose own latents scatter
    along the same factors, can then really mistake one sibling for another. With
    TaskFamilies' independent offsets every exact query was certain (measured: stability 1.0,
    agreement 1.0 down to M = 5), which tests nothing."""

    shift: float = 0.5

    def draw(self, count: int, *, prefix: str = "task", offset: int = 0):
        tasks = super().draw(count, prefix=prefix, offset=offset)
        rng = np.random.default_rng([self.seed, offset, 1])
        return [dataclasses.replace(t, mean=t.mean + t.factors @ (
            self.shift * rng.standard_normal(self.rank))) for t in tasks]


FAMILIES = LatentFamilies(dim=512, spread=0.02, shift=0.5)


def _synthetic_kb(sources: int, root: Path):
    families = FAMILIES
    tasks = families.draw(sources)
    space = synthetic_space(tasks[:40])
    store = Store(root)
    store.put_space(space)
    # One commit per chunk, not per source: 1,000 commits took most of a minute.
    for start in range(0, len(tasks), 500):
        store.put_fingerprints([expected_fingerprint(task, space, samples=10_000, n_images=1000)
                                for task in tasks[start:start + 500]])
    return families, space, KnowledgeBase(store, min_images=1)


def _query(task, space, *, images: int, samples: int, epsilon: float, rng, seed: int):
    """A held-out task's fingerprint from ``images`` fresh images and its view table."""
    spec = PrivacySpec(epsilon=epsilon, seed=seed) if math.isfinite(epsilon) else \
        PrivacySpec.none()
    plan = sample_plan(images, samples, seed, plan=spec.plan)
    per_image = np.bincount(plan.image_index, minlength=images)
    views = task.views(per_image, rng)
    image_of_view = np.repeat(np.arange(images), per_image)
    keys = [f"img{i:05d}" for i in image_of_view]
    summed = views if not spec.private else np.clip(views, space.edges_lo, space.edges_hi)
    table = ViewTable.from_batches(space, task.name, [(keys, bin_indices(views, space), summed)])
    partial = PartialCounts.from_features(views, space, clip_sum=spec.private)
    released, record = release(partial, space, task_id=task.name, n_images=images, spec=spec,
                               min_images=1)
    return finalize(released, task_id=task.name, n_images=images, privacy=record), table


def calibration(quick: bool, only_private: bool = False) -> dict:
    previous = _load("calibration") if only_private else None
    rows = [r for r in (previous or {}).get("rows", []) if r["epsilon"] is None]
    with tempfile.TemporaryDirectory() as tmp:
        sources = 200 if quick else 1000
        families, space, kb = _synthetic_kb(sources, Path(tmp) / "kb")
        targets = families.draw(20 if quick else 60, prefix="query", offset=50_000)
        # The large-sample answer: the same recipe on 5,000 fresh images and 10,000 views.
        rng = np.random.default_rng(7)
        truth = {t.name: kb.nearest_to_fingerprint(_query(
            t, space, images=5000, samples=10_000, epsilon=math.inf, rng=rng, seed=i)[0],
            k=1)[0].task_id for i, t in enumerate(targets)}
        settings = [] if only_private else [(m, math.inf, "bootstrap")
                                            for m in (5, 10, 20, 50, 200)]
        settings += [(m, 1.0, resampling) for resampling in ("parametric", "bootstrap")
                     for m in (50, 200, 1000)]
        for images, epsilon, resampling in settings:
            started = time.perf_counter()
            rng = np.random.default_rng(images)
            for i, task in enumerate(targets):
                fp, table = _query(task, space, images=images, samples=2000, epsilon=epsilon,
                                   rng=rng, seed=1000 * images + i)
                replicates, record = query_replicates(table, fp, space, replicates=R,
                                                      resample_seed=i, resampling=resampling)
                found, confidence = kb.nearest_with_replicates(fp, replicates, k=5)
                rows.append({"images": images, "epsilon": None if math.isinf(epsilon)
                             else epsilon, "resampling": resampling, "task": task.name,
                             "top1": found[0].task_id,
                             "truth": truth[task.name], "stability": confidence.stability,
                             "agrees": found[0].task_id == truth[task.name],
                             "epsilon_total": record.get("epsilon_total")})
            print(f"M={images} ε={epsilon:g} {resampling}: "
                  f"{time.perf_counter() - started:.1f} s, "
                  f"agree {np.mean([r['agrees'] for r in rows[-len(targets):]]):.2f}, "
                  f"mean stability {np.mean([r['stability'] for r in rows[-len(targets):]]):.2f}",
                  flush=True)
    payload = {"sources": sources, "queries_per_setting": len(targets), "replicates": R,
               "samples": 2000, "rows": rows}
    _save("calibration", payload)
    return payload


def demo() -> dict:
    """The demo itself (each task against the other 13, 32 replicates from its kept views);
    truth: the demo's check, a nearest task of the same modality."""
    from rayfp.cli.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        summary = run_demo(Path(tmp) / "demo", progress=False)
    rows = [{"task": r["task"], "top1": r["nearest"], "agrees": r["same"],
             "stability": r["stability"]} for r in summary["nearest"]]
    payload = {"rows": rows, "replicates": R}
    _save("demo", payload)
    return payload


def _median_time(fn, *args, repeat: int = 7, **kwargs) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _through_the_service(store_root: Path, fp, replicates) -> tuple[float, float]:
    """Median HTTP time of /v1/nearest without and with the replicates (Ray Serve on local
    Ray, as `rayfp serve` runs it); requests encoded once beforehand."""
    import socket
    import urllib.request

    import ray
    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve
    from rayfp.cloud.wire import encode_fingerprint, encode_replicates

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start_local_serve("127.0.0.1", port, num_cpus=2)
    serve.run(build_app({"store": str(store_root), "max_epsilon": None}), name="bench",
              route_prefix="/")
    bodies = [json.dumps({"fingerprint": encode_fingerprint(fp), "k": 5}).encode(),
              json.dumps({"fingerprint": encode_fingerprint(fp), "k": 5,
                          "replicates": encode_replicates(*replicates)}).encode()]

    def post(body: bytes) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/nearest", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()

    try:
        space_id = json.loads(bodies[0])["fingerprint"]["space_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/spaces/{space_id}",
                                    timeout=600) as response:  # hubness measured before timing
            response.read()
        out = tuple(_median_time(post, body, repeat=15) for body in bodies)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def cost(quick: bool) -> dict:
    from rayfp.cloud.wire import decode_replicates, encode_replicates

    rows = []
    # quick: a run-through (the test suite), below ScreenedIndex.CAREFUL_FROM: the kernel is
    # chosen in ~2 s, not ~20 (twice: here and in the service)
    sizes = (200,) if quick else (1000, 10_000)
    for sources in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            families, space, kb = _synthetic_kb(sources, Path(tmp) / "kb")
            task = families.draw(1, prefix="query", offset=90_000)[0]
            rng = np.random.default_rng(0)
            fp, table = _query(task, space, images=200, samples=10_000, epsilon=math.inf,
                               rng=rng, seed=1)
            replicates, record = query_replicates(table, fp, space, replicates=R,
                                                  resample_seed=0)
            kb.nearest_to_fingerprint(fp, k=5)  # warm the index
            kb.hubness(space.space_id)  # measured now, not in a thread during the timings
            wire = encode_replicates(replicates, record)

            fields = {k: wire[k] for k in ("counts", "feature_sum", "n", "counts_dtype",
                                           "compression")}
            single = _median_time(kb.nearest_to_fingerprint, fp, k=5)
            with_r = _median_time(kb.nearest_with_replicates, fp, replicates, k=5)
            decode = _median_time(decode_replicates, space, fp, **fields)
            make = _median_time(query_replicates, table, fp, space, replicates=R,
                                resample_seed=0, repeat=3)
            body = len(json.dumps(wire))
            http_single, http_r = _through_the_service(kb.store.root, fp, (replicates, record))
            rows.append({"sources": sources, "single_ms": single * 1e3,
                         "replicates_ms": with_r * 1e3, "ratio": with_r / single,
                         "decode_ms": decode * 1e3, "site_make_ms": make * 1e3,
                         "wire_bytes": body, "http_single_ms": http_single * 1e3,
                         "http_replicates_ms": http_r * 1e3, "http_ratio": http_r / http_single})
            print(rows[-1], flush=True)
    payload = {"rows": rows, "replicates": R, "dim": 512, "bins": 100}
    _save("cost", payload)
    return payload


def report() -> None:
    from bench.bench_core import machine
    from bench.confidence_report import write_report

    write_report(_load("calibration"), _load("demo"), _load("cost"), machine())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=("calibration", "demo", "cost", "report"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only-private", action="store_true",
                        help="calibration: redo the private settings, keep the exact rows")
    args = parser.parse_args(argv)
    for part in args.parts:
        if part == "calibration":
            calibration(args.quick, args.only_private)
        elif part == "demo":
            demo()
        elif part == "cost":
            cost(args.quick)
        else:
            report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


