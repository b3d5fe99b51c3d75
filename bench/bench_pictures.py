"""Pictures over HTTP: how long the cloud takes to draw a distance map and a fingerprint, and to
serve them again from its cache; optionally the web page's screenshots for docs/.

    python -m bench.bench_pictures [--sources 1000] [--repeats 9] [--screenshots]

Synthetic fingerprints (D = 512, B = 100, N = 1,000) in a fresh store behind a real Ray Serve
deployment. "Drawn" requests each ask for a different picture (a task's neighbourhood map,
another task's fingerprint), so none is served from the cache; "cached" repeats one.
--screenshots drives Debian's Chromium over the page (a task chosen; a fingerprint file
uploaded) and writes docs/web-page.png and docs/web-upload.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.bench_core import realistic_fingerprint, synthetic_space, write_section
from bench.bench_serve import free_port
from rayfp.cloud.wire import write_fingerprint_file
from rayfp.search import cpu
from rayfp.store.store import Store

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("x_ray", "fundus_photography", "dermatoscopy", "laparoscopy", "ct_scan")


def timed_get(url: str) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
        how = response.headers["X-Rayfp-Picture"]
    return (time.perf_counter() - t0) * 1e3, how, len(body)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return f"p50 {statistics.median(ordered):.1f} ms, p95 {p95:.1f} ms ({len(ordered)} requests)"


def screenshots(base: str, upload: Path, task_id: str) -> list[str]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(base + "/")
        page.wait_for_selector(f"#tasks tr[data-task='{task_id}']")
        page.click(f"#tasks tr[data-task='{task_id}']")
        page.wait_for_selector("#recommendations [data-kind] li")
        page.wait_for_function("document.getElementById('map').naturalWidth > 0 && "
                               "document.getElementById('fp').naturalWidth > 0")
        page.screenshot(path=ROOT / "docs" / "web-page.png", full_page=True)
        page.set_input_files("#upload", str(upload))
        page.wait_for_function("document.getElementById('upload-status').textContent"
                               ".includes('answered')")
        page.screenshot(path=ROOT / "docs" / "web-upload.png", full_page=True)
        browser.close()
    out += ["docs/web-page.png", "docs/web-upload.png"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=9, help="requests per measurement")
    parser.add_argument("--screenshots", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve
    from rayfp.cloud.knowledge import KnowledgeBase
    from rayfp.cloud.paper_import import import_paper

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rng = np.random.default_rng(0)
    space = synthetic_space(512, 100)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        store.put_space(space)
        sources = [realistic_fingerprint(rng, space, f"task-{i:04d}", 1000)
                   for i in range(args.sources)]
        for start in range(0, len(sources), 1000):
            store.put_fingerprints(sources[start:start + 1000])
        store.put_tasks([{"task_id": fp.task_id, "name": fp.task_id, "keywords": [],
                          "task_type": "classification", "n_classes": 2, "owner": "bench",
                          "modality": MODALITIES[i % len(MODALITIES)], "n_images": 1000}
                         for i, fp in enumerate(sources)])
        import_paper(None, store)  # policies and transfers to show (for the paper's ids)
        kb = KnowledgeBase(store, max_epsilon=None)
        policy = store.components().to_pylist()[0]["value"]
        for fp in sources[:20]:
            kb.record_component({"task_id": fp.task_id, "kind": "augmentation",
                                 "value": policy, "metric": "AUROC", "score": 0.8, "seed": 0,
                                 "provenance": "benchmark"})
        port = free_port()
        start_local_serve("127.0.0.1", port, num_cpus=2, log_to_driver=False)
        serve.run(build_app({"store": str(store.root), "max_epsilon": None, "min_images": 1}),
                  name="rayfp", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        space_url = f"{base}/v1/spaces/{space.space_id}/distances.png"
        ids = [fp.task_id for fp in sources]
        # The index's hubness is measured in a background thread once a space is loaded; this
        # waits for it, so the pictures are timed on an idle replica.
        urllib.request.urlopen(f"{base}/v1/spaces/{space.space_id}", timeout=600).read()
        timed_get(f"{base}/v1/tasks/{ids[-1]}/fingerprint.png")  # warm the replica's imports
        drawn_map, sizes = [], []
        for i in range(args.repeats):
            ms, how, size = timed_get(f"{space_url}?task_id={ids[i]}")
            assert how == "drawn", how
            drawn_map.append(ms)
            sizes.append(size)
        cached_map = [timed_get(f"{space_url}?task_id={ids[0]}")[0] for _ in range(args.repeats)]
        whole_ms, _, whole_size = timed_get(space_url)
        drawn_fp = [timed_get(f"{base}/v1/tasks/{ids[i]}/fingerprint.png")[0]
                    for i in range(args.repeats)]
        cached_fp = [timed_get(f"{base}/v1/tasks/{ids[0]}/fingerprint.png")[0]
                     for _ in range(args.repeats)]
        from rayfp.cloud.pictures import NEIGHBOURHOOD, SPACE_MAP_TASKS

        shown = min(args.sources, SPACE_MAP_TASKS)
        rows += [
            (f"distance map, a task and its {min(args.sources, NEIGHBOURHOOD) - 1} nearest "
             "(named), drawn",
             percentiles(drawn_map) + f"; {statistics.median(sizes) / 1024:.0f} KiB"),
            ("distance map, cached", percentiles(cached_map)),
            (f"the space's map ({shown} of {args.sources} tasks), drawn once",
             f"{whole_ms:.0f} ms, {whole_size / 1024:.0f} KiB"),
            ("fingerprint picture (D = 512, B = 100), drawn", percentiles(drawn_fp)),
            ("fingerprint picture, cached", percentiles(cached_fp)),
        ]
        if args.screenshots:
            upload = Path(tmp) / "my-task.json"
            write_fingerprint_file(realistic_fingerprint(rng, space, "my-task", 1000), upload)
            rows.append(("screenshots", ", ".join(screenshots(base, upload, ids[3]))))
        serve.shutdown()
    for what, result in rows:
        print(f"{what}: {result}")
    if not args.no_write:
        write_section(rows, f"Pictures over HTTP ({args.sources} tasks)",
                      "python -m bench.bench_pictures --sources "
                      f"{args.sources} --repeats {args.repeats}"
                      + (" --screenshots" if args.screenshots else ""))
    print(json.dumps({"cpu": cpu.one_line()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
