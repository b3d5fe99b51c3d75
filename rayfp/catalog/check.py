"""`rayfp catalog check`: apply every rule that can be applied under a root and compare what it
picks with the paper's figures, naming each difference. A dataset that is absent is "missing";
one whose copy cannot be read as its rule says (a missing label file, a truncated table, a
folder with no images) is "broken" with the reason; the other tasks are checked all the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path

from rayfp.catalog.model import CatalogTask, Dataset
from rayfp.catalog.rules import Selection, select
from rayfp.errors import CatalogError

FOUND, MISSING, BROKEN = "found", "missing", "broken"
IMBALANCE_TOLERANCE = 1e-6  # relative; the paper's ratios are exact fractions of two counts


@dataclasses.dataclass
class TaskCheck:
    dataset: Dataset
    task: CatalogTask
    status: str
    selection: Selection | None = None
    reason: str = ""  # why a task is missing or broken
    differences: list[str] = dataclasses.field(default_factory=list)

    @property
    def matches(self) -> bool:
        return self.status == FOUND and not self.differences

    @property
    def samples(self) -> int:
        return len(self.selection.items) if self.selection else 0

    def summary(self) -> dict:
        counts = self.selection.class_counts() if self.selection else {}
        return {"dataset": self.dataset.id, "task": self.task.id, "status": self.status,
                "matches_paper": self.matches, "samples": self.samples,
                "expected_samples": self.task.expected.samples, "classes": len(counts),
                "expected_classes": self.task.expected.classes,
                "imbalance": imbalance(counts), "reason": self.reason,
                "differences": list(self.differences)}


def imbalance(counts) -> float | None:
    values = [n for n in dict(counts).values() if n]
    return max(values) / min(values) if values else None


def differences(task: CatalogTask, selection: Selection) -> list[str]:
    """What differs from the paper's figures, each named."""
    out = []
    counts = selection.class_counts()
    n, want = len(selection.items), task.expected.samples
    if n != want:
        out.append(f"{n} samples, the paper has {want} ({n - want:+d})")
    if len(counts) != task.expected.classes:
        out.append(f"{len(counts)} classes {sorted(counts)}, the paper has "
                   f"{task.expected.classes}")
    ratio = imbalance(counts)
    if ratio is not None and abs(ratio - task.expected.imbalance) > (
            IMBALANCE_TOLERANCE * task.expected.imbalance):
        out.append(f"imbalance {ratio:.4f}, the paper has {task.expected.imbalance:.4f}")
    return out + selection.notes


def archive_differences(dataset: Dataset, folder: Path) -> list[str]:
    """The downloaded archives kept in the dataset's folder whose sha256 is not the published
    one (an archive that is not there is not checked: most are deleted after unpacking)."""
    out = []
    for archive in dataset.archives:
        path = folder / archive.name
        if archive.sha256 and path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != archive.sha256:
                out.append(f"archive {archive.name}: sha256 {digest.hexdigest()[:16]}..., "
                           f"published {archive.sha256[:16]}... (a damaged or other download)")
    return out


def check_task(dataset: Dataset, task: CatalogTask, root: str | Path, *,
               require_files: bool = True, archives: list[str] | None = None) -> TaskCheck:
    folder = dataset.path_under(root)
    if not folder.is_dir():
        return TaskCheck(dataset, task, MISSING, reason=f"no folder {folder}")
    try:
        selection = select(folder, task.rule, require_files=require_files)
    except CatalogError as exc:
        return TaskCheck(dataset, task, BROKEN, reason=str(exc))
    found = differences(task, selection)
    found += archive_differences(dataset, folder) if archives is None else archives
    return TaskCheck(dataset, task, FOUND, selection, differences=found)


def check_root(catalog: dict[str, Dataset], root: str | Path, *,
               tasks: Iterable[str] | None = None, require_files: bool = True
               ) -> list[TaskCheck]:
    """Every task of the catalog (or of ``tasks``), checked against its copy under ``root``."""
    wanted = set(tasks) if tasks else None
    checks = []
    for dataset in catalog.values():
        chosen = [t for t in dataset.tasks if wanted is None or t.id in wanted]
        folder = dataset.path_under(root)
        archives = archive_differences(dataset, folder) if chosen and folder.is_dir() else []
        checks += [check_task(dataset, task, root, require_files=require_files,
                              archives=archives) for task in chosen]
    return checks
