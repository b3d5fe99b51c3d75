"""Volumes and tasks in parts: BENCHMARKS.md's "Volumes and tasks in parts" section.

- NIfTI decoding: volumes/s and slices/s (nilearn's MNI152 T1 at 2 mm and 1 mm, .nii.gz), the
  whole decode_file step (load, canonical orientation, window, background rule).
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
from rayfp.core.store import Store
from rayfp.io import decode_file
from rayfp.privacy.mechanism import PrivacySpec
from rayfp.privacy.parts import release_part

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
                n = len(plan.views_of(k))
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
        rows = bench_nifti(Path(tmp)) + bench_merge(Path(tmp))
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
