"""Pictures people want to look at: a fingerprint heat map and a clustered distance matrix."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

from rayfp.core.fingerprint import Fingerprint

# Beyond this many tasks a distance map drops its tick labels (they would overlap) and keeps
# its size: a picture of 1,000 tasks is as large as one of 60.
LABELLED_TASKS = 60


def _figure(figsize: tuple[float, float], dpi: int = 120):
    """A figure of its own (no pyplot state): safe to draw in several threads at once."""
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots()


def plot_fingerprint(fp: Fingerprint, out, *, fmt: str | None = None) -> None:
    """Heat map of P (dimensions x bins) with dimensions ordered by their mean bin."""
    p = fp.probabilities
    centre = (p * np.arange(fp.bins)).sum(axis=1)
    order = np.argsort(centre, kind="stable")
    fig, ax = _figure(figsize=(8, 6), dpi=120)
    image = ax.imshow(np.sqrt(p[order]), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel(f"bin (B = {fp.bins})")
    ax.set_ylabel(f"feature dimension (D = {fp.dim}), sorted by mean bin")
    ax.set_title(f"fingerprint of {fp.task_id}\n{fp.n_samples} views of {fp.n_images} images, "
                 f"space {fp.space_id}")
    fig.colorbar(image, ax=ax, label="sqrt(probability)")
    fig.tight_layout()
    fig.savefig(out, format=fmt)


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering on the symmetrised distances."""
    if len(matrix) < 3:
        return np.arange(len(matrix))
    sym = 0.5 * (matrix + matrix.T)
    sym = sym - np.diag(np.diag(sym))
    sym = np.clip(sym, 0.0, None)
    return leaves_list(linkage(squareform(sym, checks=False), method="average"))


def standardise_columns(matrix: np.ndarray) -> np.ndarray:
    """z-score each target column: bKLD has a strong per-target offset (the target's own
    entropy), which otherwise hides which sources are close to each target."""
    std = matrix.std(axis=0, keepdims=True)
    return (matrix - matrix.mean(axis=0, keepdims=True)) / np.where(std > 0, std, 1.0)


def plot_distances(matrix: np.ndarray, task_ids: Sequence[str], out, *, metric: str,
                   title: str = "", fmt: str | None = None, target_labels: bool = True) -> None:
    """Clustered heat map of a square source x target distance matrix, each target column
    standardised so the nearest sources of every target stand out. ``out``: a path or a
    binary file object (then ``fmt``, e.g. "png"). The figure stays at most 11 inches wide,
    whatever the number of tasks (labels shrink, then go), so it draws in bounded time.
    ``target_labels=False`` names the rows only (the columns are in the same order): text is
    most of the drawing time."""
    standardised = standardise_columns(matrix)
    order = cluster_order(standardised - standardised.min())
    shown = standardised[np.ix_(order, order)]
    labels = [task_ids[i] for i in order]
    n = len(labels)
    labelled = n <= LABELLED_TASKS
    font = 8 if n <= 30 else 6
    side = min(max(4.0, 0.16 * n * font / 8 + 2.0), 9.0)
    margin = 0.6 * max((len(t) for t in labels), default=0) * font / 72 if labelled else 0.3
    bottom = margin if labelled and target_labels else 0.3
    fig, ax = _figure(figsize=(side + margin + 1.6, side + bottom + 0.9), dpi=100)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=(margin + 0.5) / width, bottom=(bottom + 0.5) / height,
                        right=1 - 1.5 / width, top=1 - 0.7 / height)
    image = ax.imshow(shown, cmap="viridis_r", interpolation="nearest")
    if labelled:
        ax.set_yticks(range(n), labels, fontsize=font)
        if target_labels:
            ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
        else:
            ax.set_xticks([])
    ax.set_xlabel(("target task" if target_labels else "target task (same order as the rows)")
                  if labelled else f"{n} target tasks")
    ax.set_ylabel("source task" if labelled else f"{n} source tasks")
    ax.set_title(title or f"{metric} per target, z-scored (lower = more similar), clustered",
                 fontsize=9)
    fig.colorbar(image, ax=ax, label=f"{metric}, z-score within each target column",
                 fraction=0.04, pad=0.02)
    fig.savefig(out, format=fmt)


def plot_stability(rows, out: str | os.PathLike, *, task_id: str, k: int, answer) -> None:
    """Top-1 agreement (with its 95 % interval) and top-k overlap against the number of
    images, log x."""
    images = [r.images for r in rows]
    fig, ax = _figure(figsize=(7, 4.2), dpi=120)
    agreement = np.array([r.top1_agreement for r in rows])
    ax.errorbar(images, agreement, yerr=[agreement - [r.top1_lo for r in rows],
                                         [r.top1_hi for r in rows] - agreement],
                marker="o", capsize=3, label=f"top-1 is {answer[0]}")
    ax.plot(images, [r.topk_overlap for r in rows], "s--", label=f"share of the top-{k} kept")
    ax.axhline(0.8, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("images used (random subsets)")
    ax.set_ylabel("agreement with all images")
    ax.set_title(f"How many images does {task_id} need?")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
