"""The commands a site runs on its own images and store: edges, fingerprint, merge, compare,
nearest, show, plot, stability, demo. Parsing and printing only; the work is in
rayfp.extract.api, rayfp.core.distance, rayfp.cloud.knowledge and rayfp.pictures.plots."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rayfp import defaults
from rayfp.cli.flags import (
    add_engine_flag,
    add_extraction_flags,
    add_part_flags,
    add_privacy_flags,
    add_sampling_flags,
    privacy_spec,
)
from rayfp.core.release import Release
from rayfp.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from rayfp.store.store import Store

# Imports of numpy, pyarrow, torch or Ray happen inside the commands that need them, so
# `rayfp --help` and the light commands start fast (tests/test_layout.py checks which load what).


# Spelled out so that --help needs no scipy; tests/test_cli.py keeps it equal to the registry.
METRIC_HELP = f"bkld-small, bkld-large, p2l, cosine, js or emd (default {defaults.METRIC})"


def _store(args: argparse.Namespace) -> Store:
    from rayfp.store.store import Store

    return Store(args.store)


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="store folder or s3:// URI (created on first "
                                                  "write)")


def _add_extraction(p: argparse.ArgumentParser, *, seed: bool = True) -> None:
    if seed:
        p.add_argument("--seed", type=int, default=defaults.SEED,
                       help=f"sampling seed (default {defaults.SEED})")
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                   help="views per forward pass; does not change the result")
    add_extraction_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parsers(sub) -> None:
    """The commands a site runs on its own images and store."""

    p = sub.add_parser("edges", help="create a fingerprint space from reference tasks")
    p.add_argument("paths", nargs="+", help="one reference task per path (file, folder, CSV)")
    p.add_argument("--backbone", required=True, help="resnet34 | efficientnet_lite0")
    p.add_argument("--bins", type=int, default=defaults.BINS,
                   help="bins per dimension (paper: 100/1000)")
    p.add_argument("--samples", type=int, default=defaults.EDGE_SAMPLES,
                   help="sampled views per reference task")
    p.add_argument("--random-weights", action="store_true",
                   help="untrained backbone (tests only; recorded in the space)")
    _add_store(p)
    _add_extraction(p)
    add_engine_flag(p)
    p.set_defaults(run=cmd_edges)

    p = sub.add_parser("fingerprint", help="fingerprint one task's images in a space")
    p.add_argument("paths", nargs="+", help="files, folders (recursive) or manifest CSVs")
    p.add_argument("--task-id", required=True)
    p.add_argument("--space", required=True, help="space id (see `rayfp show`)")
    p.add_argument("--space-from", metavar="URL",
                   help="fetch the space from a knowledge-cloud server into --store first")
    add_sampling_flags(p)
    p.add_argument("--modality", default="", help="override the modality read from DICOM")
    p.add_argument("--out", metavar="FILE.json",
                   help="also write the released fingerprint to a file (the wire format a "
                        "query sends), e.g. to upload on the cloud's web page")
    p.add_argument("--keep-views", action="store_true",
                   help="keep each view's bins and image in STORE/site-only/ (never sent), "
                        "for `rayfp query --replicates`")
    p.add_argument("--part", metavar="k/K",
                   help="this site's part k of a task pooled over K sites (with "
                        "--part-images); writes --part-out instead of a fingerprint")
    p.add_argument("--part-images", metavar="M1,...,MK",
                   help="the image counts every site announced, in part order")
    add_part_flags(p)
    _add_store(p)
    _add_extraction(p, seed=False)
    add_privacy_flags(p)
    p.set_defaults(run=cmd_fingerprint)

    p = sub.add_parser("compare", help="distance matrix of all tasks of a space")
    _add_store(p)
    p.add_argument("--space", required=True)
    p.add_argument("--metric", default=defaults.METRIC, help=METRIC_HELP)
    p.add_argument("--format", choices=("table", "csv"), default="table")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("nearest", help="the k most similar tasks of one task")
    _add_store(p)
    p.add_argument("--task-id", required=True)
    p.add_argument("--space", help="needed when the task has fingerprints in several spaces")
    p.add_argument("-k", type=int, default=defaults.NEAREST_K)
    p.add_argument("--metric", default=defaults.METRIC, help=METRIC_HELP)
    p.set_defaults(run=cmd_nearest)

    p = sub.add_parser("show", help="spaces, fingerprints and tables in a store")
    _add_store(p)
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("plot", help="write a PNG")
    p.add_argument("what", choices=("fingerprint", "distances"))
    _add_store(p)
    p.add_argument("--space", required=True)
    p.add_argument("--task-id", help="for `plot fingerprint`")
    p.add_argument("--metric", default=defaults.METRIC)
    p.add_argument("--out", required=True, help="output .png")
    p.set_defaults(run=cmd_plot)

    p = sub.add_parser("merge", help="merge the parts of a task pooled over several sites into "
                                     "one fingerprint")
    p.add_argument("parts", nargs="+", help="part files (`rayfp fingerprint --part k/K`)")
    p.add_argument("--min-images", type=int, default=defaults.MIN_IMAGES)
    _add_store(p)
    p.set_defaults(run=cmd_merge)

    p = sub.add_parser("stability", help="how many images a task needs: its answer from "
                                         "random subsets of its images")
    p.add_argument("paths", nargs="*", help="the task's images (or none: --task-id's views "
                                            "kept by `rayfp fingerprint --keep-views`)")
    p.add_argument("--task-id", required=True)
    p.add_argument("--space", required=True)
    p.add_argument("--sizes", help="image counts, e.g. 5,10,20,50 (default: 5, 10, 20, 50, "
                                   "100, ... and all)")
    p.add_argument("--draws", type=int, default=20, help="random subsets per size")
    p.add_argument("-k", type=int, default=defaults.K)
    p.add_argument("--metric", default=defaults.METRIC, choices=("bkld-small", "bkld-large"))
    p.add_argument("--samples", type=int, default=defaults.FAST_SAMPLES,
                   help="views of the task when PATHs are given (default 1000)")
    p.add_argument("--out", default="stability.png")
    _add_store(p)
    _add_extraction(p)
    p.set_defaults(run=cmd_stability)

    p = sub.add_parser("demo", help="fingerprint demo tasks built from images in the packages")
    p.add_argument("--out", default="demo-output", help="folder for data, store and plots")
    p.add_argument("--samples", type=int, default=200, help="views per task")
    p.add_argument("--quiet", action="store_true")
    add_engine_flag(p)
    p.set_defaults(run=cmd_demo)


def _print_skipped(skipped, series_problems=()) -> None:
    """Every file that gave no image, and every DICOM series whose geometry is irregular (it
    is still used: one unit, its slices along the acquisition axis)."""
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}: {s.detail}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} file(s) skipped", file=sys.stderr)
    for problem in series_problems:
        print(f"series {problem.series}: {problem.reason}: {problem.detail}", file=sys.stderr)
    if series_problems:
        print(f"{len(series_problems)} series problem(s) reported; those series are still "
              "used, one unit each", file=sys.stderr)


def cmd_edges(args: argparse.Namespace) -> int:
    from rayfp.extract.api import create_space

    result = create_space([[p] for p in args.paths], backbone=args.backbone, bins=args.bins,
                          store=_store(args), samples_per_task=args.samples, seed=args.seed,
                          weights=args.weights, random_weights=args.random_weights,
                          batch_size=args.batch_size, threads=args.threads,
                          progress=not args.quiet, engine=args.engine)
    _print_skipped(result.skipped)
    print(result.space.space_id)
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from rayfp.extract.api import fingerprint_task

    if args.part or args.part_images:
        return _fingerprint_part(args)

    if args.space_from:
        from rayfp.cloud.client import CloudClient

        _store(args).put_space(CloudClient(args.space_from).space(args.space))
    result = fingerprint_task(args.paths, task_id=args.task_id, space_id=args.space,
                              store=_store(args), samples=args.samples, seed=args.seed,
                              min_images=args.min_images, batch_size=args.batch_size,
                              weights=args.weights, modality=args.modality,
                              threads=args.threads, progress=not args.quiet,
                              privacy=privacy_spec(args), keep_views=args.keep_views,
                              window=args.window, slice_axes=args.slice_axes)
    _print_skipped(result.skipped, result.inventory.series_problems)
    fp = result.fingerprint
    stated = Release.of(fp.privacy)
    guarantee = (f"(ε={stated.epsilon:g}, δ={stated.delta:g})-DP per image, at most "
                 f"{stated.cap} views per image" if stated else
                 "exact counts, NOT differentially private (--epsilon inf)")
    print(f"{fp.task_id}: {fp.n_samples} views of {fp.n_images} images "
          f"({result.modality or 'unknown modality'}) -> space {fp.space_id}; {guarantee}")
    from rayfp.privacy.bounds import describe

    print(f"  {describe(stated.epsilon if stated else math.inf, stated.delta if stated else 1.0)}")
    if stated:
        from rayfp.privacy.ledger import spent

        print(f"  privacy ledger: {spent(_store(args), fp.task_id).text()} "
              "(`rayfp privacy budget`)")
    if args.out:
        _write_fingerprint_file(fp, args.out)
        print(f"  {args.out}: the released fingerprint, as `rayfp query` sends it (upload it on "
              "the cloud's page)")
    return 0


def _write_fingerprint_file(fp, out: str) -> None:
    from rayfp.cloud.wire import write_fingerprint_file

    write_fingerprint_file(fp, out)


def format_matrix(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], fmt: str) -> str:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["source", *cols])
        for name, row in zip(rows, matrix):
            writer.writerow([name, *(repr(float(v)) for v in row)])
        return out.getvalue()
    width = max(len(c) for c in [*rows, *cols, "source \\ target"])
    lines = ["source \\ target".ljust(width) + " " + " ".join(c[:10].rjust(10) for c in cols)]
    for name, row in zip(rows, matrix):
        lines.append(name.ljust(width) + " " + " ".join(f"{v:10.4g}" for v in row))
    return "\n".join(lines) + "\n"


def _fingerprint_part(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rayfp.core.parts import parse_part, part_file_name
    from rayfp.extract.api import fingerprint_part

    if not (args.part and args.part_images):
        raise ConfigError("a part needs both --part k/K and --part-images M1,...,MK")
    k, total = parse_part(args.part)
    counts = [int(v) for v in args.part_images.split(",")]
    if len(counts) != total:
        raise ConfigError(f"--part {args.part} needs {total} image counts, got {len(counts)}")
    part, inventory = fingerprint_part(
        args.paths, task_id=args.task_id, space_id=args.space, store=_store(args), part=k,
        image_counts=counts, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
        weights=args.weights, threads=args.threads, progress=not args.quiet,
        privacy=privacy_spec(args), noise_share=args.noise_share, window=args.window,
        slice_axes=args.slice_axes)
    _print_skipped(inventory.skipped, inventory.series_problems)
    if not args.part_out and _store(args).object_store:
        raise ConfigError(f"--store {args.store} is on object storage: give a local file for "
                          f"this site's part (--part-out)")
    out = Path(args.part_out or Path(args.store) / "parts-out" /
               part_file_name(args.task_id, k, total))
    part.save(out)
    kind = ("exact counts" if not part.private else
            f"noisy counts, ε={part.privacy['dp']['epsilon']:g}, noise share "
            f"{part.privacy['noise_share']}")
    print(f"{args.task_id} part {k}/{total}: {part.n_views} of {part.plan.samples} views of "
          f"{inventory.n_images} images ({kind}) -> {out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from rayfp.core.fingerprint import finalize
    from rayfp.core.parts import TaskPart
    from rayfp.privacy.parts import merge_parts

    store = _store(args)
    parts = [TaskPart.load(path) for path in args.parts]
    first = parts[0]
    partial, record = merge_parts(parts, store.get_space(first.space_id),
                                  min_images=args.min_images)
    fp = finalize(partial, task_id=first.task_id, n_images=first.plan.total_images,
                  privacy=record)
    if fp.n_images < args.min_images:
        raise ConfigError(f"{fp.task_id!r}: {fp.n_images} images in all parts, below the "
                          f"minimum of {args.min_images}")
    store.put_fingerprint(fp)
    stated = Release.of(record)
    released = ("exact counts" if stated is None
                else f"ε={stated.epsilon:g}, noise share {stated.get('noise_share')}")
    print(f"{fp.task_id}: merged {len(parts)} parts, {fp.n_samples} views of {fp.n_images} "
          f"images -> space {fp.space_id} ({released})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rayfp.core.distance import distance_matrix, get_metric

    get_metric(args.metric)  # a wrong name fails before any store is read

    fps = _store(args).fingerprints(args.space)
    if not fps:
        raise ConfigError(f"space {args.space} has no fingerprints yet")
    ids = [fp.task_id for fp in fps]
    sys.stdout.write(format_matrix(distance_matrix(fps, fps, args.metric), ids, ids, args.format))
    return 0


def cmd_nearest(args: argparse.Namespace) -> int:
    from rayfp.core.distance import get_metric

    get_metric(args.metric)
    from rayfp.cloud.knowledge import KnowledgeBase

    kb = KnowledgeBase.local(_store(args))
    found = kb.nearest_to_task(args.task_id, k=args.k, metric=args.metric, space_id=args.space)
    where = sorted({n.basis for n in found})
    print(f"nearest to {args.task_id} by {args.metric} ({', '.join(where) or 'no sources'}):")
    for rank, n in enumerate(found, start=1):
        print(f"{rank:3d}. {n.task_id:30s} {n.distance:.6g}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    summary = _store(args).summary(privacy=True)
    print(f"store {summary['store']}")
    for s in summary["spaces"]:
        p = s["privacy"]
        released = (f"{p['private']} private (ε {p['epsilon_min']:g}–{p['epsilon_max']:g}), "
                    if p["private"] else "") + f"{p['exact']} exact"
        print(f"space {s['space_id']}  {s['backbone']}  D={s['dim']} B={s['bins']}  "
              f"{s['fingerprints']} fingerprint(s): {released}  reference={s['reference']}")
        if s["fingerprints"] >= 3:
            print("      " + _hubness_line(_store(args), s["space_id"]))
    tasks = _store(args).tasks().to_pylist()
    for t in sorted(tasks, key=lambda r: r["task_id"]):
        print(f"task  {t['task_id']:30s} {t['modality'] or '-':8s} {t['n_images']} images")
    print("tables: " + ", ".join(f"{k}={v}" for k, v in summary["tables"].items()))
    return 0


def _hubness_line(store, space_id: str) -> str:
    from rayfp.search.hubness import measure_hubness

    # A list of fingerprints: ranked by the torch-free LinearIndex, so `show` stays light.
    found = measure_hubness(store.fingerprints(space_id), k=defaults.K, metric=defaults.METRIC)
    hubs = ", ".join(f"{t} (in {n:g})" for t, n in found.hubs()[:5]) or "none"
    return (f"hubness ({found.metric}, k={found.k}): skewness of k-occurrence "
            f"{found.skewness:.2f}; hubs (in >= {found.threshold:g} of {found.sources - 1} "
            f"others' top-{found.k}): {hubs}")


def cmd_plot(args: argparse.Namespace) -> int:
    from rayfp.core.distance import distance_matrix
    from rayfp.pictures import plots as plot

    store = _store(args)
    if args.what == "fingerprint":
        if not args.task_id:
            raise ConfigError("`rayfp plot fingerprint` needs --task-id")
        plot.plot_fingerprint(store.get_fingerprint(args.space, args.task_id), args.out)
    else:
        fps = store.fingerprints(args.space)
        if len(fps) < 2:
            raise ConfigError(f"space {args.space} needs >= 2 fingerprints to plot distances")
        matrix = distance_matrix(fps, fps, args.metric)
        plot.plot_distances(matrix, [fp.task_id for fp in fps], args.out, metric=args.metric)
    print(args.out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rayfp.cli.demo import run_demo

    run_demo(args.out, samples=args.samples, progress=not args.quiet, engine=args.engine)
    return 0


def cmd_stability(args: argparse.Namespace) -> int:
    import numpy as np

    from rayfp.pictures import plots as plot
    from rayfp.search.index import ScreenedIndex
    from rayfp.search.stability import default_sizes, image_stability

    store = _store(args)
    space = store.get_space(args.space)
    if args.paths:
        from rayfp.extract.api import extractor_for_space
        from rayfp.extract.views import fingerprint_inventory
        from rayfp.io.inventory import take_inventory
        from rayfp.io.sources import discover_sources

        inventory = take_inventory(discover_sources(args.paths), task_id=args.task_id,
                                   progress=not args.quiet)
        _print_skipped(inventory.skipped, inventory.series_problems)
        inventory.require(1)
        _, views = fingerprint_inventory(
            inventory, space, extractor_for_space(space, weights=args.weights,
                                                  threads=args.threads),
            samples=args.samples, seed=args.seed, batch_size=args.batch_size,
            progress=not args.quiet, keep_views=True)
    else:
        views = store.get_views(args.space, args.task_id)
    others = [fp for fp in store.fingerprints(args.space) if fp.task_id != args.task_id]
    if not others:
        raise ConfigError(f"space {args.space} in {store.root} holds no other task to rank "
                          "against")
    with_views = int((np.bincount(views.image_of_view, minlength=views.n_images) > 0).sum())
    sizes = ([int(v) for v in args.sizes.split(",")] if args.sizes
             else default_sizes(with_views))
    answer, rows = image_stability(views, space, ScreenedIndex(others), sizes=sizes,
                                   draws=args.draws, k=args.k, metric=args.metric,
                                   seed=args.seed)
    print(f"{args.task_id}: {views.n_images} images, {views.n_views} views; with all of them "
          f"the top-{args.k} is {', '.join(answer)}")
    print(f"{'images':>7} {'subsets':>8} {'top-1 agreement [95 %]':>26} "
          f"{'top-' + str(args.k) + ' kept':>10}")
    for r in rows:
        print(f"{r.images:7d} {r.draws:8d} {r.top1_agreement:10.2f} [{r.top1_lo:.2f}, "
              f"{r.top1_hi:.2f}]{r.topk_overlap:16.2f}")
    enough = next((r.images for r in rows if r.top1_lo >= 0.8), None)
    print(f"top-1 agreement is at least 0.8 (95 % lower bound) from {enough} images on"
          if enough else "no subset size reaches a top-1 agreement of 0.8 (95 % lower bound)")
    plot.plot_stability(rows, args.out, task_id=args.task_id, k=args.k, answer=answer)
    print(f"plot: {args.out}")
    return 0
