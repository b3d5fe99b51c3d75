"""Transfer recommendations: the top-k most similar known tasks and what worked for them
(docs/design.md §4, the paper's k-shot protocol). Each kind lists, in rank order, every source's best
recorded component by the source's own score; the paper tries all k and keeps the best on local
validation, so nothing is voted on here. For pretraining and co-training the candidates *are*
the k nearest tasks: each is listed, with measured transfers from it as evidence when there are
any, so the list is never empty while there are neighbours."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from rayfp.cloud.knowledge import KnowledgeBase, Neighbour, ensure_kinds
from rayfp.cloud.policy_text import summarize_policy

# Kinds whose component *is* the source task: evidence comes from measured transfers from it.
SOURCE_IS_COMPONENT = {"pretraining": "pretrain", "cotraining": "multi_task"}


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


def recommend(kb: KnowledgeBase, neighbours: Sequence[Neighbour], kinds: Sequence[str]
              ) -> dict[str, list[dict[str, Any]]]:
    """Per kind: one candidate per neighbour that has evidence of that kind, in rank order."""
    kinds = ensure_kinds(kinds)
    components, transfers = kb.evidence()
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        candidates = []
        for rank, nb in enumerate(neighbours, start=1):
            rows = components[(components["task_id"] == nb.task_id)
                              & (components["kind"] == kind)]
            found = _best_component(rows)
            if found is None and kind in SOURCE_IS_COMPONENT:
                found = (_transfer_evidence(transfers, nb.task_id, SOURCE_IS_COMPONENT[kind])
                         or _neighbour_itself(nb.task_id, kind))
            if found is None:
                continue
            if kind == "augmentation":
                found["summary"] = summarize_policy(found["value"])
            confidence = ({} if nb.top1_rate is None else
                          {"top1_rate": nb.top1_rate, "topk_rate": nb.topk_rate})
            candidates.append({"rank": rank, "source": nb.task_id, "distance": nb.distance,
                               "basis": nb.basis, "hub": nb.hub, **confidence, **found})
        out[kind] = candidates
    return out
