"""The DP guarantee attacked at the level of files, as an adversary would: neighbouring datasets
whose swapped file sorts elsewhere, is named to sort at every place, keeps the name but not the
content; N mod M = 0, != 0 and N < M; volumes, patients, parts and replicates. Through the real
inventory, plan and mechanism (rayfp.extract.neighbours, rayfp.privacy.dptest); the backbone is
a fixed probe."""

from __future__ import annotations

import json
import math

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from rayfp.core.fingerprint import bin_indices
from rayfp.core.parts import PartPlan
from rayfp.core.replicates import ViewTable, keyed_poisson_weights, poisson_bound
from rayfp.core.sampling import BALANCED_PLAN, KEYED_PLAN
from rayfp.extract.neighbours import (
    exact_counts,
    neighbour_pairs,
    probe_features,
    run_pairs,
    write_population,
    write_volumes,
)
from rayfp.io.inventory import take_inventory
from rayfp.io.sources import ImageSource
from rayfp.io.work import plan_work, sampled_frames
from rayfp.privacy.dptest import clopper_pearson, empirical_epsilon, probe_space
from rayfp.privacy.mechanism import PrivacySpec, active_dims

SPACE = probe_space()
D_ACTIVE = int(active_dims(SPACE).sum())
MEMBERS = 20


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    images = write_population(root / "images", MEMBERS + 1, seed=0)
    return root, images[:MEMBERS], images[MEMBERS]


def _worst(results) -> float:
    return max(result.ratio for result, _, _ in results)


@pytest.mark.parametrize("samples", [MEMBERS, 2 * MEMBERS, 3 * MEMBERS + 7, 13])
def test_every_neighbour_moves_the_counts_within_the_calibrated_sensitivity(population,
                                                                            samples):
    """Swaps whose canary sorts first, last and at every place between (with the first or
    the last member leaving), and a same-name swap: the counts of the two datasets never differ
    by more than cap·√(2D'), the sensitivity the noise is calibrated for."""
    root, members, outsider = population
    pairs = neighbour_pairs(members, outsider, root / f"pairs-{samples}", every_place=True)
    assert len(pairs) == 3 + 2 * (MEMBERS - 1)
    results = run_pairs(pairs, SPACE, samples=samples, seed=0, plan=KEYED_PLAN)
    assert _worst(results) <= 1.0 + 1e-9
    assert _worst(results) > 0.3  # the datasets do differ: the check is not vacuous


def test_the_same_attack_convicts_the_position_keyed_plan(population):
    """The old balanced plan handed out views by place in the file list: a canary that sorts
    last shifts every member, and the count difference is several times the sensitivity."""
    root, members, outsider = population
    pairs = neighbour_pairs(members, outsider, root / "pairs-old")
    by_name = {r.pair: r.ratio for r, _, _ in run_pairs(pairs, SPACE, samples=MEMBERS, seed=0,
                                                        plan=BALANCED_PLAN)}
    assert by_name["canary sorts last"] > 2.0
    assert by_name["canary sorts first"] <= 1.0  # it takes the leaver's place: no shift


def test_volumes_swapped_whole_stay_within_the_bound(tmp_path):
    volumes = write_volumes(tmp_path / "volumes", 9, seed=3)
    pairs = neighbour_pairs(volumes[:8], volumes[8], tmp_path / "pairs")
    for samples in (8, 21):
        results = run_pairs(pairs, SPACE, samples=samples, seed=1, plan=KEYED_PLAN)
        assert 0.3 < _worst(results) <= 1.0 + 1e-9


def _dicom(path, pixels: np.ndarray, patient: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_a_patient_swapped_with_all_their_images_stays_within_the_bound(tmp_path):
    """unit="patient": one patient (two files) out, another in, their files named to sort
    before everyone's."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "dicom"
    folder.mkdir()

    def patient_files(name: str, patient: str) -> list[str]:
        out = []
        for k in range(2):
            coarse = rng.random((4, 4))
            pixels = np.kron(coarse, np.ones((8, 8))) * 255
            path = folder / f"{name}_{k}.dcm"
            _dicom(path, pixels, patient)
            out.append(str(path))
        return out

    members = [f for i in range(8) for f in patient_files(f"p{i:02d}", f"PID{i:02d}")]
    canary = patient_files("a_canary", "PID99")
    a, b = tuple(members), tuple(canary + members[2:])
    assert take_inventory([ImageSource(p, "t") for p in a], task_id="t",
                          unit="patient").n_images == 8
    for samples in (8, 20):
        (ca, m), (cb, _) = (exact_counts(side, SPACE, samples=samples, seed=2, plan=KEYED_PLAN,
                                         unit="patient") for side in (a, b))
        cap = math.ceil(samples / m)
        ratio = np.linalg.norm((cb.counts - ca.counts)[active_dims(SPACE)]) / (
            cap * math.sqrt(2 * D_ACTIVE))
        assert 0.3 < ratio <= 1.0 + 1e-9


def test_a_swap_in_one_part_stays_within_the_task_bound(population):
    """A task in two parts of 10: a canary that sorts first replaces a member of part 2; the
    merged counts (part 1's are untouched) move within the whole task's sensitivity."""
    root, members, outsider = population
    pair = neighbour_pairs(members[10:], outsider, root / "pairs-part")[0]
    for samples in (20, 33):
        plan = PartPlan("t", (10, 10), samples, seed=4, plan=KEYED_PLAN)
        (ca, _), (cb, _) = (exact_counts(side, SPACE, samples=samples, seed=4, plan=KEYED_PLAN,
                                         part=(plan, 2)) for side in (pair.a, pair.b))
        assert ca.n == cb.n == plan.views_in(2)
        cap = math.ceil(samples / 20)
        ratio = np.linalg.norm((cb.counts - ca.counts)[active_dims(SPACE)]) / (
            cap * math.sqrt(2 * D_ACTIVE))
        assert 0.2 < ratio <= 1.0 + 1e-9


def _view_table(paths, samples: int) -> ViewTable:
    """The site's view table of these files, each unit keyed as its nonce travels with it."""
    inventory = take_inventory([ImageSource(p, "t") for p in paths], task_id="t")
    keys = {inventory.unit_key(inventory.images[i]): c.hex()
            for i, c in zip(inventory.unit_starts, inventory.unit_contents())}
    batches = []
    for item in plan_work(inventory, samples=samples, seed=0, plan=KEYED_PLAN):
        for frame in sampled_frames(item):
            features = probe_features(frame.canonical, frame.top, frame.left, frame.flip)
            batches.append(([keys[frame.image]] * len(features), bin_indices(features, SPACE),
                            features))
    return ViewTable.from_batches(SPACE, "t", batches, images=sorted(keys.values()))


def test_keyed_replicates_move_within_their_public_bound(population):
    """Private replicates weight each image by multiplicities from its own key: a swap that
    reorders files changes the R replicates together by at most cap·√(2D')·L."""
    root, members, outsider = population
    pair = neighbour_pairs(members, outsider, root / "pairs-replicates")[1]  # sorts last
    replicates, samples = 16, 30
    counts = []
    for side in (pair.a, pair.b):
        table = _view_table(side, samples)
        weights = keyed_poisson_weights(table.images, replicates, seed=7)
        assert np.sqrt((weights ** 2).sum(axis=0)).max() <= poisson_bound(replicates)
        counts.append(np.stack([p.counts for p in table.weighted(SPACE, weights)]))
    cap = math.ceil(samples / MEMBERS)
    diff = (counts[1] - counts[0])[:, active_dims(SPACE)]
    ratio = np.linalg.norm(diff) / (cap * math.sqrt(2 * D_ACTIVE) * poisson_bound(replicates))
    assert 0.05 < ratio <= 1.0


def test_clopper_pearson_covers_the_proportion():
    lo, hi = clopper_pearson(50, 100, 0.05)
    assert lo < 0.5 < hi and hi - lo < 0.25
    assert clopper_pearson(0, 100, 0.05)[0] == 0.0 and clopper_pearson(100, 100, 0.05)[1] == 1.0


STOCHASTIC_MEMBERS = 50
RELEASES = 2000  # per neighbour; half choose the threshold, half judge it


@pytest.fixture(scope="module")
def worst_pairs(tmp_path_factory):
    """A 50-image task and the swap that shifts every member under the old plan (the canary
    sorts last, N = M): its counts under each plan."""
    root = tmp_path_factory.mktemp("dp-stochastic")
    images = write_population(root / "images", STOCHASTIC_MEMBERS + 1, seed=0)
    pair = neighbour_pairs(images[:-1], images[-1], root / "pairs")[1]
    return {plan: run_pairs([pair], SPACE, samples=STOCHASTIC_MEMBERS, seed=0, plan=plan)[0]
            for plan in (KEYED_PLAN, BALANCED_PLAN)}


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 8.0])
def test_the_empirical_epsilon_stays_below_the_claim(worst_pairs, epsilon):
    """2,000 releases of each neighbour with fresh (seeded) noise, the optimal distinguisher,
    a held-out threshold, Clopper-Pearson: the lower bound on ε is below the claimed ε."""
    result, a, b = worst_pairs[KEYED_PLAN]
    assert result.ratio <= 1.0 + 1e-9
    found = empirical_epsilon(a, b, SPACE, n_images=STOCHASTIC_MEMBERS,
                              spec=PrivacySpec(epsilon=epsilon), releases=RELEASES, seed=11)
    assert found["epsilon_lower_bound"] < epsilon


def test_the_stochastic_test_has_the_power_to_catch_a_broken_plan(worst_pairs):
    """The same test on the position-keyed plan proves more than the claimed ε = 1: it would
    have caught the bug."""
    result, a, b = worst_pairs[BALANCED_PLAN]
    assert result.ratio > 4.0
    found = empirical_epsilon(a, b, SPACE, n_images=STOCHASTIC_MEMBERS,
                              spec=PrivacySpec(epsilon=1.0), releases=RELEASES, seed=11)
    assert found["epsilon_lower_bound"] > 1.0


def test_rayfp_audit_dp_test_reports_and_draws(tmp_path, capsys):
    """The command a site runs on its own images: the images given are the population."""
    from rayfp.cli.main import main

    images = write_population(tmp_path / "site", 9, seed=8)
    code = main(["audit", "--dp-test", str(tmp_path / "site"), "--members", "8", "--samples",
                 "8", "11", "--epsilon", "1", "--releases", "200", "--out", str(tmp_path / "out"),
                 "--quiet"])
    assert code == 0 and "held for every pair" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "dp-test.json").read_text())
    assert {r["samples"] for r in result["pairs"]} == {8, 11}
    assert all(r["ratio"] <= 1 + 1e-9 for r in result["pairs"])
    assert (tmp_path / "out" / "dp-test.png").stat().st_size > 10_000
    assert len(images) == 9
