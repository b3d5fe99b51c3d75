"""`rayfp audit`: how well membership-inference attacks tell a task's images from others, given
its released fingerprint (rayfp.privacy.audit). Real features of the images given, or
synthetic ones (--synthetic) to show how the risk scales with M, N and ε."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from rayfp import defaults
from rayfp.cli.flags import parse_epsilon
from rayfp.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser("audit", help="membership-inference audit of fingerprints (docs/privacy.md)")
    p.add_argument("paths", nargs="*", help="the images of a task (files, folders, manifests)")
    p.add_argument("--synthetic", action="store_true",
                   help="synthetic correlated features instead of images (scaling study)")
    p.add_argument("--space", help="space id (real features)")
    p.add_argument("--store", help="store holding the space (real features)")
    p.add_argument("--members", type=int, nargs="+", default=[200],
                   help="M: images in the audited task (several: one audit each)")
    p.add_argument("--samples", type=int, nargs="+", default=[defaults.FAST_SAMPLES],
                   help="N: views of its fingerprint (default 1000, the fast mode)")
    p.add_argument("--epsilon", type=parse_epsilon, nargs="+", default=[defaults.DP_EPSILON],
                   help="ε of the release ('inf': exact counts); several: one audit each")
    p.add_argument("--delta", type=float, default=defaults.DP_DELTA)
    p.add_argument("--views", type=int, default=6,
                   help="augmented views made per image (half the owner's, half the "
                        "attacker's); fewer than a plan needs are reused, which overstates "
                        "the leak")
    p.add_argument("--trials", type=int, default=1, help="fingerprints audited per setting")
    p.add_argument("--candidates", type=int, default=200,
                   help="members (and non-members) scored per trial, at most")
    p.add_argument("--shadows", type=int, default=8, help="shadow fingerprints (LiRA)")
    p.add_argument("--dim", type=int, default=512, help="feature dimensions (--synthetic)")
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--out", default="audit-output", help="folder for roc.png and audit.json")
    p.add_argument("--threads", type=int, help="torch CPU threads (real features)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--dp-test", action="store_true",
                   help="instead: the stochastic test of the DP guarantee: neighbouring file "
                        "sets (reordered, renamed, same name; the images given, or generated "
                        "ones) released --releases times; fails (exit 1) if any count "
                        "difference exceeds the sensitivity or the empirical ε the claim")
    p.add_argument("--releases", type=int, default=2000,
                   help="releases per neighbour in --dp-test (half choose the threshold)")
    p.set_defaults(run=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    if args.dp_test:
        from rayfp.cli.dptest import cmd_dp_test

        return cmd_dp_test(args)
    from rayfp.privacy.audit import ATTACKS, AuditConfig, run_audit
    from rayfp.privacy.mechanism import PrivacySpec
    from rayfp.privacy.roc import summarize

    space, bank_for = _population(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, curves = [], []
    from rayfp.privacy.bounds import gdp_mu, max_auc, max_tpr

    print(f"{'M':>6} {'N':>6} {'ε':>5}  {'attack':6} {'AUC [95 % CI]':24} "
          f"{'TPR@1%FPR':24} {'TPR@0.1%FPR'}")
    for members in args.members:
        for samples in args.samples:
            bank = bank_for(members, samples)
            for epsilon in args.epsilon:
                config = AuditConfig(members=members, samples=samples,
                                     privacy=PrivacySpec(epsilon=epsilon, delta=args.delta),
                                     trials=args.trials, candidates=args.candidates,
                                     shadows=args.shadows, seed=args.seed)
                scores = run_audit(bank, space, config,
                                   progress=None if args.quiet else print)
                mu = gdp_mu(epsilon, args.delta)
                eps = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
                tpr1, tpr01 = (f"{100 * max_tpr(mu, fpr):.2f} %" for fpr in (0.01, 0.001))
                print(f"{members:6d} {samples:6d} {eps:>5}  {'bound':6} {max_auc(mu):<24.3f} "
                      f"{tpr1:24} {tpr01}   (the most any attack can reach)")
                for attack in ATTACKS:
                    s = summarize(attack, scores.members[attack], scores.non_members[attack],
                                  seed=args.seed)
                    print(f"{members:6d} {samples:6d} {eps:>5}  {attack:6} {s.auc.text():24} "
                          f"{s.tpr[0.01].text(True):24} {s.tpr[0.001].text(True)}")
                    results.append({"members": members, "samples": samples,
                                    "epsilon": None if math.isinf(epsilon) else epsilon,
                                    "delta": args.delta, **s.to_record()})
                    curves.append((f"M={members} N={samples} ε={eps} {attack}",
                                   scores.members[attack], scores.non_members[attack]))
    (out / "audit.json").write_text(json.dumps({"space": space.space_id,
                                                "synthetic": args.synthetic,
                                                "results": results}, indent=2))
    plot_roc(curves, out / "roc.png")
    print(f"\nwrote {out / 'audit.json'} and {out / 'roc.png'}")
    return 0


def _population(args: argparse.Namespace):
    """(space, bank_for(members, samples) -> ViewBank) for real or synthetic features."""
    from rayfp.core.sampling import views_per_image_cap
    from rayfp.privacy.audit import ViewBank

    if args.synthetic:
        from rayfp.privacy.synthetic import TaskFamilies, synthetic_space

        tasks = TaskFamilies(dim=args.dim, seed=args.seed).draw(20)
        space = synthetic_space(tasks, seed=args.seed)

        def synthetic_bank(members: int, samples: int) -> ViewBank:
            cap = views_per_image_cap(members, samples, plan="paper", seed=args.seed)
            pool = 4 * members + 2 * min(args.candidates, members)
            return tasks[0].view_bank(pool, 2 * cap, np.random.default_rng(args.seed + 1))

        return space, synthetic_bank
    if not args.paths or not args.space or not args.store:
        raise ConfigError("a real-feature audit needs PATH..., --space and --store "
                          "(or --synthetic)")
    from rayfp.extract.api import extractor_for_space
    from rayfp.extract.views import view_bank
    from rayfp.io.inventory import take_inventory
    from rayfp.io.sources import discover_sources
    from rayfp.store.store import Store

    space = Store(args.store).get_space(args.space)
    inventory = take_inventory(discover_sources(args.paths), task_id="audit",
                               progress=not args.quiet)
    extractor = extractor_for_space(space, threads=args.threads)
    bank = ViewBank(view_bank(inventory, extractor, views=args.views, seed=args.seed,
                              progress=not args.quiet))
    return space, lambda members, samples: bank


def plot_roc(curves, path: Path) -> None:
    """Log-log ROC curves (the low-FPR corner is where privacy is decided)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rayfp.privacy.roc import roc_curve

    fig, ax = plt.subplots(figsize=(6.5, 6))
    for label, members, non_members in curves:
        fpr, tpr = roc_curve(np.asarray(members), np.asarray(non_members))
        ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=label, lw=1.2)
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1),
           xlabel="false-positive rate", ylabel="true-positive rate",
           title="Membership inference on released fingerprints")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
