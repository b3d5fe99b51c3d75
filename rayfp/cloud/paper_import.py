"""`rayfp import-paper [DIR]`: the paper's 71 tasks, their FasterAutoAugment policies, released
transfer outcomes and baselines, and released distance matrices, into a store. None of these
tasks has a fingerprint (none were released): nearest/recommend for them use the imported
distances, labelled as such. DIR defaults to the copy of the released data that ships with rayfp."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np

from rayfp.errors import ConfigError
from rayfp.evaluate.data import (
    OUTCOME_METRICS,
    PAPER_SELECTORS,
    SCENARIOS,
    PaperData,
    baseline_file,
    outcome_file,
)
from rayfp.store.store import Store

# Policy folder names that differ from task_infos names (the v2 task kept its v1 folder).
POLICY_FOLDER_ALIASES = {"breast_cancer_classification": "breast_cancer_classification_v2"}
PROVENANCE = "arXiv 2412.08763 released data (IMSY-DKFZ/task-fingerprinting 064ddd8, MIT)"


def _keywords(text: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
        return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    except (ValueError, SyntaxError):
        return [text]


def import_paper(data_dir: str | Path | None, store: Store) -> dict[str, int]:
    """Returns the number of rows imported per table."""
    data = PaperData(data_dir)
    infos = data.task_infos
    tasks = [{"task_id": name, "name": name, "modality": str(row["domains"]),
              "keywords": _keywords(str(row["keywords"])), "task_type": str(row["task_types"]),
              "n_classes": int(row["num_classes"]), "n_images": int(row["num_samples"]),
              "owner": "paper"} for name, row in infos.iterrows()]
    counts = {"tasks": store.put_tasks(tasks)}

    policies = []
    for search_dir, task_dir, text in data.policies():
        search = int(search_dir.rsplit("_", 1)[-1])
        folder_task = re.sub(r"^TASK\d*_", "", task_dir.split("%", 1)[1])
        task_id = POLICY_FOLDER_ALIASES.get(folder_task, folder_task)
        if task_id not in infos.index:
            raise ConfigError(f"unexpected policy folder {search_dir}/AA/{task_dir}")
        policies.append({"task_id": task_id, "kind": "augmentation",
                         "value": json.dumps(json.loads(text), separators=(",", ":")),
                         "metric": "", "score": None, "seed": search,
                         "provenance": f"FasterAutoAugment search {search} on {task_id}; "
                                       f"{PROVENANCE}"})
    counts["components"] = store.put_components(policies)

    transfers, baselines = [], []
    for scenario in SCENARIOS:
        for metric in OUTCOME_METRICS:
            name = "exp/" + outcome_file(scenario, metric, False)
            if not data.has(name):
                continue
            frame = data.raw_csv(name)
            transfers += [{"scenario": scenario, "metric": metric, "source": r.s, "target": r.t,
                           "seed": int(r.r), "score": float(r.p)} for r in frame.itertuples()]
    for metric in OUTCOME_METRICS:
        for shrunk in (True, False):
            name = "exp/" + baseline_file(metric, shrunk, False)
            if not data.has(name):
                continue
            frame = data.raw_csv(name)
            scenario = "no-transfer-shrunk" if shrunk else "no-transfer-full"
            baselines += [{"scenario": scenario, "target": target, "metric": metric,
                           "seed": int(seed), "score": float(frame.loc[seed, target])}
                          for seed in frame.index for target in frame.columns]
    counts["transfers"] = store.put_transfers(transfers)
    counts["baselines"] = store.put_baselines(baselines)

    distances = []
    for name, stem in PAPER_SELECTORS.items():
        matrix = data.raw_csv(f"distances/{stem}.csv")
        matrix = matrix[[c for c in matrix.columns if c in infos.index]]  # full tasks only
        values = matrix.to_numpy(dtype=float)
        for i, source in enumerate(matrix.index):
            for j, target in enumerate(matrix.columns):
                if np.isfinite(values[i, j]):
                    distances.append({"selector": stem, "source": source, "target": target,
                                      "distance": float(values[i, j]),
                                      "provenance": f"{name}; {PROVENANCE}"})
    counts["imported_distances"] = store.put_imported_distances(distances)
    return counts
