"""The paper's released evaluation data: task facts, task lists, distance matrices, transfer
outcomes, no-transfer baselines and augmentation policies (docs/evaluation.md §1-§2).

By default the copy that ships with rayfp (published/paper-data.zip, MIT, attributed in
published/README.md); or a folder with the same names: the paper repository's `cache/` (exp/,
distances/, task_infos.csv) or an unpacked release (plus auto_augmentations/)."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Iterator
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

PUBLISHED = Path(__file__).parent / "published"
# The paper's task lists also serve a bare `cache/` folder of the paper's repository, which lacks them.
PUBLISHED_SPLITS = PUBLISHED / "task_splits.json"
PUBLISHED_ARCHIVE = PUBLISHED / "paper-data.zip"
PACKAGED = "the paper's released data shipped with rayfp"
_SHRUNK_LOADERS = {"arch", "multi_task"}  # their loaders take shrunk=True (docs/evaluation.md §2.1)


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


class _Folder:
    """Released files in a folder (the paper repository's cache/ or an unpacked release)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def names(self, folder: str) -> list[str]:
        return sorted(p.name for p in (self.root / folder).glob("*.csv"))

    def policies(self) -> Iterator[tuple[str, str, str]]:
        for policy in sorted((self.root / "auto_augmentations").glob("*/AA/*%*/policy_0001.json")):
            search_dir, _, task_dir = policy.parts[-4:-1]
            yield search_dir, task_dir, policy.read_text()


class _Archive:
    """The same files packed in published/paper-data.zip (policies as one JSON-lines member)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with zipfile.ZipFile(path) as archive:
            self._members = set(archive.namelist())

    def has(self, name: str) -> bool:
        return name in self._members

    def read(self, name: str) -> bytes:
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(name)

    def names(self, folder: str) -> list[str]:
        return sorted(m.split("/", 1)[1] for m in self._members if m.startswith(folder + "/"))

    def policies(self) -> Iterator[tuple[str, str, str]]:
        for line in self.read("policies.jsonl").decode().splitlines():
            row = json.loads(line)
            yield row["search"], row["folder"], row["policy"]


class PaperData:
    """Lazy access to the released data; every missing file is an error naming it.
    ROOT None reads the copy that ships with rayfp."""

    def __init__(self, root: str | Path | None = None, *, splits: str | Path | None = None,
                 float_parser: str = "pandas2") -> None:
        if float_parser not in FLOAT_PARSERS:
            raise UnknownNameError("CSV float parser", float_parser, FLOAT_PARSERS)
        self.float_parser = float_parser
        if root is None:
            self.root, self._files = PACKAGED, _Archive(PUBLISHED_ARCHIVE)
            default_splits = PUBLISHED_SPLITS
        else:
            self.root, self._files = Path(root), _Folder(Path(root))
            if not (self.root / "exp").is_dir() or not (self.root / "distances").is_dir():
                raise ConfigError(f"{self.root} is not a paper data folder: expected exp/ and "
                                  "distances/ (the paper repository's cache/ or an unpacked "
                                  "release); leave the path out to use the copy rayfp ships")
            default_splits = self.root / "task_splits.json"
            if not default_splits.is_file():
                default_splits = PUBLISHED_SPLITS  # the paper's task lists ship with rayfp
        splits_path = Path(splits) if splits else default_splits
        if not splits_path.is_file():
            raise ConfigError(f"no task lists at {splits_path}; pass --splits FILE "
                              "(the paper's task_splits.json)")
        self.splits = TaskSplits.load(splits_path)

    def _open(self, name: str) -> io.BytesIO:
        if not self._files.has(name):
            raise ConfigError(f"missing file {name} in {self.root}")
        return io.BytesIO(self._files.read(name))

    @cached_property
    def task_infos(self) -> pd.DataFrame:
        return pd.read_csv(self._open("task_infos.csv"), index_col=0).set_index("name")

    def raw_csv(self, name: str) -> pd.DataFrame:
        """A released CSV as pandas reads it by default (the importer's view)."""
        return pd.read_csv(self._open(name), index_col=0)

    def has(self, name: str) -> bool:
        return self._files.has(name)

    def policies(self) -> Iterator[tuple[str, str, str]]:
        """(search folder, task folder, policy JSON text) of every released policy."""
        return self._files.policies()

    def _csv(self, *parts: str) -> pd.DataFrame:
        name = "/".join(parts)
        if self.float_parser == "exact":
            return pd.read_csv(self._open(name), index_col=0, header=0)
        return read_csv_pandas2(self._open(name))

    def available_selectors(self) -> list[str]:
        return [name.removesuffix(".csv") for name in self._files.names("distances")]

    def distances(self, stem: str) -> pd.DataFrame:
        """Rows: sources (full tasks); columns: targets (incl. shrunk variants); lower = closer."""
        if not self._files.has(f"distances/{stem}.csv"):
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


def read_csv_pandas2(path) -> pd.DataFrame:
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
