"""Tiny fake copies of the paper's datasets in their official layouts (as TFDS keeps
`dummy_data/`), one per rule kind, written by the tests: the real data sit behind registrations
and request forms. Each writer returns the class counts it wrote, so a test knows what a
correct rule must pick. Images get a per-dataset look, so fingerprints of different fakes
differ the way different modalities do."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def image(rng: np.random.Generator, style: str, size: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    if style == "xray":  # dark field, bright bone-like bars
        base = 30 + 180 * (np.abs(np.sin(6 * x + rng.uniform(0, 3))) > 0.8)
        return (base + rng.normal(0, 8, (size, size))).clip(0, 255).astype(np.uint8)
    if style == "chest":  # smooth lungs-like gradient
        base = 200 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / rng.uniform(0.05, 0.1))
        return (base + rng.normal(0, 4, (size, size))).clip(0, 255).astype(np.uint8)
    if style == "surgery":  # reddish texture
        rgb = np.stack([160 + 60 * np.sin(9 * x * rng.uniform(1, 2)), 40 + 30 * y,
                        30 + 20 * x], -1) + rng.normal(0, 10, (size, size, 3))
        return rgb.clip(0, 255).astype(np.uint8)
    if style == "skin":
        rgb = np.stack([200 - 90 * ((x - .5) ** 2 + (y - .5) ** 2 < .08), 150 + 0 * x,
                        120 + 0 * y], -1) + rng.normal(0, 6, (size, size, 3))
        return rgb.clip(0, 255).astype(np.uint8)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def fake_mura(root: Path, rng, parts=("WRIST", "ELBOW"), n=(4, 3)) -> dict[str, dict[str, int]]:
    """MURA-v1.1/train/XR_<PART>/patientNNNNN/studyK_{positive,negative}/imageK.png, plus the
    macOS '._' twins a zip made on a Mac carries."""
    counts = {}
    for part in parts:
        c = {"negative": 0, "positive": 0}
        for p in range(n[0]):
            for s, label in enumerate(("negative", "positive")[: 1 + p % 2]):
                study = root / "mura/MURA-v1.1/train" / f"XR_{part}" / f"patient{p:05d}" / \
                    f"study{s + 1}_{label}"
                for k in range(n[1] - s):
                    save_png(study / f"image{k + 1}.png", image(rng, "xray"))
                    (study / f"._image{k + 1}.png").write_bytes(b"\x00\x05\x16\x07 mac junk")
                    c[label] += 1
        counts[f"mura_xr_{part.lower()}"] = c
    return counts


def fake_shenzhen(root: Path, rng, n0: int = 4, n1: int = 3) -> dict[str, int]:
    folder = root / "shenzhen_xray_tb/ChinaSet_AllFiles/CXR_png"
    for i in range(n0 + n1):
        save_png(folder / f"CHNCXR_{i + 1:04d}_{int(i >= n0)}.png", image(rng, "chest"))
    (folder / "Thumbs.db").write_bytes(b"not an image")
    return {"normal": n0, "tuberculosis": n1}


def fake_isic20(root: Path, rng) -> dict[str, int]:
    """Six training images, one a duplicate listed in the duplicates table."""
    base = root / "isic20"
    names = [f"ISIC_{i:07d}" for i in range(6)]
    targets = [0, 0, 1, 0, 1, 0]
    for name in names:
        save_png(base / "train" / f"{name}.jpg", image(rng, "skin"))
    (base / "ISIC_2020_Training_GroundTruth.csv").write_text(
        "image_name,patient_id,target\n" + "".join(f"{n},IP_{i},{t}\n" for i, (n, t) in
                                                    enumerate(zip(names, targets))))
    (base / "ISIC_2020_Training_Duplicates.csv").write_text(
        f"image_name_1,image_name_2\n{names[0]},{names[5]}\n")
    return {"benign": 3, "malignant": 2}


def fake_ph2(root: Path, rng) -> dict[str, int]:
    base = root / "PH2/PH2Dataset"
    rows = [("IMD002", "X", "", ""), ("IMD003", "X", "", ""), ("IMD004", "", "X", ""),
            ("IMD006", "", "", "X"), ("IMD008", "", "X", "")]
    lines = ["|| Name || Histological Diagnosis || Common Nevus || Atypical Nevus || Melanoma ||"]
    for name, c, a, m in rows:
        lines.append(f"|| {name} ||  || {c} || {a} || {m} ||")
        save_png(base / "PH2 Dataset images" / name / f"{name}_Dermoscopic_Image" /
                 f"{name}.bmp", image(rng, "skin"))
    (base / "PH2_dataset.txt").write_text("\n".join(lines) + "\n")
    return {"common_nevus": 2, "atypical_nevus": 2, "melanoma": 1}


def fake_cholec80(root: Path, rng, videos: int = 2, seconds: int = 3) -> dict[str, dict]:
    """videos/videoNN.mp4 at 25 fps and tool_annotations/videoNN-tool.txt (tab-separated, one
    row per second: frames 0, 25, 50, ...)."""
    import av

    base = root / "cholec80"
    (base / "videos").mkdir(parents=True, exist_ok=True)
    (base / "tool_annotations").mkdir(parents=True, exist_ok=True)
    tools = ["Grasper", "Bipolar", "Hook", "Scissors", "Clipper", "Irrigator", "SpecimenBag"]
    grasper = {"absent": 0, "present": 0}
    for v in range(1, videos + 1):
        with av.open(str(base / "videos" / f"video{v:02d}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width = stream.height = 48
            stream.pix_fmt = "yuv420p"
            for _ in range(25 * seconds):
                frame = av.VideoFrame.from_ndarray(image(rng, "surgery"), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        lines = ["Frame\t" + "\t".join(tools)]
        for s in range(seconds):
            flags = [int((s + v + t) % 2 == 0) for t in range(len(tools))]
            grasper["present" if flags[0] else "absent"] += 1
            lines.append(f"{25 * s}\t" + "\t".join(map(str, flags)))
        (base / "tool_annotations" / f"video{v:02d}-tool.txt").write_text("\n".join(lines) + "\n")
    return {"cholec80_grasper_presence": grasper}


def _idx(data: np.ndarray) -> bytes:
    head = b"\x00\x00\x08" + bytes([data.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in data.shape)
    return head + data.astype(np.uint8).tobytes()


def fake_mnist(root: Path, rng, n: int = 12) -> dict[str, int]:
    """The IDX pair, gzipped (as torchvision's download leaves them)."""
    base = root / "mnist"
    base.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % 3
    (base / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28)))))
    (base / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    return {str(k): int((labels == k).sum()) for k in range(3)}


def fake_cifar10(root: Path, rng, per_batch: int = 3) -> dict[str, int]:
    base = root / "cifar10/cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    counts: dict[str, int] = {}
    for b in range(1, 6):
        labels = [(b + i) % 10 for i in range(per_batch)]
        for label in labels:
            counts[names[label]] = counts.get(names[label], 0) + 1
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": labels}
        (base / f"data_batch_{b}").write_bytes(pickle.dumps(batch))
    return counts


def fake_svhn(root: Path, rng, n: int = 10) -> dict[str, int]:
    import scipy.io

    base = root / "svhn"
    base.mkdir(parents=True, exist_ok=True)
    y = (np.arange(n) % 4 + 8).reshape(-1, 1)  # 8, 9, 10 (= digit 0), 11 -> wraps
    y[y == 11] = 1
    scipy.io.savemat(base / "train_32x32.mat",
                     {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": y})
    digits = (y.ravel() % 10).tolist()
    return {str(d): digits.count(d) for d in set(digits)}


def fake_kvasir_capsule(root: Path) -> dict[str, int]:
    """Folders only (the rule lists files, it does not decode them): one anatomy class of 200
    images, one of 201, and Ampulla of vater with 3, which the paper's task drops (< 200)."""
    base = root / "kvasir_capsule/labelled_images"
    sizes = {"Pylorus": 200, "Ileocecal valve": 201, "Ampulla of vater": 3}
    for name, n in sizes.items():
        (base / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (base / name / f"{i:04d}.jpg").write_bytes(b"")
    return {"Pylorus": 200, "Ileocecal valve": 201}


def fake_derm7pt(root: Path, rng) -> dict[str, int]:
    """meta.csv with diagnoses grouped many-to-one, and index files that choose rows."""
    base = root / "derm7pt/release_v0"
    diagnoses = ["melanoma (in situ)", "clark nevus", "basal cell carcinoma", "blue nevus",
                 "seborrheic keratosis", "melanoma", "lentigo"]
    rows = ["case_num,diagnosis,derm"]
    for i, d in enumerate(diagnoses):
        rows.append(f'{i + 1},"{d}",img{i}.jpg')
        save_png(base / "images" / f"img{i}.jpg", image(rng, "skin"))
    (base / "meta").mkdir(parents=True, exist_ok=True)
    (base / "meta/meta.csv").write_text("\n".join(rows) + "\n")
    (base / "meta/train_indexes.csv").write_text("indexes\n0\n1\n2\n3\n")
    (base / "meta/valid_indexes.csv").write_text("indexes\n4\n5\n")  # row 6 is test: unused
    return {"MEL": 2, "NEV": 2, "BCC": 1, "SK": 1}
