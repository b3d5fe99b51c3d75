"""`rayfp catalog list|instructions|check|manifest|seed`: the paper's 71 tasks from local copies
of their public datasets (docs/catalog.md)."""

from __future__ import annotations

import argparse
import json
import sys

from rayfp import defaults
from rayfp.cli.flags import add_engine_flag, add_extraction_flags, add_ray_flags


def add_parsers(sub) -> None:
    p = sub.add_parser("catalog", help="the paper's tasks from local copies of their datasets: "
                                       "list, instructions, check, manifest, seed")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="every dataset and task (and which are found under ROOT)")
    q.add_argument("root", nargs="?", help="the catalog root: one folder per dataset")
    q.add_argument("--json", action="store_true", help="one JSON object per task")
    q = actions.add_parser("instructions", help="how to obtain a dataset and where to put it")
    q.add_argument("dataset", help="a dataset id (or a task id)")
    q.add_argument("--root", default="ROOT", help="the catalog root to name in the paths")
    q = actions.add_parser("check", help="apply every rule under ROOT and compare counts, "
                                         "classes and imbalance with the paper's")
    q.add_argument("root")
    q.add_argument("--tasks", nargs="*", help="only these task ids")
    q.add_argument("--labels-only", action="store_true",
                   help="count labels without looking for the images (check the label files "
                        "before the images are downloaded)")
    q.add_argument("--json", action="store_true", help="the report as JSON")
    q = actions.add_parser("manifest", help="write the manifest (path, task_id, label, "
                                            "modality) of every task found under ROOT")
    q.add_argument("root")
    q.add_argument("--out", required=True, help="the manifest: .parquet or .csv")
    q.add_argument("--cache", help="where video frames and array rows are written as PNG "
                                   "(default ROOT/.rayfp-catalog)")
    q.add_argument("--tasks", nargs="*", help="only these task ids")
    q = actions.add_parser("seed", help="fingerprint every task found under ROOT into a store "
                                        "(exact counts: public data), linked to the paper's "
                                        "imported knowledge; resumable")
    q.add_argument("root")
    q.add_argument("--store", required=True)
    q.add_argument("--space", help="an existing space (default: create one from the tasks found)")
    q.add_argument("--backbone", default="efficientnet_lite0", help="when creating a space")
    q.add_argument("--bins", type=int, default=defaults.BINS, help="when creating a space")
    q.add_argument("--edge-samples", type=int, default=defaults.EDGE_SAMPLES,
                   help="views per task that define a new space's edges")
    add_engine_flag(q)
    q.add_argument("--cache", help="where video frames and array rows are written as PNG "
                                   "(default ROOT/.rayfp-catalog)")
    q.add_argument("--tasks", nargs="*", help="only these task ids")
    q.add_argument("--samples", type=int, default=defaults.SAMPLES,
                   help=f"views per task (default {defaults.SAMPLES})")
    q.add_argument("--seed", type=int, default=defaults.SEED, help="sampling seed")
    q.add_argument("--min-images", type=int, default=defaults.MIN_IMAGES)
    add_extraction_flags(q)
    add_ray_flags(q)
    p.set_defaults(run=cmd_catalog)


def _cache(args) -> str:
    from pathlib import Path

    return args.cache or str(Path(args.root) / ".rayfp-catalog")


def _print_checks(checks, as_json: bool) -> None:
    if as_json:
        print(json.dumps([c.summary() for c in checks], indent=1))
        return
    for c in checks:
        s = c.summary()
        head = f"{s['task']:<40} {s['status']:<8}"
        if c.status != "found":
            print(f"{head} {c.reason}")
            continue
        verdict = "matches the paper" if c.matches else "differs"
        print(f"{head} {s['samples']:>7} samples, {s['classes']:>3} classes: {verdict}")
        for line in c.differences:
            print(f"    - {line}")
    found = sum(c.status == "found" for c in checks)
    matching = sum(c.matches for c in checks)
    print(f"{len(checks)} tasks: {found} found, {matching} match the paper's figures")


def cmd_catalog(args: argparse.Namespace) -> int:
    from rayfp.catalog.check import check_root
    from rayfp.catalog.model import find_task, load_catalog

    catalog = load_catalog()
    if args.action == "list":
        checks = ({(c.task.id): c for c in check_root(catalog, args.root, require_files=False)}
                  if args.root else {})
        for dataset in catalog.values():
            if not args.json:
                print(f"{dataset.id} ({dataset.name}; {dataset.licence}; "
                      f"{'manual download' if dataset.manual else 'downloadable'})")
            for task in dataset.tasks:
                status = checks[task.id].status if task.id in checks else ""
                if args.json:
                    print(json.dumps({"dataset": dataset.id, "task": task.id,
                                      "domain": task.domain, "samples": task.expected.samples,
                                      "classes": task.expected.classes, "rule": task.rule["kind"],
                                      "checked": task.checked, "status": status}))
                else:
                    print(f"  {task.id:<40} {task.expected.samples:>7} samples "
                          f"{task.expected.classes:>3} classes  rule {task.rule['kind']:<12}"
                          f"{status}")
        if not args.json:
            print(f"{len(catalog)} datasets, {sum(len(d.tasks) for d in catalog.values())} tasks")
        return 0
    if args.action == "instructions":
        dataset = catalog.get(args.dataset) or find_task(catalog, args.dataset)[0]
        print(f"{dataset.name} ({dataset.id}): {dataset.url}\nLicence: {dataset.licence}\n"
              f"Cite: {dataset.citation}\n")
        print(dataset.instructions.strip())
        for archive in dataset.archives:
            digest = f" (sha256 {archive.sha256})" if archive.sha256 else ""
            print(f"  archive: {archive.name} {archive.url}{digest}")
        print(f"\nUnpack into {args.root}/{dataset.folder}/ so that it holds:")
        for path in dataset.layout:
            print(f"  {args.root}/{dataset.folder}/{path}")
        print(f"Tasks: {', '.join(t.id for t in dataset.tasks)}")
        return 0
    if args.action == "check":
        checks = check_root(catalog, args.root, tasks=args.tasks,
                            require_files=not args.labels_only)
        _print_checks(checks, args.json)
        return 0
    if args.action == "manifest":
        from rayfp.catalog.manifest import build_manifest, write_manifest

        checks = check_root(catalog, args.root, tasks=args.tasks)
        rows, checks = build_manifest(checks, args.root, _cache(args),
                                      on_progress=lambda m: print(m, file=sys.stderr))
        path = write_manifest(rows, args.out)
        tasks = len({r["task_id"] for r in rows})
        print(f"{path}: {len(rows)} images of {tasks} tasks")
        return 0
    from rayfp.catalog.seed import seed

    overrides = {"samples": args.samples, "seed": args.seed, "min_images": args.min_images,
                 "frames_per_batch": args.frames_per_call, "workers": args.workers,
                 "gpus_per_worker": args.gpus_per_worker,
                 "cpus_per_worker": args.cpus_per_worker, "threads": args.threads,
                 "weights": args.weights}
    report = seed(catalog, args.root, store=args.store, space_id=args.space, cache=_cache(args),
                  config_overrides=overrides, backbone=args.backbone, bins=args.bins,
                  edge_samples=args.edge_samples, engine=args.engine, tasks=args.tasks,
                  address=args.address,
                  on_progress=lambda m: print(m, file=sys.stderr))
    for c in report.checks:
        if c.status != "found":
            print(f"{c.task.id}: {c.status}: {c.reason}")
    print(f"space {report.space_id}: {len(report.written)} tasks seeded, "
          f"{len(report.already_present)} already there, "
          f"{len(report.too_few_images)} below the image minimum; manifest {report.manifest}")
    return 0
