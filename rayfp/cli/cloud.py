"""CLI commands that talk to (or start) the knowledge cloud: import-paper, serve, query,
recommend. Parsing and printing only."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rayfp import defaults


def add_parsers(sub) -> None:
    p = sub.add_parser("import-paper", help="load the paper's tasks, policies, outcomes and "
                                            "distances into a store")
    p.add_argument("data", help="../shared/paper-data (or the paper repository's cache/)")
    p.add_argument("--store", required=True)

    p = sub.add_parser("serve", help="run the knowledge cloud locally (Ray Serve, blocking)")
    p.add_argument("--store", required=True)
    p.add_argument("--token", default=os.environ.get("RAYFP_TOKEN", ""),
                   help="bearer token for writes (default: $RAYFP_TOKEN; empty refuses writes)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--min-images", type=int, default=defaults.MIN_IMAGES)

    for name, helptext in (("query", "nearest known tasks from a server"),
                           ("recommend", "what worked for the nearest known tasks")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8000")
        p.add_argument("--task-id", required=True)
        p.add_argument("--fingerprint-from", metavar="STORE",
                       help="send this local store's fingerprint of --task-id (never images)")
        p.add_argument("--space", help="which local space, if the task has several")
        p.add_argument("-k", type=int)
        p.add_argument("--metric", help=f"default: the server's ({defaults.METRIC})")
        p.add_argument("--json", action="store_true", help="raw JSON for scripts")
        if name == "recommend":
            p.add_argument("--kinds", default=",".join(defaults.COMPONENT_KINDS))


def cmd_import_paper(args: argparse.Namespace) -> int:
    from rayfp.cloud.paper_import import import_paper
    from rayfp.core.store import Store

    counts = import_paper(args.data, Store(args.store))
    print(", ".join(f"{table}: {n}" for table, n in counts.items()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:  # pragma: no cover - blocking server
    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve

    start_local_serve(args.host, args.port)
    serve.run(build_app({"store": args.store, "token": args.token,
                         "min_images": args.min_images}), blocking=True)
    return 0


def _local_fingerprint(args):
    if not args.fingerprint_from:
        return None
    from rayfp.core.store import Store

    return Store(args.fingerprint_from).fingerprint_of(args.task_id, args.space)


def cmd_query(args: argparse.Namespace) -> int:
    from rayfp.cloud.client import CloudClient

    fp = _local_fingerprint(args)
    client = CloudClient(args.server)
    kwargs = {"task_id": None if fp else args.task_id, "fingerprint": fp, "k": args.k,
              "metric": args.metric}
    if args.command == "recommend":
        answer = client.recommend(kinds=args.kinds.split(","), **kwargs)
    else:
        answer = client.nearest(**kwargs)
    if args.json:
        json.dump(answer, sys.stdout, indent=2)
        print()
        return 0
    print(f"nearest to {args.task_id} by {answer['metric']}:")
    for n in answer["neighbours"]:
        print(f"{n['rank']:3d}. {n['task_id']:40s} {n['distance']:.6g}  ({n['basis']})")
    for kind, candidates in answer.get("recommendations", {}).items():
        print(f"\n{kind}:")
        if not candidates:
            print("  (no recorded evidence among the nearest tasks)")
        for c in candidates:
            value = c["value"] if len(c["value"]) <= 60 else c["value"][:57] + "..."
            score = "-" if c["score"] is None else f"{c['score']:.4f}"
            print(f"  #{c['rank']} {c['source']}: {value}  score {score} {c['metric']} "
                  f"({c['n_seeds']} seed(s), {c['evidence']})")
    return 0
