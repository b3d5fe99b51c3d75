"""`rayfp catalog seed` end to end on fake copies in the official layouts: a real local Ray runs
the archive job, the store gets the paper's tasks under their own ids, and a real Ray Serve
deployment then answers a new site's fingerprint (sent over HTTP by `rayfp query`, made by
`rayfp fingerprint` from its own images) with the seeded paper tasks and their policies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from fakes import fake_cholec80, fake_isic20, fake_mura, fake_shenzhen, image, save_png

from rayfp.cli.main import main
from rayfp.cloud.client import CloudClient
from rayfp.core.release import Release
from rayfp.store.store import Store

SEEDED = ["mura_xr_wrist", "shenzen_chest_xray_tuberculosis", "cholec80_grasper_presence",
          "cholec80_hook_presence"]
FLAGS = ["--samples", "32", "--edge-samples", "32", "--min-images", "4", "--threads", "2"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    import ray
    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve

    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("catalog-root")
    fake_mura(root, rng, parts=("WRIST",), n=(6, 4))
    fake_shenzhen(root, rng, 8, 8)
    fake_cholec80(root, rng, videos=2, seconds=5)
    fake_isic20(root, rng)  # a partial copy: its label table is cut off mid-row
    gt = root / "isic20/ISIC_2020_Training_GroundTruth.csv"
    gt.write_text(gt.read_text()[:60] + '"ISIC_')
    store = tmp_path_factory.mktemp("catalog-store") / "store"
    port = free_port()
    start_local_serve("127.0.0.1", port, num_cpus=2)
    try:
        first = run_seed(root, store, SEEDED + ["isic20_melanoma_classification"])
        again = run_seed(root, store, SEEDED)
        # The site's query below is exact (a fake of a dozen images would drown in DP noise),
        # so this cloud takes exact queries; tests/cloud/test_serve.py covers private ones.
        serve.run(build_app({"store": str(store), "min_images": 4, "max_epsilon": None}),
                  name="rayfp", route_prefix="/")
        yield {"root": root, "store": Store(store), "url": f"http://127.0.0.1:{port}",
               "first": first, "again": again,
               "space_id": first.rsplit("space ", 1)[1].split(":")[0]}
    finally:
        serve.shutdown()
        ray.shutdown()


def run_seed(root: Path, store: Path, tasks: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["catalog", "seed", str(root), "--store", str(store), *FLAGS,
                     "--tasks", *tasks]) == 0
    return out.getvalue()


def test_seed_fingerprints_the_found_tasks_under_the_papers_ids(seeded):
    store = seeded["store"]
    space = store.get_space(seeded["space_id"])
    assert sorted(fp.task_id for fp in store.fingerprints(space.space_id)) == sorted(SEEDED)
    tasks = {row["task_id"]: row for row in store.tasks().to_pylist()}
    assert len(tasks) == 71  # the paper's knowledge was imported first
    wrist = tasks["mura_xr_wrist"]
    assert wrist["owner"] == "paper" and wrist["modality"] == "x_ray"
    fp = store.get_fingerprint(space.space_id, "mura_xr_wrist")
    assert Release.of(fp.privacy) is None and fp.privacy["plan"] == "paper"  # exact: public data
    # The partial copy is reported with its reason; the others were seeded all the same.
    assert "isic20_melanoma_classification: broken" in seeded["first"]
    assert "ISIC_2020_Training_GroundTruth.csv" in seeded["first"]
    assert "4 tasks seeded" in seeded["first"]
    assert "0 tasks seeded, 4 already there" in seeded["again"]  # resumable


def test_a_new_sites_fingerprint_gets_the_seeded_paper_tasks_and_their_policies(
        seeded, tmp_path, capsys):
    """A site with wrist radiographs of its own (new images, same look) fingerprints them
    locally and asks the cloud: the nearest task is the paper's MURA wrist task, and the
    recommendation carries the paper's augmentation policies for it."""
    rng = np.random.default_rng(99)
    images = tmp_path / "my-wrists"
    for i in range(12):
        save_png(images / f"{i}.png", image(rng, "xray"))
    site = tmp_path / "site-store"
    space = seeded["store"].get_space(seeded["space_id"])
    assert main(["fingerprint", str(images), "--task-id", "my-wrists", "--store", str(site),
                 "--space", space.space_id, "--space-from", seeded["url"], "--samples", "32",
                 "--min-images", "4", "--epsilon", "inf", "--quiet", "--threads", "2"]) == 0
    capsys.readouterr()
    assert main(["query", "--server", seeded["url"], "--task-id", "my-wrists",
                 "--fingerprint-from", str(site), "--epsilon", "inf", "-k", "4",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    ranked = [n["task_id"] for n in answer["neighbours"]]
    assert sorted(ranked) == sorted(SEEDED)
    assert ranked[0] == "mura_xr_wrist", ranked
    fp = Store(site).get_fingerprint(space.space_id, "my-wrists")
    client = CloudClient(seeded["url"])
    rec = client.recommend(fingerprint=fp, kinds=["augmentation"], k=4, rank="distance")
    policies = rec["recommendations"]["augmentation"]
    assert policies[0]["source"] == "mura_xr_wrist" and policies[0]["evidence"] == "component"
    assert json.loads(policies[0]["value"])  # the paper's FasterAutoAugment policy
    assert "FasterAutoAugment search" in policies[0]["provenance"]
    # The learned ranking weighs the paper's outcomes too: it answers, from the same knowledge.
    learned = client.recommend(fingerprint=fp, kinds=["augmentation"], k=4)
    assert [c["ranking"] for c in learned["recommendations"]["augmentation"]] == ["learned"] * 4
