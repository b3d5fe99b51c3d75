"""Volumes and tasks in parts: BENCHMARKS.md's "Volumes and tasks in parts" section.

- NIfTI decoding: volumes/s and slices/s (nilearn's MNI152 T1 at 2 mm and 1 mm, .nii.gz), the
  whole decode_file step (load, canonical orientation, window, background rule).
- DICOM series: a 200-slice series of single-slice files (the MNI152 1 mm template written
  with pydicom, at its own 233×197 and padded to 512×512), assembled by the inventory (every
  file decoded, geometry read, ordered, checked): series/s and slices/s.
- The Ray job's inventory over 1,000 synthetic series (8 slices of 64×64 each, 8,000 files):
  peak memory of the driver and of all Ray workers, sampled every 50 ms, against 250 and 500
  series, to show it follows the number of files (small records), not the pixels.
- Merging a task pooled over K = 2, 8, 32 sites in the cloud (KnowledgeBase.receive_part of
  the last part: merge, admission, registration), exact and private, D = 512, B = 100.

    python -m bench.bench_volumes
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench.bench_core import machine
from bench.sections import replace_section
from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.core.fingerprint import FingerprintSpace, PartialCounts
from rayfp.core.parts import PartPlan
from rayfp.io import decode_file
from rayfp.privacy.mechanism import PrivacySpec
from rayfp.privacy.parts import release_part
from rayfp.store.store import Store

TITLE = "Volumes and tasks in parts"


def bench_nifti(folder: Path) -> list[tuple[str, str]]:
    import nibabel as nib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn.datasets import load_mni152_template

        rows = []
        for resolution in (2, 1):
            template = load_mni152_template(resolution=resolution)
            path = folder / f"mni{resolution}.nii.gz"
            nib.save(template, path)
            decode_file(path)  # warm
            times, slices = [], 0
            for _ in range(5):
                started = time.perf_counter()
                slices = len(decode_file(path))
                times.append(time.perf_counter() - started)
            seconds = float(np.median(times))
            shape = "×".join(map(str, template.shape))
            rows.append((f"NIfTI decode, MNI152 {resolution} mm ({shape}, .nii.gz), "
                         f"{slices} foreground slices",
                         f"{1 / seconds:.1f} volumes/s, {slices / seconds:.0f} slices/s"))
    return rows


def bench_series(folder: Path) -> list[tuple[str, str]]:
    from rayfp.io.inventory import take_inventory
    from rayfp.io.series_writer import mni_volume, write_series
    from rayfp.io.sources import discover_sources

    volume, spacing = mni_volume(1)
    volume = np.concatenate([volume, volume[:200 - len(volume)]])  # 200 slices
    padded = np.zeros((200, 512, 512), np.float32)
    padded[:, :volume.shape[1], :volume.shape[2]] = volume
    rows = []
    for name, data in (("233×197", volume), ("512×512", padded)):
        series_dir = folder / f"series-{name}"
        write_series(data, series_dir, series_uid="1.2.826.0.42", spacing=spacing)
        sources = discover_sources([series_dir])
        take_inventory(sources[:5])  # warm the decoders
        times = []
        for _ in range(3):
            started = time.perf_counter()
            inventory = take_inventory(sources, task_id="s")
            times.append(time.perf_counter() - started)
        seconds = float(np.median(times))
        assert inventory.n_images == 1 and not inventory.series_problems
        rows.append((f"DICOM series of 200 single-slice files ({name}, 16-bit), assembled "
                     f"({len(inventory.images)} foreground slices sampled)",
                     f"{1 / seconds:.2f} series/s, {200 / seconds:.0f} slices/s "
                     f"({seconds:.2f} s per series)"))
    return rows


def _rss(pid: str) -> int:
    """Resident bytes of a process (Linux /proc), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * 4096
    except (OSError, IndexError, ValueError):
        return 0


def _peak_rss(stop, peaks: dict) -> None:
    """Sample the driver's and the Ray workers' (ray::*) resident memory until ``stop``."""
    import os

    while not stop.is_set():
        workers = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if handle.read(5) == b"ray::":
                        workers += _rss(pid)
            except OSError:
                continue
        peaks["driver"] = max(peaks.get("driver", 0), _rss(str(os.getpid())))
        peaks["workers"] = max(peaks.get("workers", 0), workers)
        stop.wait(0.05)


def bench_ray_inventory(folder: Path) -> list[tuple[str, str]]:
    import os
    import threading

    import ray

    from rayfp.cluster.pipeline import take_archive_inventory
    from rayfp.io.series_writer import write_series
    from rayfp.io.sources import list_archive

    rng = np.random.default_rng(0)
    slab = rng.random((8, 64, 64)).astype(np.float32) + 0.5
    for i in range(1000):
        write_series(slab, folder / "archive" / f"task{i % 10}", series_uid=f"1.2.826.0.7.{i}",
                     prefix=f"s{i:04d}-", patient_id=f"p{i}")
    files = list_archive(folder / "archive")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        take_archive_inventory(files[:80])  # warm the workers
        for series in (250, 500, 1000):
            subset = [f for f in files if int(f.path.rsplit("/s", 1)[1][:4]) < series]
            stop, peaks = threading.Event(), {}
            before = _rss(str(os.getpid()))
            sampler = threading.Thread(target=_peak_rss, args=(stop, peaks))
            sampler.start()
            started = time.perf_counter()
            inventories = take_archive_inventory(subset)
            seconds = time.perf_counter() - started
            stop.set()
            sampler.join()
            units = sum(inv.n_images for inv in inventories.values())
            assert units == series, units
            rows.append((f"Ray inventory, {series} synthetic series ({len(subset)} files of "
                         "64×64, 2 CPUs)",
                         f"{seconds:.1f} s ({len(subset) / seconds:.0f} files/s); peak RSS: "
                         f"driver {peaks['driver'] / 2**20:.0f} MiB (+"
                         f"{(peaks['driver'] - before) / 2**20:.0f} MiB over its "
                         f"{before / 2**20:.0f} MiB before), all Ray workers "
                         f"{peaks['workers'] / 2**20:.0f} MiB"))
    finally:
        ray.shutdown()
    return rows


def bench_merge(folder: Path) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    dim, bins = 512, 100
    space = FingerprintSpace(backbone="synthetic", weights_sha256="0" * 64, preprocessing={},
                             dim=dim, bins=bins, edges_lo=np.zeros(dim), edges_hi=np.ones(dim))
    rows = []
    for private in (False, True):
        spec = PrivacySpec(epsilon=1.0) if private else PrivacySpec.none()
        for parts in (2, 8, 32):
            store = Store(folder / f"cloud-{private}-{parts}")
            store.put_space(space)
            kb = KnowledgeBase(store, min_images=1, max_epsilon=None)
            plan = PartPlan(f"pooled-{parts}", tuple([50] * parts), 10_000, 1, spec.plan)
            released = []
            for k in range(1, parts + 1):
                n = plan.views_in(k)
                partial = PartialCounts.from_features(rng.random((n, dim)), space,
                                                      clip_sum=spec.private)
                released.append(release_part(partial, space, plan=plan, part=k, spec=spec))
            for part in released[:-1]:
                kb.receive_part(part)
            started = time.perf_counter()
            state = kb.receive_part(released[-1])
            seconds = time.perf_counter() - started
            assert state["state"] == "merged"
            rows.append((f"merge in the cloud, K = {parts} parts, "
                         f"{'private ε = 1' if private else 'exact'} (D = 512, B = 100)",
                         f"{seconds * 1e3:.0f} ms (the last part: read {parts - 1} held parts, "
                         "merge, admit, register)"))
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = (bench_nifti(Path(tmp)) + bench_series(Path(tmp)) +
                bench_ray_inventory(Path(tmp)) + bench_merge(Path(tmp)))
    width = max(len(w) for w, _ in rows)
    for what, result in rows:
        print(f"{what.ljust(width)}  {result}")
    lines = [f"## {TITLE}", "", f"Machine: {machine()}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             "Command: `python -m bench.bench_volumes`", "", "| what | result |", "|---|---|"]
    lines += [f"| {what} | {result} |" for what, result in rows]
    replace_section(TITLE, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
