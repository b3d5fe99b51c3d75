"""The CLI end to end on real DICOM files from pydicom's corpus, broken files mixed in."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayfp.cli.demo import dicom_corpus
from rayfp.cli.main import METRIC_HELP, main
from rayfp.store.store import Store

SAMPLES = "48"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Two tasks of real DICOM files (MR, US) plus broken files in the MR task."""
    root = tmp_path_factory.mktemp("archive")
    corpus = {p.name: p for p in dicom_corpus()}
    tasks = {
        "mr": ["MR_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm", "MR2_UNCR.dcm",
               "MR_truncated.dcm", "badVR.dcm"],
        "us": ["US1_UNCR.dcm", "OBXXXX1A.dcm", "examples_ybr_color.dcm", "color-pl.dcm"],
    }
    for task, names in tasks.items():
        folder = root / task / "nested"
        folder.mkdir(parents=True)
        for name in names:
            shutil.copy(corpus[name], folder / name)
    (root / "mr" / "empty.dcm").write_bytes(b"")
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def edges_run(archive, tmp_path_factory):
    """`rayfp edges` once per module, so every test finds the space whatever the order."""
    store = tmp_path_factory.mktemp("cli") / "store"
    # capsys is function-scoped, so this module-scoped run captures its output itself.

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in ("edges", archive / "mr", archive / "us", "--backbone",
                                      "efficientnet_lite0", "--bins", "20", "--samples", "32",
                                      "--store", store, "--quiet")])
    return store, code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli_store(edges_run):
    return edges_run[0]


def test_edges_fingerprint_compare_nearest_show_plot(archive, edges_run, cli_store, capsys,
                                                     tmp_path):
    _, code, out, err = edges_run
    assert code == 0, err
    space_id = out.strip().splitlines()[-1]
    assert len(space_id) == 16
    assert "MR_truncated.dcm: truncated" in err and "empty.dcm: zero_bytes" in err
    errs = {}
    for task in ("mr", "us"):
        code, out, errs[task] = run(capsys, "fingerprint", archive / task, "--task-id", task,
                             "--space", space_id, "--store", cli_store, "--samples", SAMPLES,
                             "--min-images", "3", "--quiet",
                             *(["--keep-views"] if task == "mr" else []))
        assert code == 0, errs[task]
        assert f"{task}: {SAMPLES} views" in out
    assert "3 file(s) skipped" in errs["mr"] and "badVR.dcm: bad_vr" in errs["mr"]
    assert "skipped" not in errs["us"]
    # Private releases (the default ε): no file name of their images, nor their folder, in
    # any byte of the store, view tables and Delta logs included (read as a thief would).
    stored = b"".join(p.read_bytes() for p in Path(cli_store).rglob("*") if p.is_file())
    for name in ("MR_small", "emri_small", "MR2_UNCR", "US1_UNCR", "badVR", "nested"):
        assert name.encode() not in stored, name
    # A second release of the same images is composed with the first; past the budget it is
    # refused and nothing changes.
    before = Store(cli_store).get_fingerprint(space_id, "us")
    code, _, err = run(capsys, "fingerprint", archive / "us", "--task-id", "us", "--space",
                       space_id, "--store", cli_store, "--samples", SAMPLES, "--min-images", "3",
                       "--quiet", "--privacy-budget", "1.2")
    assert code == 2 and "past the budget of 1.2" in err
    assert np.array_equal(Store(cli_store).get_fingerprint(space_id, "us").counts, before.counts)
    code, out, _ = run(capsys, "privacy", "budget", "--store", cli_store)
    assert code == 0 and [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["mr", "1"], ["us", "1"]]
    store = Store(cli_store)
    mr = store.get_fingerprint(space_id, "mr")
    # MR_small and its RLE copy are one series, emri_small's 10 frames one volume: 3 units
    assert mr.n_samples == 48 and mr.n_images == 3
    assert (mr.counts.sum(axis=1) == 48).all()

    code, out, _ = run(capsys, "compare", "--store", cli_store, "--space", space_id,
                       "--metric", "bkld-large", "--format", "csv")
    lines = out.strip().splitlines()
    assert lines[0] == "source,mr,us" and len(lines) == 3
    matrix = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    assert (matrix > 0).all()

    code, out, _ = run(capsys, "nearest", "--store", cli_store, "--task-id", "mr", "-k", "3")
    assert code == 0 and "1. us" in out

    code, out, _ = run(capsys, "show", "--store", cli_store)
    assert space_id in out and "2 fingerprint(s)" in out and "mr" in out

    # How many images suffice: from the views `--keep-views` kept (never sent), and from the
    # images themselves.
    views = store.get_views(space_id, "mr")
    assert (views.n_images, views.n_views) == (mr.n_images, mr.n_samples)
    png = tmp_path / "stability.png"
    code, out, err = run(capsys, "stability", "--task-id", "mr", "--space", space_id,
                         "--store", cli_store, "--sizes", "1,2,3", "--draws", "4", "-k", "1",
                         "--out", png)
    assert code == 0, err
    assert "with all of them the top-1 is us" in out and Image.open(png).size[0] > 300
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:2] for r in rows] == [["1", "4"], ["2", "4"], ["3", "1"]]
    assert rows[-1][2] == "1.00"  # all images: the answer itself
    code, out, err = run(capsys, "stability", archive / "us", "--task-id", "us-again",
                         "--space", space_id, "--store", cli_store, "--samples", "32",
                         "--sizes", "1,2", "--draws", "3", "--out", tmp_path / "s2.png",
                         "--quiet")
    assert code == 0, err
    assert "the top-3 is" in out  # against mr and us (k larger than the store: all of them)

    for what, extra in (("fingerprint", ["--task-id", "mr"]), ("distances", [])):
        png = tmp_path / f"{what}.png"
        code, _, _ = run(capsys, "plot", what, "--store", cli_store, "--space", space_id,
                         "--out", png, *extra)
        assert code == 0 and Image.open(png).size[0] > 300


def test_metric_help_lists_the_registry():
    from rayfp.core.distance import METRICS

    listed = METRIC_HELP.split(" (default")[0].replace(" or ", ", ").split(", ")
    assert listed == METRICS.names()


def test_counts_do_not_depend_on_batch_size(archive, edges_run, capsys, tmp_path):
    cli_store = tmp_path / "store"  # its own store: the other tests' task lists stay as they are
    shutil.copytree(edges_run[0] / "spaces", cli_store / "spaces")
    space_id = Store(cli_store).space_ids()[0]
    counts = []
    for batch, task in (("7", "us-b7"), ("64", "us-b64")):
        code, _, err = run(capsys, "fingerprint", archive / "us", "--task-id", task, "--space",
                           space_id, "--store", cli_store, "--samples", SAMPLES,
                           "--min-images", "3", "--batch-size", batch, "--epsilon", "inf",
                           "--quiet")
        assert code == 0, err
        counts.append(Store(cli_store).get_fingerprint(space_id, task))
    assert np.array_equal(counts[0].counts, counts[1].counts)
    np.testing.assert_allclose(counts[0].feature_sum, counts[1].feature_sum, rtol=1e-12)
    other_seed = run(capsys, "fingerprint", archive / "us", "--task-id", "us-s1", "--space",
                     space_id, "--store", cli_store, "--samples", SAMPLES, "--min-images", "3",
                     "--seed", "1", "--epsilon", "inf", "--quiet")
    assert other_seed[0] == 0
    assert not np.array_equal(Store(cli_store).get_fingerprint(space_id, "us-s1").counts,
                              counts[0].counts)


def test_errors_are_clear_and_exit_2(archive, cli_store, capsys):
    space_id = Store(cli_store).space_ids()[0]
    code, _, err = run(capsys, "fingerprint", archive / "us", "--task-id", "x", "--space",
                       space_id, "--store", cli_store, "--quiet")
    assert code == 2 and "fewer than the minimum of 50" in err
    code, _, err = run(capsys, "fingerprint", archive / "us", "--task-id", "x", "--space",
                       "0000000000000000", "--store", cli_store, "--quiet")
    assert code == 2 and "known spaces" in err and space_id in err
    code, _, err = run(capsys, "compare", "--store", cli_store, "--space", space_id,
                       "--metric", "kl")
    assert code == 2 and "unknown metric 'kl'" in err
    code, _, err = run(capsys, "edges", archive / "us", "--backbone", "resnet", "--store",
                       cli_store, "--quiet")
    assert code == 2 and "resnet34" in err


def test_audit_runs_on_real_backbone_features(cli_store, capsys, tmp_path):
    """`rayfp audit PATH --space --store`: real images (20 MNI152 slices as PNG) through the
    space's backbone, the three attacks and the bound, with and without noise."""
    from rayfp.io.series_writer import mni_volume

    volume, _ = mni_volume(2)
    (tmp_path / "slices").mkdir()
    for z in range(10, 90, 4):  # 20 images: 4 x the 5 members
        Image.fromarray((volume[z] / volume.max() * 255).astype(np.uint8)).save(
            tmp_path / "slices" / f"slice{z:03d}.png")
    space_id = Store(cli_store).space_ids()[0]
    out_dir = tmp_path / "audit"
    code, out, err = run(capsys, "audit", tmp_path / "slices", "--space", space_id, "--store",
                         cli_store, "--members", "5", "--samples", "50", "--views", "4",
                         "--candidates", "5", "--shadows", "2", "--epsilon", "inf", "1",
                         "--out", out_dir, "--quiet", "--threads", "2")
    assert code == 0, err
    assert "bound" in out and "lira" in out
    results = json.loads((out_dir / "audit.json").read_text())
    assert results["space"] == space_id and not results["synthetic"]
    assert len(results["results"]) == 6 and {r["members"] for r in results["results"]} == {5}


def test_a_task_in_two_parts_merges_to_the_fingerprint_of_the_union(archive, edges_run, capsys,
                                                                    tmp_path):
    """Two sites (the MR and the US folder) fingerprint their share of one plan with the real
    backbone; the merged counts equal one site's fingerprint of both folders, exactly."""
    from rayfp.io.inventory import take_inventory
    from rayfp.io.sources import discover_sources

    store, code, out, _ = edges_run
    space_id = out.strip().splitlines()[-1]
    counts = [take_inventory(discover_sources([archive / t])).n_images for t in ("mr", "us")]
    announced = ",".join(map(str, counts))
    for k, task in enumerate(("mr", "us"), start=1):
        code, out, err = run(capsys, "fingerprint", archive / task, "--task-id", "pooled",
                             "--space", space_id, "--store", store, "--samples", "40",
                             "--epsilon", "inf", "--part", f"{k}/2", "--part-images", announced,
                             "--part-out", tmp_path / f"part{k}.npz", "--quiet")
        assert code == 0, err
        assert f"pooled part {k}/2:" in out and "exact counts" in out
    code, out, err = run(capsys, "merge", tmp_path / "part1.npz", tmp_path / "part2.npz",
                         "--store", store, "--min-images", "3")
    assert code == 0, err
    assert f"merged 2 parts, 40 views of {sum(counts)} images" in out
    code, _, err = run(capsys, "fingerprint", archive / "mr", archive / "us", "--task-id",
                       "union", "--space", space_id, "--store", store, "--samples", "40",
                       "--epsilon", "inf", "--min-images", "3", "--quiet")
    assert code == 0, err
    saved = Store(store)
    pooled, union = (saved.get_fingerprint(space_id, t) for t in ("pooled", "union"))
    assert np.array_equal(pooled.counts, union.counts)
    assert pooled.n_images == union.n_images == sum(counts)
    code, _, err = run(capsys, "fingerprint", archive / "us", "--task-id", "pooled", "--space",
                       space_id, "--store", store, "--part", "2/2", "--part-images", "1,1",
                       "--quiet")
    assert code == 2 and "announced 1 images" in err
    code, _, err = run(capsys, "merge", tmp_path / "part1.npz", "--store", store)
    assert code == 2 and "missing part(s) [2]" in err
    code, _, err = run(capsys, "fingerprint", archive / "us", "--task-id", "x", "--space",
                       space_id, "--store", store, "--window", "liver", "--quiet")
    assert code == 2 and "unknown CT window 'liver'" in err


def test_nearest_ranks_as_the_cloud_does_and_reaches_the_papers_tasks(tmp_path, capsys):
    """`rayfp nearest` asks the cloud's ranking path (KnowledgeBase.local): exactly the direct
    bKLD order, and for a task without a fingerprint, the imported distances."""
    from conftest import make_space, random_fingerprint

    from rayfp.core.distance import bkld

    store = Store(tmp_path / "s")
    space = make_space(dim=8, bins=10)
    store.put_space(space)
    rng = np.random.default_rng(3)
    fps = [random_fingerprint(rng, space, f"t{i}") for i in range(7)]
    for fp in fps:
        store.put_fingerprint(fp)
    code, out, _ = run(capsys, "nearest", "--store", str(store.root), "--task-id", "t0",
                       "-k", "4")
    direct = sorted((bkld(fps[0], s), s.task_id) for s in fps[1:])[:4]
    lines = [line.split() for line in out.splitlines()[1:]]
    assert code == 0 and [line[1] for line in lines] == [t for _, t in direct]
    np.testing.assert_allclose([float(line[2]) for line in lines], [d for d, _ in direct],
                               rtol=1e-5)
    assert run(capsys, "import-paper", "--store", str(store.root))[0] == 0
    code, out, _ = run(capsys, "nearest", "--store", str(store.root), "--task-id", "svhn",
                       "-k", "3")
    assert code == 0 and "imported:KLD-PP:NS-W:TS-100-BINS" in out and len(out.splitlines()) == 4


def test_every_command_registers_its_own_handler():
    """One CLI pattern: each command module adds its parsers, each with its handler."""
    import argparse

    from rayfp.cli.main import COMMAND_MODULES, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) >= 19
    for name, parser in sub.choices.items():
        assert callable(parser.get_default("run")), f"`rayfp {name}` has no handler"
    assert all(callable(getattr(m, "add_parsers", None)) for m in COMMAND_MODULES)
