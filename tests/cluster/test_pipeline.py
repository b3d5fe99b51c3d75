"""The archive job on a real Ray cluster (`ray start --head`, 2 CPUs, shared by this module):
`ray job submit`, identical counts to the CLI, failures table, idempotent re-runs, kill + resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from rayfp.cli.demo import dicom_corpus
from rayfp.cli.main import main as rayfp_cli
from rayfp.store.store import Store

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOB = ["jobs/fingerprint_archive.py"]
# Exact counts (public test data) unless a test asks for a private release.
COMMON = ["--samples", "48", "--min-images", "3", "--frames-per-call", "4", "--epsilon", "inf"]
PRIVATE = ["--epsilon", "4", "--noise-seed", "3"]


@pytest.fixture(scope="module")
def cluster():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    subprocess.run([BIN / "ray", "start", "--head", "--num-cpus=2", "--num-gpus=0",
                    f"--port={port}", "--node-ip-address=127.0.0.1",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    "--include-dashboard=true"], env=env, check=True, capture_output=True)
    try:
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}",
               "env": env}
    finally:
        subprocess.run([BIN / "ray", "stop", "--force"], env=env, capture_output=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    corpus = {p.name: p for p in dicom_corpus()}
    tasks = {"mr": ["MR_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm", "MR2_UNCR.dcm",
                    "MR_truncated.dcm", "badVR.dcm"],
             "us": ["US1_UNCR.dcm", "OBXXXX1A.dcm", "examples_ybr_color.dcm", "color-pl.dcm"]}
    for task, names in tasks.items():
        (root / task).mkdir()
        for name in names:
            shutil.copy(corpus[name], root / task / name)
    (root / "mr" / "empty.dcm").write_bytes(b"")
    _brain_volumes(root / "brain")
    _brain_series(root / "series")
    return root


def _brain_series(folder: Path) -> None:
    """Three DICOM series of single-slice files in one folder (slabs of the MNI152 template),
    the third with two slices missing: three units, one reported series problem."""
    from rayfp.io.series_writer import mni_volume, write_series

    volume, spacing = mni_volume(2)
    for i, start in enumerate((20, 35, 50)):
        paths = write_series(volume[start:start + 8], folder, series_uid=f"1.2.826.0.9.{i}",
                             spacing=spacing, prefix=f"s{i}-", patient_id=f"p{i}")
        if i == 2:
            for path in paths[3:5]:
                os.unlink(path)


def _brain_volumes(folder: Path) -> None:
    """Three 3-D NIfTI volumes (nilearn's MNI152 template, two shifted copies): a task whose
    unit is the volume."""
    import warnings

    import nibabel as nib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn.datasets import load_mni152_template

        template = load_mni152_template(resolution=2)
    folder.mkdir()
    volume = np.asarray(template.dataobj)
    for i, shift in enumerate((0, 5, 11)):
        nib.save(nib.Nifti1Image(np.roll(volume, shift, axis=2), template.affine),
                 folder / f"t1-{i}.nii.gz")


def run_job(cluster, *args, timeout=600) -> subprocess.CompletedProcess:
    """Plain `python jobs/fingerprint_archive.py` against the running cluster."""
    return subprocess.run([sys.executable, *JOB, *map(str, args), "--address", cluster["gcs"]],
                          cwd=REPO, env=cluster["env"], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def submitted(cluster, archive, tmp_path_factory):
    """One `ray job submit` that creates a space and fingerprints the archive."""
    store = tmp_path_factory.mktemp("submit") / "store"
    out = subprocess.run(
        [BIN / "ray", "job", "submit", "--address", cluster["dashboard"], "--working-dir", ".",
         "--", "python", *JOB, str(archive), "--store", str(store), "--edge-samples", "32",
         "--bins", "20", *COMMON],
        cwd=REPO, env=cluster["env"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    space_id = out.stdout.split("space ")[-1].split()[0]
    return {"store": store, "space": space_id, "log": out.stdout}


def test_job_submit_fingerprints_every_task_and_reports_failures(cluster, submitted):
    store = Store(submitted["store"])
    assert "task mr done" in submitted["log"] and "images/s" in submitted["log"]
    fps = store.fingerprints(submitted["space"])
    assert [fp.task_id for fp in fps] == ["brain", "mr", "series", "us"]
    # a volume is one unit, whatever its slices: a NIfTI file, a multi-frame file, a series
    # spread over files (MR_small and its RLE copy are one series: one unit)
    assert [fp.n_images for fp in fps] == [3, 3, 3, 4] and all(fp.n_samples == 48 for fp in fps)
    failures = store.read_table("failures").to_pylist()
    assert sorted((Path(f["path"]).name, f["reason"]) for f in failures) == [
        ("MR_truncated.dcm", "truncated"), ("badVR.dcm", "bad_vr"), ("empty.dcm", "zero_bytes"),
        ("series:1.2.826.0.9.2", "series_missing_slices"),
        ("series:1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457", "series_duplicate_positions")]
    assert all(f["job_id"] for f in failures)
    assert {f["task_id"] for f in failures} == {"mr", "series"}
    assert "2 irregular DICOM series used" in submitted["log"]
    assert "rayfp-archive-job" in fps[1].source and str(Path(fps[1].source).name) != ""
    # The store's tables are Delta tables that Ray Data reads directly, on the cluster.
    read = subprocess.run(
        [sys.executable, "-c", "import sys, ray; ray.init(address=sys.argv[1]); "
         "print(ray.data.read_delta(sys.argv[2]).count())", cluster["gcs"],
         str(submitted["store"] / "fingerprints")], env=cluster["env"],
        capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    assert int(read.stdout.split()[-1]) == len(fps)  # one row per task: each written once


def test_ray_job_and_cli_give_identical_counts(submitted, archive, capsys, tmp_path):
    local = tmp_path / "local"  # its own store: the job's store stays as the job wrote it
    shutil.copytree(submitted["store"] / "spaces", local / "spaces")
    for task in ("us", "brain", "series"):  # 2-D frames, slices of volumes and of series
        code = rayfp_cli(["fingerprint", str(archive / task), "--task-id", task, "--space",
                          submitted["space"], "--store", str(local), "--samples", "48",
                          "--min-images", "3", "--epsilon", "inf", "--quiet"])
        assert code == 0
        ray_fp = Store(submitted["store"]).get_fingerprint(submitted["space"], task)
        cli_fp = Store(local).get_fingerprint(submitted["space"], task)
        assert np.array_equal(ray_fp.counts, cli_fp.counts)
        np.testing.assert_allclose(ray_fp.feature_sum, cli_fp.feature_sum, rtol=1e-12)


def test_a_manifest_gives_the_same_task_row_and_counts_through_cli_and_ray(
        cluster, submitted, archive, tmp_path, capsys):
    """One manifest reader, one inventory, one release: the `modality` column is honoured by
    both paths (the Ray job used to drop it), both record the same task row, and with the same
    noise seed both release the same differentially private counts."""
    space = submitted["space"]
    stores = {}
    for way in ("cli", "ray"):
        stores[way] = tmp_path / way
        shutil.copytree(submitted["store"] / "spaces", stores[way] / "spaces")
    files = sorted(p for p in (archive / "us").iterdir())
    manifest = tmp_path / "us-scan.csv"  # no task_id column: one task named after the file
    manifest.write_text("path,modality\n" + "\n".join(f"{p},doppler" for p in files))
    job = run_job(cluster, manifest, "--store", stores["ray"], "--space", space, *COMMON,
                  *PRIVATE)
    assert job.returncode == 0, job.stderr[-3000:]
    assert rayfp_cli(["fingerprint", str(manifest), "--task-id", "us-scan", "--space", space,
                      "--store", str(stores["cli"]), "--samples", "48", "--min-images", "3",
                      *PRIVATE, "--quiet"]) == 0
    assert "us-scan" in capsys.readouterr().out
    rows = {way: [{k: v for k, v in row.items() if k != "schema_version"}
                  for row in Store(store).read_table("tasks").to_pylist()]
            for way, store in stores.items()}
    assert rows["ray"] == rows["cli"]
    assert rows["ray"][0]["modality"] == "doppler" and rows["ray"][0]["task_id"] == "us-scan"
    fps = {way: Store(store).get_fingerprint(space, "us-scan") for way, store in stores.items()}
    assert np.array_equal(fps["ray"].counts, fps["cli"].counts)
    assert np.array_equal(fps["ray"].feature_sum, fps["cli"].feature_sum)
    assert fps["ray"].n_images == fps["cli"].n_images == 4
    assert fps["ray"].privacy == fps["cli"].privacy and fps["cli"].privacy["dp"]["epsilon"] == 4
    exact = Store(submitted["store"]).get_fingerprint(space, "us")  # same images, no noise
    assert not np.array_equal(fps["cli"].counts, exact.counts)


def test_a_site_fingerprints_its_part_of_a_pooled_task_with_the_job(
        cluster, submitted, archive, tmp_path, capsys):
    """Site 1 runs the archive job on its volumes (sliced along all three planes), site 2 the
    CLI on its DICOM series; the merged parts equal one site's fingerprint of both, exactly."""
    space = submitted["space"]
    store = tmp_path / "store"
    shutil.copytree(submitted["store"] / "spaces", store / "spaces")
    manifest = tmp_path / "site1.csv"
    manifest.write_text("path,task_id\n" + "\n".join(
        f"{p},pooled" for p in sorted((archive / "brain").iterdir())))
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"pooled": {"part": 1, "image_counts": [3, 3]}}))
    job = run_job(cluster, manifest, "--store", store, "--space", space, *COMMON,
                  "--site-parts", plans, "--part-out", tmp_path / "parts",
                  "--slice-axes", "all")
    assert job.returncode == 0, job.stderr[-3000:]
    assert "task pooled done" in job.stdout
    assert not Store(store).has_fingerprint(space, "pooled")  # a part is not a fingerprint
    part1 = tmp_path / "parts" / "pooled-part-1-of-2.npz"
    again = run_job(cluster, manifest, "--store", store, "--space", space, *COMMON,
                    "--site-parts", plans, "--part-out", tmp_path / "parts")
    assert "0 written, 1 already present" in again.stdout  # re-running is safe
    common = ["--space", space, "--store", str(store), "--samples", "48", "--epsilon", "inf",
              "--quiet"]
    assert rayfp_cli(["fingerprint", str(archive / "series"), "--task-id", "pooled",
                      "--part", "2/2", "--part-images", "3,3", "--part-out",
                      str(tmp_path / "part2.npz"), *common]) == 0
    assert rayfp_cli(["merge", str(part1), str(tmp_path / "part2.npz"), "--store", str(store),
                      "--min-images", "3"]) == 0
    assert rayfp_cli(["fingerprint", str(archive / "brain"), str(archive / "series"),
                      "--task-id", "union", "--min-images", "3", "--slice-axes", "all",
                      *common]) == 0
    capsys.readouterr()
    merged = Store(store).get_fingerprint(space, "pooled")
    union = Store(store).get_fingerprint(space, "union")
    assert merged.n_images == union.n_images == 6
    assert np.array_equal(merged.counts, union.counts)
    np.testing.assert_allclose(merged.feature_sum, union.feature_sum, rtol=1e-9)


def test_rerun_skips_and_minimum_is_reported(cluster, submitted, archive, tmp_path):
    store = Store(submitted["store"])
    before = store.fingerprint_version()
    again = run_job(cluster, archive, "--store", submitted["store"], "--space",
                    submitted["space"], *COMMON)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 written, 4 already present" in again.stdout
    assert Store(submitted["store"]).fingerprint_version() == before  # nothing committed
    copy = tmp_path / "store"  # overwriting happens in a copy: the job's store stays as it was
    shutil.copytree(submitted["store"], copy)
    strict = run_job(cluster, f"file://{archive}", "--store", copy, "--space",
                     submitted["space"], "--overwrite", "--tasks", "mr", "us", "--samples",
                     "48", "--min-images", "4")
    assert strict.returncode == 0, strict.stderr[-3000:]
    assert "task mr: 3 decodable images < minimum 4" in strict.stdout
    via_uri = Store(copy).get_fingerprint(submitted["space"], "us")  # recomputed from a URI
    source = json.loads(via_uri.source)  # a private release (the default ε): no location kept
    assert "archive" not in source and source["location"].startswith("withheld")
    assert via_uri.privacy["dp"] is not None and via_uri.n_images == 4


def test_killed_job_resumes_to_the_uninterrupted_store(cluster, submitted, archive, tmp_path):
    big = tmp_path / "big"
    for copy in ("a", "b"):
        for task in ("mr", "us"):
            shutil.copytree(archive / task, big / f"{task}-{copy}")
    space = submitted["space"]
    reference = tmp_path / "reference"
    resumed = tmp_path / "resumed"
    for store in (reference, resumed):  # both stores share the space
        shutil.copytree(submitted["store"] / "spaces", store / "spaces")
    full = run_job(cluster, big, "--store", reference, "--space", space, *COMMON)
    assert full.returncode == 0, full.stderr[-3000:]

    proc = subprocess.Popen([sys.executable, *JOB, str(big), "--store", str(resumed), "--space",
                             space, *COMMON, "--address", cluster["gcs"]], cwd=REPO,
                            env=cluster["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    watch = Store(resumed)  # committed fingerprints, from the Delta log alone
    deadline = time.time() + 600
    while time.time() < deadline and not watch.fingerprint_files(space).num_rows:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(Store(resumed).fingerprints(space))
    assert 1 <= done_at_kill < 4, "the kill must land mid-way"

    rerun = run_job(cluster, big, "--store", resumed, "--space", space, *COMMON)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done_at_kill} already present" in rerun.stdout
    want = {fp.task_id: fp for fp in Store(reference).fingerprints(space)}
    got = {fp.task_id: fp for fp in Store(resumed).fingerprints(space)}
    assert sorted(got) == sorted(want) == ["mr-a", "mr-b", "us-a", "us-b"]
    for task_id, fp in want.items():
        assert np.array_equal(got[task_id].counts, fp.counts)
        assert got[task_id].n_samples == fp.n_samples
    from deltalake import DeltaTable

    rows = DeltaTable(resumed / "fingerprints").to_pyarrow_table(columns=["task_id"])
    assert rows.num_rows == 4  # nothing committed twice (a killed write commits nothing)


def test_refingerprint_moves_every_task_into_the_new_space(cluster, submitted, tmp_path):
    import dataclasses

    store_dir = tmp_path / "store"
    shutil.copytree(submitted["store"], store_dir)
    store = Store(store_dir)
    old = store.get_space(submitted["space"])
    # Same backbone, weights and edges, half the bins: a new space whose counts must be the old
    # ones with neighbouring bins added, if the same views were drawn again.
    new = dataclasses.replace(old, bins=10, created_at="2099-01-01T00:00:00+00:00")
    store.put_space(new)
    before = {fp.task_id: fp for fp in store.fingerprints(old.space_id)}

    def refingerprint(*args):
        return subprocess.run([sys.executable, "jobs/refingerprint.py", "--store", str(store_dir),
                               "--backbone", "efficientnet_lite0", *args, "--address",
                               cluster["gcs"]], cwd=REPO, env=cluster["env"],
                              capture_output=True, text=True, timeout=600)

    dry = refingerprint("--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"target space {new.space_id}" in dry.stdout
    assert f"{len(before)} task(s) to re-fingerprint" in dry.stdout
    assert store.fingerprints(new.space_id) == []  # a dry run changes nothing
    real = refingerprint()
    assert real.returncode == 0, real.stdout[-3000:] + real.stderr[-3000:]
    after = {fp.task_id: fp for fp in store.fingerprints(new.space_id)}
    assert sorted(after) == sorted(before)
    for task_id, fp in before.items():
        merged = fp.counts.reshape(fp.dim, 10, 2).sum(axis=2)
        assert np.array_equal(after[task_id].counts, merged), task_id
    assert [f.task_id for f in store.fingerprints(old.space_id)] == sorted(before)  # kept
    assert "0 task(s) to re-fingerprint" in refingerprint().stdout
