"""Transfer recommendations: k candidate sources per kind and what worked for them (docs/design.md
§4, the paper's k-shot protocol). Each kind lists, in rank order, every source's best recorded
component by the source's own score; the paper tries all k and keeps the best on local
validation, so nothing is voted on here. For pretraining and co-training the candidates *are*
source tasks: each is listed, with measured transfers from it as evidence when there are any.

The order: by the learned score (rank="learned", the default: what worked on other targets,
blended with the distance, rayfp/cloud/learning.py; docs/learned.md), or by distance alone
(rank="distance", and the learned order's cold start: a kind with no recorded outcomes)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from rayfp.cloud.knowledge import KnowledgeBase, Neighbour, ensure_kinds
from rayfp.cloud.policy_text import summarize_policy
from rayfp.errors import ConfigError

# Kinds whose component *is* the source task: evidence comes from measured transfers from it.
SOURCE_IS_COMPONENT = {"pretraining": "pretrain", "cotraining": "multi_task"}


class Evidence:
    """What the store records, indexed once per version of its tables: each (task, kind)'s best
    component and each (source, scenario)'s transfer evidence, so a recommendation is a few
    dictionary lookups instead of table scans."""

    def __init__(self, components: pd.DataFrame, transfers: pd.DataFrame) -> None:
        self.components = {key: found for key, rows in components.groupby(["task_id", "kind"])
                           if (found := _best_component(rows)) is not None}
        self.transfers = {key: found for key, rows in transfers.groupby(["source", "scenario"])
                          if (found := _transfer_evidence(rows, *key)) is not None}

    def component(self, task_id: str, kind: str) -> dict[str, Any] | None:
        found = self.components.get((task_id, kind))
        return None if found is None else dict(found)

    def transfer(self, source: str, scenario: str) -> dict[str, Any] | None:
        found = self.transfers.get((source, scenario))
        return None if found is None else dict(found)


def _best_component(rows: pd.DataFrame) -> dict[str, Any] | None:
    if rows.empty:
        return None
    ranked = rows.assign(_score=rows["score"].fillna(-math.inf)).sort_values(
        ["_score", "seed", "value"], ascending=[False, True, True], kind="stable")
    best = ranked.iloc[0]
    same = rows[(rows["value"] == best["value"]) & (rows["metric"] == best["metric"])]
    score = None if pd.isna(best["score"]) else float(best["score"])
    return {"value": best["value"], "score": score, "metric": best["metric"],
            "n_seeds": int(same["seed"].nunique()), "provenance": best["provenance"],
            "evidence": "component"}


def _transfer_evidence(transfers: pd.DataFrame, source: str, scenario: str
                       ) -> dict[str, Any] | None:
    rows = transfers[(transfers["source"] == source) & (transfers["scenario"] == scenario)]
    if rows.empty:
        return None
    metric = sorted(rows["metric"].unique())[0]
    rows = rows[rows["metric"] == metric]
    return {"value": source, "score": float(rows["score"].mean()), "metric": metric,
            "n_seeds": int(rows["seed"].nunique()),
            "provenance": f"mean of {len(rows)} measured {scenario} transfers from {source} "
                          f"to {rows['target'].nunique()} targets",
            "evidence": "transfer"}


def _neighbour_itself(source: str, kind: str) -> dict[str, Any]:
    return {"value": source, "score": None, "metric": "", "n_seeds": 0,
            "provenance": f"one of the k nearest tasks: the paper's {kind} candidates; no "
                          "measured transfer from it is recorded yet",
            "evidence": "nearest"}


RANKS = ("learned", "distance")


@functools.lru_cache(maxsize=4096)
def _summary(policy: str) -> str:
    """A policy's summary, made once per policy (walking one takes milliseconds)."""
    return summarize_policy(policy)


def recommend(kb: KnowledgeBase, neighbours: Sequence[Neighbour], kinds: Sequence[str], *,
              rank: str = "learned", target: str | None = None, k: int | None = None
              ) -> dict[str, list[dict[str, Any]]]:
    """Per kind: up to k candidates (default: one per neighbour) with evidence of that kind,
    in rank order. ``target``: the query's own task (its outcomes never used; never its own
    source)."""
    kinds = ensure_kinds(kinds)
    if rank not in RANKS:
        raise ConfigError(f"rank must be one of {RANKS}, got {rank!r}")
    k = k or len(neighbours)
    evidence = kb.derived("evidence", ("components", "transfers"),
                          lambda frames: Evidence(frames["components"], frames["transfers"]))
    by_task = {nb.task_id: nb for nb in neighbours}
    model = kb.outcome_model() if rank == "learned" else None
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        learned = [] if model is None else model.rank(
            kind, list(by_task), {t: nb.distance for t, nb in by_task.items()}, exclude=target)
        order = ([(row["source"], row) for row in learned] if learned
                 else [(nb.task_id, None) for nb in neighbours[:k]])
        candidates = []
        for place, (source, why) in enumerate(order, start=1):
            found = evidence.component(source, kind)
            if found is None and kind in SOURCE_IS_COMPONENT:
                found = (evidence.transfer(source, SOURCE_IS_COMPONENT[kind])
                         or _neighbour_itself(source, kind))
            if found is None:
                continue
            if kind == "augmentation":
                found["summary"] = _summary(found["value"])
            nb = by_task.get(source)
            near = ({"distance": None, "basis": "outcomes", "hub": False} if nb is None else
                    {"distance": nb.distance, "basis": nb.basis, "hub": nb.hub})
            confidence = ({} if nb is None or nb.top1_rate is None else
                          {"top1_rate": nb.top1_rate, "topk_rate": nb.topk_rate})
            ranking = ({"ranking": "distance"} if why is None else
                       {"ranking": "learned", **{f: why[f] for f in (
                           "learned_score", "alpha", "n_targets", "improved", "prior", "why")}})
            # distance: the neighbour's rank; learned: the place in the returned list
            candidates.append({"rank": place if why is None else len(candidates) + 1,
                               "source": source, **near, **confidence, **ranking, **found})
            if len(candidates) == k:
                break
        out[kind] = candidates
    return out
