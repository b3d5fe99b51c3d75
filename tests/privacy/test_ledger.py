"""The site's privacy ledger: every release of a task's images composed (PLD accountant), and a
budget that refuses the release that would pass it (rayfp.privacy.ledger)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_space, random_fingerprint

from rayfp.cli.main import main
from rayfp.core.fingerprint import PartialCounts
from rayfp.core.parts import PartPlan
from rayfp.errors import PrivacyBudgetError
from rayfp.privacy.ledger import charge, ledger, noise_multiplier, spent
from rayfp.privacy.mechanism import PrivacySpec, release
from rayfp.privacy.parts import release_part
from rayfp.privacy.replicates import composed_epsilon
from rayfp.store.store import Store

SPACE = make_space(dim=8, bins=10)


def _record(rng, epsilon: float = 1.0) -> dict:
    fp = random_fingerprint(rng, SPACE, "t", n=400)
    partial = PartialCounts(SPACE.space_id, fp.counts, fp.feature_sum, 400)
    _, record = release(partial, SPACE, task_id="t", n_images=80, min_images=1,
                        spec=PrivacySpec(epsilon=epsilon, seed=1))
    return record


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(tmp_path / "site")
    store.put_space(SPACE)
    return store


def test_releases_compose_and_the_budget_refuses_the_one_that_passes_it(store, rng):
    dp = _record(rng)["dp"]
    first = charge(store, "ct", kind="fingerprint", privacy=dp, space_id=SPACE.space_id, budget=1.5)
    assert first.releases == 1 and first.epsilon == pytest.approx(1.0, abs=0.02)
    # A re-fingerprint of the same images (say, into a new space) spends again: ε = 1.40 for
    # two releases at ε = 1, not 2 (Gaussian composition), and δ adds up.
    second = charge(store, "ct", kind="fingerprint", privacy=dp, space_id=SPACE.space_id,
                    budget=1.5)
    z = noise_multiplier(dp)
    assert second.epsilon == pytest.approx(composed_epsilon((z, z), 2e-6))
    assert 1.3 < second.epsilon < 1.5 and second.delta == pytest.approx(2e-6)
    with pytest.raises(PrivacyBudgetError, match=r"spent ε = 1.4.*past the budget of 1.5"):
        charge(store, "ct", kind="replicates", privacy=dp, space_id=SPACE.space_id, budget=1.5)
    assert spent(store, "ct").releases == 2  # the refused release is not recorded
    assert charge(store, "ct", kind="fingerprint", privacy=None, space_id=SPACE.space_id,
                  budget=0.1) is None  # exact counts: nothing private to spend
    # Another task's images have their own ledger.
    assert charge(store, "us", kind="fingerprint", privacy=dp, space_id=SPACE.space_id,
                  budget=1.5).releases == 1
    assert [(s.task_id, s.releases) for s in ledger(store)] == [("ct", 2), ("us", 1)]


def test_a_part_is_charged_with_its_own_noise(store, rng):
    plan = PartPlan("pooled", (40, 40), 400, seed=0, plan="keyed")
    fp = random_fingerprint(rng, SPACE, "pooled", n=200)
    partial = PartialCounts(SPACE.space_id, fp.counts, fp.feature_sum, 200)
    full = release_part(partial, SPACE, plan=plan, part=1, spec=PrivacySpec(epsilon=1.0))
    split = release_part(partial, SPACE, plan=plan, part=1, spec=PrivacySpec(epsilon=1.0),
                         noise_share="split")
    # σ/√2 per part: alone, a split part is protected much less than its task's ε = 1.
    assert noise_multiplier(split.privacy["dp"]) == pytest.approx(
        noise_multiplier(full.privacy["dp"]) / np.sqrt(2))
    alone = charge(store, "pooled", kind="part", privacy=split.privacy["dp"],
                   space_id=SPACE.space_id, budget=None)
    assert alone.epsilon > 1.3


def test_rayfp_privacy_budget_prints_the_ledger(store, rng, capsys):
    dp = _record(rng, epsilon=2.0)["dp"]
    charge(store, "ct", kind="fingerprint", privacy=dp, space_id=SPACE.space_id, budget=None)
    assert main(["privacy", "budget", "--store", str(store.root), "--budget", "8"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("ct"))
    assert row[1] == "1" and float(row[2]) == pytest.approx(2.0, abs=0.05)
    assert float(row[4]) == pytest.approx(6.0, abs=0.05)
