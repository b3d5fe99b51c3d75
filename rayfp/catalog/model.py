"""The catalog of the paper's tasks: one YAML file per public dataset (package data), read into
typed entries and checked on load, so a malformed entry names its file and field.

Field names follow MedIMeta where one exists (id, name, domain, licence, original data with URL
and citation); the rest says how to get a copy (manual download, TFDS style), where it goes
under the root, what its layout is and, per task, the rule that picks its images and labels
(rayfp.catalog.rules) with the paper's expected sample count, class count and imbalance
(task_infos.csv of the released data). docs/catalog.md describes every field.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

from rayfp.errors import CatalogError

# How a task was checked: "real-labels" (its rule applied to the dataset's real label file
# reproduces the paper's counts, tested) or "fakes" (tested on a fake copy in the official
# layout only: the rule follows the dataset's documentation and the paper's framework).
CHECKED = ("real-labels", "fakes")
RULE_KINDS = ("folders", "regex", "csv", "video_frames", "arrays")
_DATASET_FIELDS = {"id", "name", "domain", "licence", "original_data", "folder", "download",
                   "layout", "tasks", "notes"}
_TASK_FIELDS = {"id", "name", "domain", "rule", "expected", "checked", "notes"}


@dataclasses.dataclass(frozen=True)
class Expected:
    """The paper's figures for a task (task_infos.csv): training portion only."""

    samples: int
    classes: int
    imbalance: float  # largest class / smallest class


@dataclasses.dataclass(frozen=True)
class CatalogTask:
    id: str
    name: str
    domain: str  # the paper's domain: the modality the manifest and the store record
    rule: dict[str, Any]
    expected: Expected
    checked: str
    notes: str = ""


@dataclasses.dataclass(frozen=True)
class Archive:
    name: str
    url: str = ""
    sha256: str = ""  # "" where the publisher gives none and the file sits behind a form


@dataclasses.dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    domain: str
    licence: str
    url: str
    citation: str
    folder: str  # where the copy goes under the catalog root
    manual: bool  # behind a registration or a request form: the operator downloads it
    instructions: str
    archives: tuple[Archive, ...]
    layout: tuple[str, ...]  # paths (relative to the folder) that a complete copy has
    tasks: tuple[CatalogTask, ...]
    notes: str = ""

    def path_under(self, root: str | Path) -> Path:
        return Path(root) / self.folder


def _need(entry: dict, field: str, where: str, kind: type = str) -> Any:
    if field not in entry or entry[field] in (None, ""):
        raise CatalogError(f"{where}: field {field!r} is missing")
    value = entry[field]
    if not isinstance(value, kind):
        raise CatalogError(f"{where}: field {field!r} must be {kind.__name__}, got {value!r}")
    return value


def _unknown(entry: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(entry) - allowed)
    if extra:
        raise CatalogError(f"{where}: unknown field(s) {extra}; allowed: {sorted(allowed)}")


def _task(entry: Any, where: str, domain: str) -> CatalogTask:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: a task must be a mapping, got {entry!r}")
    _unknown(entry, _TASK_FIELDS, where)
    task_id = _need(entry, "id", where)
    where = f"{where} ({task_id})"
    rule = _need(entry, "rule", where, dict)
    if rule.get("kind") not in RULE_KINDS:
        raise CatalogError(f"{where}: rule kind {rule.get('kind')!r} is not one of {RULE_KINDS}")
    expected = _need(entry, "expected", where, dict)
    try:
        figures = Expected(int(expected["samples"]), int(expected["classes"]),
                           float(expected["imbalance"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"{where}: expected needs samples, classes and imbalance: {exc}"
                           ) from None
    checked = entry.get("checked", "fakes")
    if checked not in CHECKED:
        raise CatalogError(f"{where}: checked must be one of {CHECKED}, got {checked!r}")
    return CatalogTask(task_id, entry.get("name", task_id), entry.get("domain", domain), rule,
                       figures, checked, entry.get("notes", ""))


def parse_dataset(entry: Any, where: str) -> Dataset:
    """One YAML document -> a Dataset; ``where`` names the file in every error."""
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: a dataset entry must be a mapping")
    _unknown(entry, _DATASET_FIELDS, where)
    original = _need(entry, "original_data", where, dict)
    download = _need(entry, "download", where, dict)
    domain = _need(entry, "domain", where)
    tasks = tuple(_task(t, f"{where}: tasks[{i}]", domain)
                  for i, t in enumerate(_need(entry, "tasks", where, list)))
    archives = tuple(Archive(a["name"], a.get("url", ""), a.get("sha256") or "")
                     for a in download.get("archives", []))
    return Dataset(
        id=_need(entry, "id", where), name=_need(entry, "name", where), domain=domain,
        licence=_need(entry, "licence", where), url=_need(original, "url", where),
        citation=_need(original, "citation", where), folder=_need(entry, "folder", where),
        manual=bool(download.get("manual", True)),
        instructions=_need(download, "instructions", where), archives=archives,
        layout=tuple(entry.get("layout", [])), tasks=tasks, notes=entry.get("notes", ""))


def load_catalog(folder: str | Path | None = None) -> dict[str, Dataset]:
    """Every dataset of the catalog (default: the one that ships with rayfp), by id."""
    import yaml

    files = sorted(Path(folder).glob("*.yaml")) if folder is not None else [
        p for p in resources.files("rayfp.catalog").joinpath("datasets").iterdir()
        if p.name.endswith(".yaml")]
    files = sorted(files, key=lambda p: p.name.lower())
    datasets: dict[str, Dataset] = {}
    seen_tasks: dict[str, str] = {}
    for path in files:
        try:
            entry = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise CatalogError(f"{path.name}: not valid YAML: {exc}") from None
        dataset = parse_dataset(entry, path.name)
        if dataset.id in datasets:
            raise CatalogError(f"{path.name}: dataset id {dataset.id!r} is used twice")
        for task in dataset.tasks:
            if task.id in seen_tasks:
                raise CatalogError(f"{path.name}: task {task.id!r} is already in "
                                   f"{seen_tasks[task.id]}")
            seen_tasks[task.id] = path.name
        datasets[dataset.id] = dataset
    return datasets


def find_task(catalog: dict[str, Dataset], task_id: str) -> tuple[Dataset, CatalogTask]:
    for dataset in catalog.values():
        for task in dataset.tasks:
            if task.id == task_id:
                return dataset, task
    raise CatalogError(f"no task {task_id!r} in the catalog")
