"""A site's privacy ledger: every release of a task's units, composed, against a budget.

Each private release (a fingerprint, a re-fingerprint into a new space, a part of a pooled
task, a query's replicates) is a Gaussian mechanism on the same images. Their privacy losses
add up, more slowly than ε does: the ledger keeps each release's noise multiplier σ/Δ and
δ, and composes them with dp-accounting's PLD accountant at δ_total = Σδ. A release that would
take a task past the site's budget (``PrivacySpec.budget``, ``--privacy-budget``) is refused
before anything is stored or sent. Sending a stored fingerprint again is post-processing and
costs nothing; parametric replicates neither.

The ledger is the store's `releases` table, keyed by task id: the same images fingerprinted
under two task ids are two entries (docs/privacy.md says so).
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from rayfp.core.release import Release
from rayfp.errors import PrivacyBudgetError
from rayfp.privacy.replicates import composed_epsilon
from rayfp.store.store import Store

KINDS = ("fingerprint", "part", "replicates")


@dataclasses.dataclass(frozen=True)
class Spent:
    """A task's composed privacy loss over its releases."""

    task_id: str
    releases: int
    epsilon: float
    delta: float

    def text(self) -> str:
        return (f"{self.task_id!r}: ε = {self.epsilon:.3g} at δ = {self.delta:.2g} over "
                f"{self.releases} release(s)")


def noise_multiplier(dp: Mapping[str, Any]) -> float:
    """σ/Δ of one release from its `dp` record (a part: its own σ; a separately noised sum:
    the two Gaussians as one of the combined multiplier)."""
    sigma = float(dp.get("sigma_part") or dp["sigma_counts"])
    multiplier = sigma / float(dp["sensitivity_counts"])
    if dp.get("sigma_sum"):
        multiplier = 1.0 / math.hypot(1.0 / multiplier,
                                      float(dp["sensitivity_sum"]) / float(dp["sigma_sum"]))
    return multiplier


def _compose(task_id: str, events: Sequence[tuple[float, float]]) -> Spent:
    if not events:
        return Spent(task_id, 0, 0.0, 0.0)
    delta = sum(d for _, d in events)
    multipliers = tuple(sorted(round(m, 12) for m, _ in events))
    return Spent(task_id, len(events), composed_epsilon(multipliers, delta), delta)


def _events(store: Store, task_id: str) -> list[tuple[float, float]]:
    return [(r["noise_multiplier"], r["delta"]) for r in store.releases().to_pylist()
            if r["task_id"] == task_id]


def spent(store: Store, task_id: str) -> Spent:
    """What the task's releases recorded in this store have spent together."""
    return _compose(task_id, _events(store, task_id))


def ledger(store: Store) -> list[Spent]:
    """Every task with a private release, by task id."""
    tasks = sorted({r["task_id"] for r in store.releases().to_pylist()})
    return [spent(store, t) for t in tasks]


def charge(store: Store, task_id: str, *, kind: str, privacy: Mapping[str, Any] | None,
           space_id: str, budget: float | None) -> Spent | None:
    """Record a release of ``task_id``'s units (``privacy``: its record; exact counts: nothing
    to record) after checking that the total stays within ``budget`` (None: no limit). Raises
    PrivacyBudgetError with the numbers otherwise, recording nothing. Returns the new total."""
    stated = Release.of(privacy)
    if stated is None:
        return None
    dp = stated.record
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    event = (noise_multiplier(dp), float(dp["delta"]))
    events = _events(store, task_id)  # one read of the ledger for both totals
    before, after = _compose(task_id, events), _compose(task_id, [*events, event])
    if budget is not None and after.epsilon > budget:
        raise PrivacyBudgetError(
            f"{kind} of {task_id!r} refused: its images have spent ε = {before.epsilon:.3g} "
            f"(δ = {before.delta:.2g}) over {before.releases} release(s); this release (ε = "
            f"{float(dp['epsilon']):g}) would bring them to ε = {after.epsilon:.3g}, past the "
            f"budget of {budget:g}. See `rayfp privacy budget`; raise --privacy-budget only if "
            "your privacy policy allows")
    store.put_releases([{
        "task_id": task_id, "release_id": uuid.uuid4().hex, "kind": kind, "space_id": space_id,
        "epsilon": float(dp["epsilon"]), "delta": float(dp["delta"]),
        "noise_multiplier": event[0], "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}])
    return after
