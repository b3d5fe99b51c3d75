"""CLI commands that talk to (or start) the knowledge cloud: import-paper, serve, query,
recommend. Parsing and printing only."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from rayfp import defaults
from rayfp.cli.flags import parse_epsilon
from rayfp.cloud.settings import add_setting_flags, settings_from
from rayfp.core.release import Release, released_epsilon
from rayfp.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser("import-paper", help="load the paper's tasks, policies, outcomes and "
                                            "distances into a store")
    p.add_argument("data", nargs="?", help="a folder of the paper's released data (default: the "
                                           "copy that ships with rayfp)")
    p.add_argument("--store", required=True)
    p.set_defaults(run=cmd_import_paper)

    p = sub.add_parser("serve", help="run the knowledge cloud locally (Ray Serve, blocking)")
    add_setting_flags(p)  # the app's settings, declared once (rayfp/cloud/settings.py)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ingress", choices=defaults.INGRESS, default=defaults.INGRESS[0],
                   help="how HTTP reaches the app: the replica itself (default, fastest), "
                        "HAProxy (several replicas), or Serve's proxy")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("send-part", help="send one site's part of a pooled task to a server")
    p.add_argument("part", help="the part file (`rayfp fingerprint --part k/K`)")
    p.add_argument("--server", required=True)
    p.add_argument("--token", default=os.environ.get("RAYFP_TOKEN", ""),
                   help="the server's write token (default: $RAYFP_TOKEN)")
    p.set_defaults(run=cmd_send_part)

    for name, helptext in (("query", "nearest known tasks from a server"),
                           ("recommend", "what worked for the nearest known tasks"),
                           ("register", "send a task's fingerprint to a server")):
        p = sub.add_parser(name, help=helptext)
        p.set_defaults(run=cmd_register if name == "register" else cmd_query)
        if name == "register":
            p.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8000")
        else:
            where = p.add_mutually_exclusive_group(required=True)
            where.add_argument("--server", help="e.g. http://127.0.0.1:8000")
            where.add_argument("--store", help="answer from this store here, without a service "
                                               "(the cloud's own ranking code), for a task in it")
        p.add_argument("--task-id", required=True)
        p.add_argument("--fingerprint-from", metavar="STORE", required=name == "register",
                       help="send this local store's fingerprint of --task-id (never images)")
        p.add_argument("--space", help="which local space, if the task has several")
        p.add_argument("--epsilon", type=parse_epsilon, default=defaults.DP_EPSILON,
                       help="send only a fingerprint released at this ε or smaller (default "
                            f"{defaults.DP_EPSILON:g}); 'inf' also sends exact counts")
        p.add_argument("--delta", type=float, default=defaults.DP_DELTA,
                       help=f"the largest δ to send (default {defaults.DP_DELTA:g})")
        if name == "register":
            p.add_argument("--token", default=os.environ.get("RAYFP_TOKEN", ""),
                           help="the server's write token (default: $RAYFP_TOKEN)")
            p.add_argument("--modality", help="recorded with the task")
            continue
        p.add_argument("-k", type=int)
        p.add_argument("--metric", help=f"default: the server's ({defaults.METRIC})")
        p.add_argument("--replicates", type=int, default=0, metavar="R",
                       help="send R bootstrap replicates of the fingerprint's images (from "
                            "`rayfp fingerprint --keep-views`); the answer says how often each "
                            "neighbour comes first (32 is a good R). A private fingerprint's "
                            "replicates are released too: the total ε is printed")
        p.add_argument("--replicate-epsilon", type=parse_epsilon,
                       help="the replicates' own ε (default: the fingerprint's)")
        p.add_argument("--privacy-budget", type=float, metavar="EPS",
                       help="refuse replicates that would take the task's images past this ε, "
                            "all their releases composed (`rayfp privacy budget`)")
        p.add_argument("--resampling", choices=("bootstrap", "parametric"),
                       default="bootstrap",
                       help="parametric: re-release a private fingerprint's own noise instead "
                            "(free, no views needed, but measured over-confident)")
        p.add_argument("--json", action="store_true", help="raw JSON for scripts")
        if name == "recommend":
            p.add_argument("--kinds", default=",".join(defaults.COMPONENT_KINDS))
            p.add_argument("--rank", choices=("learned", "distance"), default="learned",
                           help="learned (default): by what worked on other targets, blended "
                                "with the distance (docs/learned.md); distance: nearest first")

    p = sub.add_parser("report-outcome", help="tell a server what a transfer did for your task "
                                              "(per seed, against its no-transfer baseline)")
    p.set_defaults(run=cmd_report_outcome)
    p.add_argument("--server", required=True)
    p.add_argument("--token", default=os.environ.get("RAYFP_TOKEN", ""),
                   help="the server's write token (default: $RAYFP_TOKEN)")
    p.add_argument("--task-id", required=True, help="your task (registered with the server)")
    p.add_argument("--scenario", required=True, choices=defaults.COMPONENT_KINDS,
                   help="what was transferred")
    p.add_argument("--source", required=True, help="the source task id")
    p.add_argument("--metric", required=True, help="e.g. AUROC or BA (higher is better)")
    p.add_argument("--baseline", required=True, type=_floats, metavar="B1,B2,...",
                   help="the score without the transfer, per seed")
    p.add_argument("--score", required=True, type=_floats, metavar="S1,S2,...",
                   help="the score with it, per seed (same order)")


def cmd_import_paper(args: argparse.Namespace) -> int:
    from rayfp.cloud.paper_import import import_paper
    from rayfp.store.store import Store

    counts = import_paper(args.data, Store(args.store))
    print(", ".join(f"{table}: {n}" for table, n in counts.items()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:  # pragma: no cover - blocking server
    from ray import serve

    from rayfp.cloud.app import build_app, start_local_serve

    start_local_serve(args.host, args.port, ingress=args.ingress)
    serve.run(build_app(settings_from(args)), blocking=True)
    return 0


def _local_fingerprint(args):
    """The local store's fingerprint of the task, if it is private enough to leave the site."""
    if not args.fingerprint_from:
        return None
    from rayfp.privacy.policy import check_privacy
    from rayfp.store.store import Store

    store = Store(args.fingerprint_from)
    fp = store.fingerprint_of(args.task_id, args.space)
    if not math.isinf(args.epsilon):
        check_privacy(fp, store.get_space(fp.space_id), max_epsilon=args.epsilon,
                      max_delta=args.delta, policy=f"--epsilon {args.epsilon:g} (what may leave "
                                                   "this site; 'inf' sends anything)")
    return fp


def _replicates(args, fp):
    """(replicates, record) of the local fingerprint, or None without --replicates."""
    if not args.replicates:
        return None
    if fp is None:
        raise ConfigError("--replicates needs --fingerprint-from STORE (the views are local)")
    from rayfp.privacy.mechanism import PrivacySpec
    from rayfp.privacy.replicates import query_replicates
    from rayfp.store.store import Store

    store = Store(args.fingerprint_from)
    spec = None
    stated = Release.of(fp.privacy)
    if stated is not None and args.replicate_epsilon is not None:
        spec = PrivacySpec(epsilon=args.replicate_epsilon, delta=stated.delta,
                           release_bins=stated.release_bins)
    views = (store.get_views(fp.space_id, fp.task_id) if args.resampling == "bootstrap"
             else None)  # parametric replicates need none
    replicates, record = query_replicates(views, fp, store.get_space(fp.space_id),
                                          replicates=args.replicates, spec=spec,
                                          resampling=args.resampling)
    if args.resampling == "bootstrap":  # a new release of the images (parametric: free)
        from rayfp.privacy.ledger import charge

        charge(store, fp.task_id, kind="replicates", privacy=record, space_id=fp.space_id,
               budget=args.privacy_budget)
    return replicates, record


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got "
                                         f"{text!r}") from None


def cmd_report_outcome(args: argparse.Namespace) -> int:
    from rayfp.cloud.client import CloudClient

    answer = CloudClient(args.server, token=args.token).report_outcome(
        args.task_id, scenario=args.scenario, source=args.source, metric=args.metric,
        baseline=args.baseline, score=args.score)
    print(f"{answer['task_id']}: {answer['scenario']} from {answer['source']}, "
          f"{answer['seeds']} seed(s) of {answer['metric']} recorded")
    return 0


def cmd_send_part(args: argparse.Namespace) -> int:
    from rayfp.cloud.client import CloudClient
    from rayfp.core.parts import TaskPart

    part = TaskPart.load(args.part)
    state = CloudClient(args.server, token=args.token).send_part(part)
    missing = f"; still missing part(s) {state['missing']}" if state.get("missing") else ""
    print(f"{part.task_id} part {part.part}/{part.plan.parts}: {state['state']}{missing}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from rayfp.cloud.client import CloudClient

    fp = _local_fingerprint(args)
    meta = {"modality": args.modality} if args.modality else {}
    answer = CloudClient(args.server, token=args.token).register(fp, **meta)
    print(f"registered {answer['task_id']} in space {answer['space_id']} "
          f"({_epsilon_text(fp.privacy)})")
    return 0


def _epsilon_text(privacy) -> str:
    epsilon = released_epsilon(privacy)
    return "exact counts" if epsilon is None else f"ε={epsilon:g}"


def _answer_from_store(args: argparse.Namespace) -> dict:
    from rayfp.cloud.answers import answer_for_task
    from rayfp.cloud.knowledge import KnowledgeBase

    if args.fingerprint_from or args.replicates:
        raise ConfigError("--store answers for a task in that store: --fingerprint-from and "
                          "--replicates need a --server")
    kinds = args.kinds.split(",") if args.command == "recommend" else None
    return answer_for_task(KnowledgeBase.local(args.store), args.task_id, space_id=args.space,
                           k=args.k, metric=args.metric, kinds=kinds,
                           rank=getattr(args, "rank", "learned"))


def cmd_query(args: argparse.Namespace) -> int:
    from rayfp.cloud.client import CloudClient

    if args.store:
        answer = _answer_from_store(args)
    else:
        fp = _local_fingerprint(args)
        client = CloudClient(args.server)
        kwargs = {"task_id": None if fp else args.task_id, "fingerprint": fp, "k": args.k,
                  "metric": args.metric, "replicates": _replicates(args, fp)}
        if args.command == "recommend":
            answer = client.recommend(kinds=args.kinds.split(","), rank=args.rank, **kwargs)
        else:
            answer = client.nearest(**kwargs)
    if args.json:
        json.dump(answer, sys.stdout, indent=2)
        print()
        return 0
    print(f"nearest to {args.task_id} by {answer['metric']}:")
    for n in answer["neighbours"]:
        rate = "" if n.get("top1_rate") is None else (
            f"{n['top1_rate']:5.2f} top-1 {n['topk_rate']:5.2f} top-k  "
            f"[{n['distance_lo']:.4g}, {n['distance_hi']:.4g}]  ")
        print(f"{n['rank']:3d}. {n['task_id']:40s} {n['distance']:.6g}  {rate}"
              f"{_neighbour_notes(n)}")
    confidence = answer.get("confidence")
    if confidence:
        total = confidence["epsilon_total"]
        print(f"confidence: {confidence['label']} — the top-1 is the nearest of "
              f"{confidence['stability']:.0%} of {confidence['replicates']} replicates"
              + ("" if total is None else f"; query + replicates ε = {total:.3g}")
              + (" (below 50 %: do not rely on the ranking)" if confidence["unsure"] else "")
              + ("" if confidence.get("certified", True) else
                 " (replicates ranked among the query's nearest candidates)"))
    for kind, candidates in answer.get("recommendations", {}).items():
        print(f"\n{kind} (try each on local validation, keep the best):")
        if not candidates:
            print("  (no recorded evidence among the nearest tasks)")
        for c in candidates:
            rate = ("" if c.get("top1_rate") is None else
                    f"  (top-1 in {c['top1_rate']:.0%}, top-k in {c['topk_rate']:.0%} of "
                    "replicates)")
            print(f"  #{c['rank']} {c['source']}{'  [hub]' if c.get('hub') else ''}{rate}")
            print(f"      {_candidate_text(kind, c)}")
            if c.get("ranking") == "learned":
                print(f"      why: {c['why']} (learned score {c['learned_score']:+.2f}, "
                      f"α {c['alpha']:g})")
    return 0


def _neighbour_notes(n: dict) -> str:
    notes = [n["basis"], "exact" if n.get("epsilon") is None else f"ε={n['epsilon']:g}"]
    if n.get("hub"):
        notes.append(f"hub: in the top-{defaults.K} of {n['k_occurrence']:g} stored tasks, "
                     "weak evidence")
    return "(" + ", ".join(notes) + ")"


def _candidate_text(kind: str, c: dict) -> str:
    """One line a person can act on: the policy's transforms, or the source task and what
    was measured when transferring from it."""
    score = "" if c["score"] is None else (f"score {c['score']:.4f} {c['metric']} "
                                           f"({c['n_seeds']} seed(s))")
    if kind == "augmentation":
        return f"{c.get('summary', c['value'])}" + (f"; {score}" if score else "")
    if c["evidence"] == "transfer":
        return f"measured: {score}; {c['provenance']}"
    if c["evidence"] == "nearest":
        return f"{c['value']}: nearest task, no measured transfer from it yet"
    value = c["value"] if len(c["value"]) <= 70 else c["value"][:67] + "..."
    return f"{value}" + (f"; {score}" if score else "")
