"""The demo: small tasks built from real medical images that ship with the dependencies,
fingerprinted with EfficientNet-Lite0, compared, and plotted.

Tasks come in pairs per modality (``<modality>-a`` / ``<modality>-b``, disjoint files), so a
working fingerprint should make each task's nearest neighbour its sibling or another task of the
same modality.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np

from rayfp import defaults
from rayfp.cloud.knowledge import KnowledgeBase
from rayfp.core.confidence import UNSURE
from rayfp.core.distance import METRICS, distance_matrix
from rayfp.extract.api import create_space, extractor_for_space, fingerprint_task
from rayfp.privacy.mechanism import PrivacySpec
from rayfp.store.store import Store

DEMO_BACKBONE = "efficientnet_lite0"
# Demo tasks are tiny: pydicom ships two X-ray images (each in several encodings, one series
# apiece), so each X-ray task holds one unit. Real tasks keep the default of 50.
DEMO_MIN_IMAGES = 1
DICOM_MODALITIES = {"CT": "ct", "MR": "mr", "US": "us", "CR": "xray"}


def dicom_corpus() -> list[Path]:
    """pydicom's bundled test files plus the pydicom-data package's files."""
    import pydicom.data

    folders = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # the pydicom-data package

        folders.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return sorted(p for folder in folders for p in folder.glob("*.dcm"))


def _dicom_pools() -> dict[str, list[list[str]]]:
    """Decodable DICOM files grouped by demo modality (CT, MR, US, CR), as units: the files of
    one series (pydicom ships one slice in several encodings under one series) stay together,
    so the two tasks of a modality never share a patient's images."""
    from rayfp.io.inventory import group_inventory, inventory_file
    from rayfp.io.sources import ImageSource

    records = [inventory_file(ImageSource(os.fspath(p))) for p in dicom_corpus()]
    modality_of = {r.path: r.modality for r in records}  # each file decoded once
    inventory = group_inventory(records)[""]
    units: dict[str, list[str]] = {}
    for ref in inventory.images:
        paths = units.setdefault(inventory.unit_key(ref), [])
        if ref.path not in paths:
            paths.append(ref.path)
    pools: dict[str, list[list[str]]] = {m: [] for m in DICOM_MODALITIES.values()}
    for paths in units.values():
        modality = DICOM_MODALITIES.get(modality_of[paths[0]])
        if modality:
            pools[modality].append(paths)
    return pools


def _save_png(pixels: np.ndarray, path: Path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(path)
    return os.fspath(path)


def _tiles(image: np.ndarray, folder: Path, count: int, size: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for i in range(count):
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        out.append(_save_png(image[top:top + size, left:left + size], folder / f"tile{i:02d}.png"))
    return out


def _skimage_pools(data_dir: Path) -> dict[str, tuple[list[str], list[str]]]:
    from skimage import data

    pools = {}
    for name, loader, size in (("fundus", data.retina, 700), ("histology",
                                                             data.immunohistochemistry, 256)):
        image = loader().astype(np.float32) / 255.0
        pools[name] = (_tiles(image, data_dir / f"{name}-a", 8, size, seed=1),
                       _tiles(image, data_dir / f"{name}-b", 8, size, seed=2))
    return pools


def _brain_slices(data_dir: Path) -> tuple[list[str], list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn.datasets import load_mni152_template

        volume = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    volume = volume / max(float(volume.max()), 1e-6)
    a, b = [], []
    for z in range(20, 70):
        target = a if z % 2 == 0 else b
        suffix = "a" if z % 2 == 0 else "b"
        target.append(_save_png(np.rot90(volume[:, :, z]), data_dir / f"brain-t1-{suffix}" /
                                f"slice{z:03d}.png"))
    return a, b


def _brain_volumes(data_dir: Path) -> tuple[list[str], list[str]]:
    """Two 3-D tasks of four NIfTI volumes each, made from the MNI152 template (the other
    resolution for the second task): shifted and mirrored copies, so each volume is a distinct
    unit. The demo's 3-D case: a volume is one image whose slices the views are cut from."""
    import nibabel as nib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn.datasets import load_mni152_template

        templates = [load_mni152_template(resolution=r) for r in (2, 1)]
    tasks = []
    for half, template in zip("ab", templates):
        folder = data_dir / f"brain-3d-{half}"
        folder.mkdir(parents=True, exist_ok=True)
        volume = np.asarray(template.dataobj, dtype=np.float32)
        paths = []
        for i, (shift, mirror) in enumerate(((0, False), (3, False), (0, True), (5, True))):
            moved = np.roll(volume, shift, axis=2)
            if mirror:
                moved = moved[::-1]
            path = folder / f"t1-{i}.nii.gz"
            nib.save(nib.Nifti1Image(moved, template.affine), path)
            paths.append(os.fspath(path))
        tasks.append(paths)
    return tasks[0], tasks[1]


def _write_manifest(paths: list[str], path: Path, modality: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "modality"])
        writer.writerows([os.path.abspath(p), modality] for p in paths)
    return os.fspath(path)


def build_demo_tasks(data_dir: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Write the demo tasks under data_dir: task id -> (manifest CSV, modality)."""
    data_dir = Path(data_dir)
    tasks: dict[str, tuple[str, str]] = {}
    for modality, units in _dicom_pools().items():
        for half, chunk in (("a", units[0::2]), ("b", units[1::2])):
            chunk = [path for unit in chunk for path in unit]
            task = f"{modality}-{half}"
            tasks[task] = (_write_manifest(chunk, data_dir / f"{task}.csv", modality), modality)
    for modality, halves in _skimage_pools(data_dir).items():
        for half, chunk in zip("ab", halves):
            task = f"{modality}-{half}"
            tasks[task] = (_write_manifest(chunk, data_dir / f"{task}.csv", modality), modality)
    for half, chunk in zip("ab", _brain_slices(data_dir)):
        task = f"brain-t1-{half}"  # the MNI152 template is a T1-weighted MR image
        tasks[task] = (_write_manifest(chunk, data_dir / f"{task}.csv", "mr"), "mr")
    for half, chunk in zip("ab", _brain_volumes(data_dir)):
        task = f"brain-3d-{half}"
        tasks[task] = (_write_manifest(chunk, data_dir / f"{task}.csv", "mr"), "mr")
    return dict(sorted(tasks.items()))


DEMO_REPLICATES = 32


def top1_stability(kb, store: Store, space_id: str, fps) -> dict[str, float]:
    """Each task's answer against the others, re-asked with 32 bootstrap replicates of its
    images (from the views the demo keeps): how often the top-1 stays the same."""
    from rayfp.privacy.replicates import query_replicates

    space = store.get_space(space_id)
    out = {}
    for fp in fps:
        replicates, _ = query_replicates(store.get_views(space_id, fp.task_id), fp, space,
                                         replicates=DEMO_REPLICATES, resample_seed=0)
        out[fp.task_id] = kb.nearest_with_replicates(fp, replicates, k=1)[1].stability
    return out


def run_demo(out: str | os.PathLike, *, samples: int = 200, edge_samples: int | None = None,
             bins: int = 100, progress: bool = True, engine: str = defaults.CPU_ENGINE) -> dict:
    """Build, fingerprint, compare and plot the demo tasks; returns what it printed as data."""
    from rayfp.pictures import plots as plot

    out = Path(out)
    store = Store(out / "store")
    tasks = build_demo_tasks(out / "data")
    print(f"{len(tasks)} demo tasks: " + ", ".join(tasks))
    names = list(tasks)
    space = create_space([[tasks[t][0]] for t in names], backbone=DEMO_BACKBONE, bins=bins,
                         store=store, samples_per_task=edge_samples or max(samples // 2, 16),
                         reference_names=names, progress=progress, engine=engine).space
    print(f"space {space.space_id}: {space.backbone} ({engine}), D={space.dim}, "
          f"B={space.bins}")
    print("demo images are public: exact counts, no differential privacy (a real task's "
          "fingerprint is private by default, see docs/privacy.md)")
    extractor = extractor_for_space(space)  # load the backbone once for all tasks
    for seed, task in enumerate(names):
        result = fingerprint_task([tasks[task][0]], task_id=task, space_id=space.space_id,
                                  store=store, samples=samples, seed=seed,
                                  min_images=DEMO_MIN_IMAGES, modality=tasks[task][1],
                                  extractor=extractor, progress=progress,
                                  privacy=PrivacySpec.none(), keep_views=True)
        print(f"  {task:14s} {result.fingerprint.n_images:4d} images, {len(result.skipped)} skipped")
    fps = store.fingerprints(space.space_id)
    kb = KnowledgeBase.local(store)  # the cloud's ranking path, over the demo's store
    stability = top1_stability(kb, store, space.space_id, fps)
    rows = []
    print(f"\n{'task':14s} {'nearest (bKLD small)':22s} {'distance':>9s}  same modality  "
          f"top-1 stability ({DEMO_REPLICATES} bootstrap replicates)")
    for fp in fps:
        (nearest,) = kb.nearest_to_fingerprint(fp, k=1)
        best, dist = nearest.task_id, nearest.distance
        same = tasks[best][1] == tasks[fp.task_id][1]
        rows.append({"task": fp.task_id, "nearest": best, "distance": dist, "same": same,
                     "stability": stability[fp.task_id]})
        flag = "  unsure" if stability[fp.task_id] < UNSURE else ""
        print(f"{fp.task_id:14s} {best:22s} {dist:9.5f}  {'yes' if same else 'NO ':13s}  "
              f"{stability[fp.task_id]:.2f}{flag}")
    agreement = {}
    for metric in METRICS:
        hits = sum(tasks[kb.nearest_to_fingerprint(fp, k=1, metric=metric)[0].task_id][1]
                   == tasks[fp.task_id][1]
                   for fp in fps)
        agreement[metric] = hits
    print("\nsame-modality nearest neighbour by metric: " +
          ", ".join(f"{m} {n}/{len(fps)}" for m, n in agreement.items()))
    matrix = distance_matrix(fps, fps, "bkld-small")
    ids = [fp.task_id for fp in fps]
    plot.plot_distances(matrix, ids, out / "distances.png", metric="bkld-small")
    plot.plot_fingerprint(fps[0], out / f"fingerprint-{fps[0].task_id}.png")
    summary = {"space_id": space.space_id, "nearest": rows, "by_metric": agreement,
               "same_modality": sum(r["same"] for r in rows), "tasks": len(rows)}
    (out / "nearest.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{summary['same_modality']}/{summary['tasks']} tasks have a same-modality nearest "
          f"neighbour.\nplots: {out / 'distances.png'}, {out / f'fingerprint-{ids[0]}.png'}")
    return summary
