"""The cloud's learned ranking: what worked, kept in memory and refit only when the recorded
outcomes change (docs/learned.md).

`OutcomeModel.current(store)` returns the model of the store's present transfers table: the
standardised outcomes per scenario (rayfp.evaluate.learned) and, per scenario, the blend weight
α chosen leave-one-target-out against the imported bKLD (small) distances of the recorded
targets (none imported: the prior alone). A recommendation asks it for a ranking of candidate
sources that leaves the query's own task out.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import pandas as pd

from rayfp.evaluate.learned import (
    SCENARIO_OF_KIND,
    AlphaChooser,
    Prior,
    blend,
    explain,
    standardised,
)
from rayfp.store.store import Store

MAX_CACHED = 4096  # priors kept per model (one per scenario and query task)
# The imported matrix the blend is tuned against (the paper's bKLD small).
BLEND_SELECTOR = "KLD-PP:NS-W:TS-100-BINS"


class OutcomeModel:
    def __init__(self, transfers: pd.DataFrame, distances: pd.DataFrame) -> None:
        self.priors: dict[str, Prior] = {}
        self.alphas: dict[str, float] = {}
        self.outcomes = len(transfers)
        self._stats: dict[tuple[str, str | None], pd.DataFrame] = {}  # priors leaving one out
        for scenario, rows in transfers.groupby("scenario"):
            prior = Prior(standardised(rows))
            self.priors[str(scenario)] = prior
            self.alphas[str(scenario)] = self._alpha(prior, distances)

    @staticmethod
    def _alpha(prior: Prior, distances: pd.DataFrame) -> float:
        if distances.empty:
            return 0.0
        affinity = -distances

        def affinity_of(target: str) -> pd.Series | None:
            return affinity[target] if target in affinity.columns else None

        def candidates_of(target: str) -> list[str]:
            return [s for s in prior.sources if s != target]

        return AlphaChooser(prior, affinity_of, candidates_of).choose()

    def rank(self, kind: str, candidates: Sequence[str], distances: Mapping[str, float], *,
             exclude: str | None) -> list[dict]:
        """The candidates (and every source with recorded outcomes of this kind) ranked by the
        learned score, best first, each with why. ``exclude``: the query's own task, whose
        outcomes are never used and which is never its own source. Empty when nothing is
        recorded for the kind (the caller falls back to distance)."""
        scenario = SCENARIO_OF_KIND.get(kind)
        prior = self.priors.get(scenario or "")
        if prior is None:
            return []
        stats = self._stats.get((scenario, exclude))
        if stats is None:
            stats = prior.of(exclude=[exclude] if exclude else [])
            if len(self._stats) < MAX_CACHED:
                self._stats[scenario, exclude] = stats
        pool = [s for s in dict.fromkeys([*candidates, *stats.index[stats["n"] > 0]])
                if s != exclude]
        if not pool:
            return []
        affinity = pd.Series({s: -d for s, d in distances.items()}, dtype=float)
        alpha = self.alphas[scenario]
        score = blend(stats["prior"].reindex(pool).fillna(0.0),
                      affinity if len(affinity) >= 2 else None, alpha)
        near = {s: i for i, s in enumerate(sorted(distances, key=distances.get), start=1)}
        rows = stats.reindex(pool).fillna(0).to_dict("index")
        ordered = score.sort_values(ascending=False, kind="stable")
        return [{"source": s, "learned_score": float(value), "alpha": alpha,
                 "n_targets": int(rows[s]["n"]), "improved": int(rows[s]["improved"]),
                 "prior": float(rows[s]["prior"]),
                 "why": explain(rows[s], rank_by_distance=near.get(s))}
                for s, value in ordered.items()]

    # -- one model per store version ------------------------------------------------------------
    _cache: dict[str, tuple[tuple, OutcomeModel]] = {}
    _lock = threading.Lock()

    @classmethod
    def current(cls, store: Store) -> OutcomeModel:
        """The model of the store's outcomes now: refit only when the transfers or the imported
        distances changed since the last call (never a full read per request)."""
        version = (store.knowledge_version("transfers"),
                   store.knowledge_version("imported_distances"))
        key = str(store.root)
        with cls._lock:
            cached = cls._cache.get(key)
            if cached is not None and cached[0] == version:
                return cached[1]
            transfers = store.transfers().to_pandas()
            imported = store.imported_distances().to_pandas()
            rows = imported[imported["selector"] == BLEND_SELECTOR]
            distances = (rows.pivot_table(index="source", columns="target", values="distance")
                         if len(rows) else pd.DataFrame())
            model = cls(transfers, distances)
            cls._cache[key] = (version, model)
            return model
