"""Ray Data pipeline vs a bare single-process PyTorch loop, side by side on the same images.

    python -m bench.bench_pipeline [--samples 256] [--tasks 4] [--threads 2]

(a) bare loop: decode -> preprocess -> forward -> histogram in this process (rayfp.extract);
(b) the archive job's pipeline on a local Ray (2 CPUs here): inventory pass + fingerprint pass.
Prints images/s of each, their ratio, and the peak resident memory of each (whole process tree),
for the archive at 1x and 4x its size. Appends a section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.bench_core import write_section
from rayfp.cli.demo import dicom_corpus
from rayfp.core.fingerprint import FingerprintSpace  # noqa: E402
from rayfp.extract.api import extractor_for_space, load_extractor
from rayfp.extract.views import fingerprint_inventory
from rayfp.io import discover_sources  # noqa: E402
from rayfp.io.inventory import take_inventory
from rayfp.io.sources import list_archive
from rayfp.store.store import Store  # noqa: E402

TASK_FILES = {
    "mr": ["MR_small.dcm", "emri_small.dcm", "MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"],
    "us": ["US1_UNCR.dcm", "OBXXXX1A.dcm", "color-pl.dcm", "examples_palette.dcm"],
    "ct": ["CT_small.dcm", "693_UNCR.dcm", "eCT_Supplemental.dcm"],
    "xr": ["RG1_UNCR.dcm", "RG3_UNCR.dcm"],
}


def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def own_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples resident memory every 0.2 s: of this process alone, or with all descendants
    (the local Ray cluster's raylet and workers)."""

    def __init__(self, *, tree: bool) -> None:
        self.tree = tree
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss_bytes(os.getpid()) if self.tree else own_rss_bytes()
            self.peak = max(self.peak, rss)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def build_archive(root: Path, copies: int, n_tasks: int) -> Path:
    corpus = {p.name: p for p in dicom_corpus()}
    for copy in range(copies):
        for task, names in list(TASK_FILES.items())[:n_tasks]:
            folder = root / f"{task}-{copy}"
            folder.mkdir(parents=True)
            for name in names:
                shutil.copy(corpus[name], folder / name)
    return root


def make_space(store: Store) -> FingerprintSpace:
    extractor = load_extractor("efficientnet_lite0")
    dim = extractor.spec.feature_dim
    space = FingerprintSpace(backbone="efficientnet_lite0", weights_sha256=extractor.weights_sha256,
                             preprocessing=extractor.spec.preprocessing, dim=dim, bins=100,
                             edges_lo=np.zeros(dim), edges_hi=np.full(dim, 3.0))
    store.put_space(space)
    return space


def bare_loop(archive: Path, space: FingerprintSpace, samples: int, threads: int) -> tuple[float, int]:
    extractor = extractor_for_space(space, threads=threads)
    views = 0
    t0 = time.perf_counter()
    for task_dir in sorted(archive.iterdir()):
        inventory = take_inventory(discover_sources([task_dir]), task_id=task_dir.name)
        fingerprint_inventory(inventory, space, extractor, samples=samples, seed=0)[0]
        views += samples
    return time.perf_counter() - t0, views


def ray_pipeline(archive: Path, space: FingerprintSpace, store: Path, samples: int,
                 threads: int) -> tuple[float, int]:
    from rayfp.cluster.pipeline import ArchiveJobConfig, fingerprint_archive, take_archive_inventory

    Store(store).put_space(space)
    config = ArchiveJobConfig(store=str(store), samples=samples, min_images=1, threads=threads,
                              frames_per_batch=8)
    t0 = time.perf_counter()
    inventories = take_archive_inventory(list_archive(archive))
    report = fingerprint_archive(inventories, space, config, on_progress=lambda _: None)
    return time.perf_counter() - t0, report.views


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="views per task")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = Store(tmp / "store")
        space = make_space(store)
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows.append(("ray.init (local, not counted below)", f"{time.perf_counter() - t0:.1f} s"))
        for copies in (1, 4):
            archive = build_archive(tmp / f"archive-x{copies}", copies, args.tasks)
            with PeakMemory(tree=False) as bare_mem:
                bare_s, bare_views = bare_loop(archive, space, args.samples, args.threads)
            with PeakMemory(tree=True) as ray_mem:
                ray_s, ray_views = ray_pipeline(archive, space, tmp / f"ray-store-{copies}",
                                                args.samples, args.threads)
            assert bare_views == ray_views
            bare_rate, ray_rate = bare_views / bare_s, ray_views / ray_s
            label = f"archive x{copies}: {copies * args.tasks} tasks x {args.samples} views"
            rows.append((f"{label}, bare PyTorch loop",
                         f"{bare_rate:.1f} images/s; peak RSS (this process) "
                         f"{bare_mem.peak / 2**30:.2f} GiB"))
            rows.append((f"{label}, Ray Data pipeline",
                         f"{ray_rate:.1f} images/s ({ray_rate / bare_rate:.2f}x the bare loop); "
                         f"peak RSS (driver + Ray workers) {ray_mem.peak / 2**30:.2f} GiB"))
            print("\n".join(f"{w}: {r}" for w, r in rows[-2:]), flush=True)
        ray.shutdown()
    for what, result in rows:
        print(f"{what}: {result}")
    if not args.no_write:
        write_section(rows, "Archive pipeline vs bare loop",
                      f"python -m bench.bench_pipeline --samples {args.samples} --tasks "
                      f"{args.tasks} --threads {args.threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
