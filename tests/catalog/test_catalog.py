"""The catalog of the paper's tasks: every entry complete and equal to the paper's figures, the
CheXpert rules against CheXpert's real label CSV, every rule kind against a fake copy in its
official layout, and broken copies reported per task. No Ray here (tests/catalog/test_seed.py
seeds a store and answers over HTTP)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import (
    fake_cholec80,
    fake_cifar10,
    fake_derm7pt,
    fake_isic20,
    fake_kvasir_capsule,
    fake_mnist,
    fake_mura,
    fake_ph2,
    fake_shenzhen,
    fake_svhn,
)

from rayfp.catalog.check import BROKEN, FOUND, MISSING, check_root, check_task
from rayfp.catalog.manifest import build_manifest, write_manifest
from rayfp.catalog.model import RULE_KINDS, find_task, load_catalog
from rayfp.cli.main import main
from rayfp.errors import CatalogError
from rayfp.evaluate.data import PaperData

CATALOG = load_catalog()


def test_all_71_tasks_of_35_datasets_carry_the_papers_figures():
    infos = PaperData().task_infos
    tasks = {t.id: t for d in CATALOG.values() for t in d.tasks}
    assert len(CATALOG) == 35 and sorted(tasks) == sorted(infos.index)
    for task_id, task in tasks.items():
        row = infos.loc[task_id]
        assert task.expected.samples == row["num_samples"], task_id
        assert task.expected.classes == row["num_classes"], task_id
        assert task.expected.imbalance == pytest.approx(row["imbalance_ratios"], rel=1e-12)
        assert task.domain == row["domains"], task_id
        assert task.rule["kind"] in RULE_KINDS
    for dataset in CATALOG.values():  # everything an operator needs to get a copy
        assert dataset.instructions and dataset.url and dataset.licence and dataset.citation
        assert dataset.layout, dataset.id
    kinds = {t.rule["kind"] for t in tasks.values()}
    assert kinds == set(RULE_KINDS)


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory):
    """CheXpert's real training label table (shipped by torchxrayvision) where the archive
    puts it; no images."""
    import torchxrayvision

    root = tmp_path_factory.mktemp("catalog-chexpert")
    target = root / "chexpert/CheXpert-v1.0-small/train.csv"
    target.parent.mkdir(parents=True)
    source = Path(torchxrayvision.__file__).parent / "data/chexpert_train.csv.gz"
    with gzip.open(source) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return root


def test_the_13_chexpert_rules_reproduce_the_papers_counts_from_the_real_labels(chexpert_root):
    checks = [c for c in check_root(CATALOG, chexpert_root, require_files=False)
              if c.dataset.id == "chexpert"]
    assert len(checks) == 13  # "No Finding" is not a task
    for c in checks:
        assert c.status == FOUND and c.matches, (c.task.id, c.differences)
        assert c.task.checked == "real-labels"
    edema = next(c for c in checks if c.task.id == "chexpert_edema")
    assert edema.samples == 72972 and edema.selection.class_counts() == {
        "negative": 20726, "positive": 52246}


def test_a_rule_that_kept_uncertain_labels_would_be_named(chexpert_root):
    """The check is not a formality: the same table with -1 counted as positive is off, by how
    much and in which figure."""
    dataset, task = find_task(CATALOG, "chexpert_edema")
    wrong = dict(task.rule, values={"0.0": "negative", "1.0": "positive", "-1.0": "positive"})
    import dataclasses

    check = check_task(dataset, dataclasses.replace(task, rule=wrong), chexpert_root,
                       require_files=False)
    assert not check.matches
    assert check.differences[0].endswith(f"the paper has 72972 (+{check.samples - 72972})")
    assert check.samples > 72972


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("catalog-fakes")
    written = {}
    written.update(fake_mura(root, rng))
    written["shenzen_chest_xray_tuberculosis"] = fake_shenzhen(root, rng)
    written["isic20_melanoma_classification"] = fake_isic20(root, rng)
    written["ph2-melanocytic-lesions-classification"] = fake_ph2(root, rng)
    written.update({k: v for k, v in fake_cholec80(root, rng).items()})
    written["mnist_digit_classification"] = fake_mnist(root, rng)
    written["cifar10_object_classification"] = fake_cifar10(root, rng)
    written["svhn"] = fake_svhn(root, rng)
    written["kvasir_capsule_anatomy"] = fake_kvasir_capsule(root)
    written["derm7pt_skin_lesions"] = fake_derm7pt(root, rng)
    return root, written


def test_every_rule_kind_picks_exactly_what_the_fake_copy_holds(fake_root):
    root, written = fake_root
    checks = {c.task.id: c for c in check_root(CATALOG, root)}
    for task_id, counts in written.items():
        c = checks[task_id]
        assert c.status == FOUND, (task_id, c.reason)
        assert dict(c.selection.class_counts()) == counts, task_id
        assert not c.matches  # a fake is small: the count difference is named
        assert f"the paper has {c.task.expected.samples}" in c.differences[0]
    # Everything absent is "missing", nothing is silently skipped.
    assert {t for t, c in checks.items() if c.status == MISSING} == \
        set(checks) - set(written) - {f"cholec80_{t}_presence" for t in (
            "bipolar", "hook", "scissors", "clipper", "irrigator", "specimenbag")} - {
            f"mura_xr_{p}" for p in ("finger", "forearm", "hand", "humerus", "shoulder")} - {
            "kvasir_capsule_content", "kvasir_capsule_pathologies"}
    # Rule details: mac junk and non-matching files are left out, small classes dropped,
    # duplicates removed, SVHN's label 10 is the digit 0.
    assert all("/._" not in i.path for i in checks["mura_xr_wrist"].selection.items)
    assert any("Ampulla of vater" in line for line in checks["kvasir_capsule_anatomy"].differences)
    assert "ISIC_0000005" not in {Path(i.path).stem for i in
                                  checks["isic20_melanoma_classification"].selection.items}
    assert "0" in written["svhn"]
    # A kept archive is checked against its published sha256 (the fake's gzip is not MNIST's).
    assert any(d.startswith("archive train-images-idx3-ubyte.gz: sha256") for d in
               checks["mnist_digit_classification"].differences)
    frames = checks["cholec80_grasper_presence"].selection.items
    assert {i.frame for i in frames} == {0, 25, 50}


def test_the_manifest_writes_frames_and_array_rows_as_png_once(fake_root, tmp_path):
    from PIL import Image

    root, written = fake_root
    tasks = ["cholec80_grasper_presence", "mnist_digit_classification", "svhn",
             "mura_xr_wrist", "cifar10_object_classification"]
    checks = check_root(CATALOG, root, tasks=tasks)
    rows, checks = build_manifest(checks, root, tmp_path / "cache", on_progress=lambda m: None)
    assert all(c.status == FOUND for c in checks)
    frame = pd.DataFrame(rows)
    assert set(frame.task_id) == set(tasks)
    assert frame.groupby("task_id").size().to_dict() == {
        t: sum(written[t].values()) for t in tasks}
    for path in frame.path:
        assert os.path.isabs(path) and Image.open(path).size[0] > 0
    pngs = sorted((tmp_path / "cache").rglob("*.png"))
    first = {p: p.stat().st_mtime_ns for p in pngs}
    video_png = next(p for p in pngs if "video01" in str(p))
    assert Image.open(video_png).size == (48, 48)
    digit = Image.open(next(p for p in pngs if "train-images" in str(p)))
    assert digit.size == (28, 28)
    build_manifest(check_root(CATALOG, root, tasks=tasks), root, tmp_path / "cache",
                   on_progress=lambda m: None)  # resumed: nothing is written twice
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").rglob("*.png"))
            } == first
    out = write_manifest(rows, tmp_path / "m.parquet")
    from rayfp.io.sources import list_archive

    sources = list_archive(str(out))
    assert len(sources) == len(rows) and {s.modality for s in sources} >= {"x_ray",
                                                                            "laparoscopy"}


def test_broken_copies_are_reported_per_task_with_the_reason(tmp_path):
    """A missing folder, a truncated label CSV, an unreadable video and a truncated IDX file
    each break their own tasks only; a good copy beside them is still found."""
    rng = np.random.default_rng(5)
    fake_shenzhen(tmp_path, rng)
    fake_isic20(tmp_path, rng)
    gt = tmp_path / "isic20/ISIC_2020_Training_GroundTruth.csv"
    gt.write_text('image_name,patient_id,target\nISIC_0000000,IP_0,0\n"ISIC_0000001,IP')
    fake_cholec80(tmp_path, rng, videos=1)
    (tmp_path / "cholec80/videos/video01.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    fake_mnist(tmp_path, rng)
    images = tmp_path / "mnist/train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:500]))
    (tmp_path / "ibean").mkdir()  # there, but empty
    checks = {c.task.id: c for c in check_root(CATALOG, tmp_path)}
    assert checks["shenzen_chest_xray_tuberculosis"].status == FOUND
    isic = checks["isic20_melanoma_classification"]
    assert isic.status == BROKEN and "ISIC_2020_Training_GroundTruth.csv" in isic.reason
    assert checks["bean_plant_disease_classification"].status == BROKEN
    assert "picks no image" in checks["bean_plant_disease_classification"].reason
    # The video and the truncated IDX break when their images are written.
    rows, after = build_manifest(list(checks.values()), tmp_path, tmp_path / "cache",
                                 on_progress=lambda m: None)
    after = {c.task.id: c for c in after}
    for t in ("grasper", "hook"):
        c = after[f"cholec80_{t}_presence"]
        assert c.status == BROKEN and "video01.mp4" in c.reason and "decode" in c.reason
    assert after["mnist_digit_classification"].status == BROKEN
    assert "truncated" in after["mnist_digit_classification"].reason
    assert {r["task_id"] for r in rows} == {"shenzen_chest_xray_tuberculosis"}


def test_a_malformed_catalog_entry_names_its_file_and_field(tmp_path):
    good = Path(__file__).resolve().parents[2] / "rayfp/catalog/datasets/mnist.yaml"
    text = good.read_text()
    cases = {"no_rule.yaml": text.replace("  rule:", "  rul:"),
             "bad_kind.yaml": text.replace("kind: arrays", "kind: zip"),
             "no_expected.yaml": text.replace("samples: 60000", "sample: 60000")}
    for name, body in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text(body)
        with pytest.raises(CatalogError, match=name):
            load_catalog(folder)


def test_the_cli_lists_instructs_and_checks(fake_root, chexpert_root, capsys):
    root, _ = fake_root
    assert main(["catalog", "list", str(root)]) == 0
    out = capsys.readouterr().out
    assert "35 datasets, 71 tasks" in out and "mura_xr_wrist" in out
    assert main(["catalog", "instructions", "mura_xr_wrist", "--root", "/data"]) == 0
    out = capsys.readouterr().out
    assert "/data/mura/MURA-v1.1/train/XR_ELBOW/" in out and "Research Use Agreement" in out
    assert main(["catalog", "check", str(chexpert_root), "--labels-only", "--json",
                 "--tasks", "chexpert_edema", "chexpert_fracture"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["matches_paper"] for r in report] == [True, True]
