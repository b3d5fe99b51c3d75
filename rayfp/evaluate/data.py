"""The paper's released evaluation data: task facts, task lists, distance matrices, transfer
outcomes and no-transfer baselines (PROTOCOL.md §1-§2). DIR is the paper repository's `cache/`
folder or `../shared/paper-data` (same names: exp/, distances/, task_infos.csv)."""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from rayfp.errors import ConfigError, UnknownNameError
from rayfp.evaluate.csvfloat import pandas2_float
from rayfp.evaluate.names import (  # noqa: F401 - re-exported for the protocol's users
    FLOAT_PARSERS,
    OUTCOME_METRICS,
    PAPER_SELECTORS,
    SCENARIO_NAMES,
    SCENARIOS,
    SETTINGS,
)

# The paper's task lists (published facts, MIT: published/LICENSE-task-splits.txt), so a bare
# `cache/` folder of the paper's repository, which lacks them, can be evaluated as it is.
PUBLISHED_SPLITS = Path(__file__).parent / "published" / "task_splits.json"
_SHRUNK_LOADERS = {"arch", "multi_task"}  # their loaders take shrunk=True (PROTOCOL §2.1)


def outcome_file(scenario: str, metric: str, validation: bool) -> str:
    if scenario in _SHRUNK_LOADERS:
        return f"load_{scenario}_experiment%{metric}%True%{validation}.csv"
    return f"load_{scenario}_experiment%{metric}%{validation}.csv"


def baseline_file(metric: str, shrunk: bool, validation: bool) -> str:
    return f"load_baseline_experiment%{metric}%{shrunk}%{validation}.csv"


@dataclasses.dataclass(frozen=True)
class TaskSplits:
    development: tuple[str, ...]
    validation: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    non_shrinkable: frozenset[str]
    shrink_tag: str

    @classmethod
    def load(cls, path: Path) -> TaskSplits:
        raw = json.loads(path.read_text())
        return cls(tuple(raw["development_tasks"]), tuple(raw["validation_tasks"]),
                   {k: tuple(v) for k, v in raw["image_sharing_groups"].items()},
                   frozenset(raw["non_shrinkable_tasks"]), raw["shrink_tag"])


class PaperData:
    """Lazy access to one data folder; every missing file is an error naming it."""

    def __init__(self, root: str | Path, *, splits: str | Path | None = None,
                 float_parser: str = "pandas2") -> None:
        if float_parser not in FLOAT_PARSERS:
            raise UnknownNameError("CSV float parser", float_parser, FLOAT_PARSERS)
        self.root = Path(root)
        self.float_parser = float_parser
        if not (self.root / "exp").is_dir() or not (self.root / "distances").is_dir():
            raise ConfigError(f"{self.root} is not a paper data folder: expected exp/ and "
                              "distances/ (the paper repository's cache/ or ../shared/paper-data)")
        splits_path = Path(splits) if splits else self.root / "task_splits.json"
        if splits is None and not splits_path.is_file():
            splits_path = PUBLISHED_SPLITS  # the paper's task lists ship with rayfp
        if not splits_path.is_file():
            raise ConfigError(f"no task lists at {splits_path}; pass --splits FILE "
                              "(task_splits.json of ../shared/paper-data)")
        self.splits = TaskSplits.load(splits_path)

    @cached_property
    def task_infos(self) -> pd.DataFrame:
        return pd.read_csv(self.root / "task_infos.csv", index_col=0).set_index("name")

    def _csv(self, *parts: str) -> pd.DataFrame:
        path = self.root.joinpath(*parts)
        if not path.is_file():
            raise ConfigError(f"missing file {path}")
        if self.float_parser == "exact":
            return pd.read_csv(path, index_col=0, header=0)
        return read_csv_pandas2(path)

    def available_selectors(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "distances").glob("*.csv"))

    def distances(self, stem: str) -> pd.DataFrame:
        """Rows: sources (full tasks); columns: targets (incl. shrunk variants); lower = closer."""
        if not (self.root / "distances" / f"{stem}.csv").is_file():
            raise UnknownNameError("distance matrix", stem, self.available_selectors())
        return self._csv("distances", f"{stem}.csv").astype(float)

    def outcomes(self, scenario: str, metric: str, validation: bool) -> pd.DataFrame:
        """Columns r (seed), s (source), t (base target), p (outcome)."""
        if scenario not in SCENARIOS:
            raise UnknownNameError("scenario", scenario, SCENARIOS)
        return self._csv("exp", outcome_file(scenario, metric, validation))

    def baselines(self, metric: str, shrunk: bool, validation: bool) -> pd.DataFrame:
        """3 rows (seed 0, 1, 2) x one column per target."""
        return self._csv("exp", baseline_file(metric, shrunk, validation))


def read_csv_pandas2(path: str | Path) -> pd.DataFrame:
    """pd.read_csv(index_col=0) with pandas 2's float parser for every numeric column."""
    raw = pd.read_csv(path, index_col=0, header=0, dtype=str, keep_default_na=False)
    out = {}
    for column in raw.columns:
        try:
            values = [pandas2_float(v) for v in raw[column]]
        except ValueError:
            out[column] = raw[column]  # a text column (source / target names)
            continue
        series = pd.Series(values, index=raw.index, dtype=float)
        is_int = series.notna().all() and (series == series.round()).all() and not any(
            "." in v or "e" in v.lower() for v in raw[column])
        out[column] = series.astype(int) if is_int else series
    frame = pd.DataFrame(out, index=raw.index)
    try:
        frame.index = frame.index.astype(int)
    except (TypeError, ValueError):
        pass
    return frame


def read_selector_matrix(path: str | Path) -> pd.DataFrame:
    """A user's distance matrix (`rayfp compare --format csv` or the paper's layout): first column
    the source names, header the target names, lower = closer."""
    frame = pd.read_csv(path, index_col=0, header=0)
    if frame.empty or not np.issubdtype(frame.to_numpy().dtype, np.number):
        raise ConfigError(f"{path}: expected a numeric source x target matrix with a header row "
                          "of target names and a first column of source names")
    return frame.astype(float)


def csls(distances: pd.DataFrame, k: int) -> pd.DataFrame:
    """Cross-domain similarity local scaling (Conneau et al. 2018) for a distance matrix
    (rows sources, columns targets, lower = closer): 2 d(s, t) - r_s - r_t, with r_s the mean
    distance of source s to its k nearest targets and r_t that of target t to its k nearest
    sources (self, inf and exact zeros left out, as affinity() leaves them out). A hub (near to
    many targets, small r_s) moves away; a target in a dense region is not favoured."""
    values = distances.to_numpy(dtype=float, copy=True)
    values[~np.isfinite(values) | (values == 0)] = np.nan

    def mean_of_k_smallest(matrix: np.ndarray) -> np.ndarray:
        ordered = np.sort(np.where(np.isnan(matrix), np.inf, matrix), axis=1)[:, :k]
        ordered[~np.isfinite(ordered)] = np.nan
        return np.nanmean(ordered, axis=1)

    r_source = mean_of_k_smallest(values)
    r_target = mean_of_k_smallest(values.T)
    out = 2 * values - r_source[:, None] - r_target[None, :]
    out[np.isnan(values)] = np.inf  # left out again by affinity()
    return pd.DataFrame(out, index=distances.index, columns=distances.columns)
