"""The privacy benchmark's report: BENCHMARKS.md's "Privacy" section and docs/privacy.png from
bench/results/privacy-*.json (written by bench.bench_privacy's parts)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from bench.privacy_common import EPSILONS, MEMBERS, RESULTS, ROOT, SAMPLES
from bench.privacy_common import eps_text as _eps
from rayfp import defaults
from rayfp.privacy.mechanism import MEAN_FROM_NOISED_SUM


def _best(rows: list[dict], members: int, epsilon, samples: int | None = None) -> dict | None:
    """The strongest attack (highest AUC) at a setting."""
    found = [r for r in rows if r["members"] == members and r["epsilon"] == epsilon
             and (samples is None or r["samples"] == samples)]
    return max(found, key=lambda r: r["auc"]["value"]) if found else None


def _attack_table(rows: list[dict], members_list, epsilons, samples: int) -> list[str]:
    lines = ["| M | ε | lrt AUC | mean AUC | LiRA AUC | best TPR @ 1 % FPR | best TPR @ 0.1 % FPR |",
             "|---|---|---|---|---|---|---|"]
    for members in members_list:
        for eps in epsilons:
            key = None if math.isinf(eps) else eps
            found = {r["attack"]: r for r in rows if r["members"] == members
                     and r["epsilon"] == key and r["samples"] == samples}
            if not found:
                continue
            auc = {a: f"{found[a]['auc']['value']:.3f} [{found[a]['auc']['low']:.2f}, "
                      f"{found[a]['auc']['high']:.2f}]" for a in found}
            tpr1 = max(found.values(), key=lambda r: r["tpr_at_0.01_fpr"]["value"])
            tpr01 = max(found.values(), key=lambda r: r["tpr_at_0.001_fpr"]["value"])
            lines.append(f"| {members:,} | {_eps(eps)} | {auc['lrt']} | {auc['mean']} | "
                         f"{auc['lira']} | {100 * tpr1['tpr_at_0.01_fpr']['value']:.1f} % "
                         f"({tpr1['attack']}) | {100 * tpr01['tpr_at_0.001_fpr']['value']:.1f} % "
                         f"({tpr01['attack']}) |")
    return lines


def report() -> None:
    """bench/results/privacy-*.json -> BENCHMARKS.md's "Privacy" section and docs/privacy.png."""
    from bench.bench_core import machine

    load = {p: json.loads((RESULTS / f"privacy-{p}.json").read_text())
            for p in ("attack", "utility", "real") if (RESULTS / f"privacy-{p}.json").exists()}
    body = []
    if "attack" in load:
        rows = load["attack"]["rows"]
        body += ["### Membership inference, synthetic features (the worst case)", "",
                 f"{load['attack']['features']}, N = {SAMPLES:,}; AUC with 95 % bootstrap "
                 "intervals; TPR of the strongest attack at each FPR.", ""]
        body += _attack_table(rows, MEMBERS, EPSILONS, SAMPLES)
        body += ["", "N = 1,000 instead of 10,000 (M = 200):", ""]
        body += _attack_table(rows, (200,), EPSILONS, 1000)
    if "real" in load:
        body += ["", "### Membership inference, real features", "",
                 f"{load['real']['features']}, N = 1,000:", ""]
        body += _attack_table(load["real"]["rows"], (50, 200), EPSILONS, 1000)
        body += ["", "The demo's 14 tasks (4 to 129 images; all but one below the 50-image minimum) "
                 "queried with private fingerprints against their exact ones (same-modality "
                 "nearest neighbour, N = 100):", "",
                 "| ε | same modality |", "|---|---|"]
        body += [f"| {_eps(math.inf if d['epsilon'] is None else d['epsilon'])} | "
                 f"{d['same_modality']}/{d['tasks']} |" for d in load["real"]["demo"]]
    if "utility" in load:
        u = load["utility"]
        body += ["", "### Ranking utility, synthetic knowledge base", "",
                 f"{u['knowledge_base']:,} synthetic tasks (20 families), {u['targets']} "
                 "held-out targets; agreement of a private query's top-1 / top-5 with the "
                 "noise-free paper-plan fingerprint's. *Exact sources*: a cloud of public data; "
                 "*private sources*: every source released at the same ε (M = 1,000 each).", "",
                 "| M | ε | top-1 (exact sources) | top-5 overlap | top-1 (private sources) | "
                 "top-5 overlap |", "|---|---|---|---|---|---|"]
        for r in u["rows"]:
            eps = math.inf if r["epsilon"] is None else r["epsilon"]
            private = (f"{r['top1_private_sources']:.2f} | {r['top5_private_sources']:.2f}"
                       if "top1_private_sources" in r else "– | –")
            body.append(f"| {r['members']:,} | {_eps(eps)} | {r['top1']:.2f} | {r['top5']:.2f}"
                        f" | {private} |")
        body += ["", "Engineering the release at M = 200 (top-1 / top-5 against exact sources):",
                 "", "| release bins | mean from | ε = 1 | ε = 2 | ε = 4 |", "|---|---|---|---|---|"]
        for bins in (100, 20, 10, 5):
            for mean in ("counts", MEAN_FROM_NOISED_SUM):
                cells = [f"{r['top1']:.2f} / {r['top5']:.2f}" for r in u["frontier_m200"]
                         if r["release_bins"] == bins and r["mean"] == mean]
                body.append(f"| {bins} | {mean} | " + " | ".join(cells) + " |")
    write_privacy_section(body, machine())
    if "attack" in load and "utility" in load:
        figure(load, ROOT / "docs" / "privacy.png")


def write_privacy_section(body: list[str], where: str) -> None:
    import re

    path = ROOT / "BENCHMARKS.md"
    title = "Privacy: membership inference and ranking utility against ε"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = "\n".join([f"## {title}", "", f"Machine: {where}  ", f"Date: {stamp}  ",
                         "Command: `python -m bench.bench_privacy attack utility real report`",
                         "", "![attack AUC and top-1 agreement against ε](docs/privacy.png)", "",
                         *body]) + "\n"
    text = path.read_text()
    pattern = re.compile(rf"## {re.escape(title)}\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + section)
    path.write_text(text)


def figure(load: dict, path: Path) -> None:
    """Left: the strongest attack's AUC against ε; right: top-1 agreement against ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [e for e in EPSILONS if not math.isinf(e)]
    xs = [*finite, 16.0]  # ∞ drawn at 16
    labels = [*(f"{e:g}" for e in finite), "∞"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for members in MEMBERS:
        aucs = [_best(load["attack"]["rows"], members, None if math.isinf(e) else e, SAMPLES)
                for e in EPSILONS]
        left.plot(xs, [a["auc"]["value"] if a else np.nan for a in aucs], "o-",
                  label=f"synthetic, M={members:,}")
    if "real" in load:
        for members in (50, 200):
            aucs = [_best(load["real"]["rows"], members, None if math.isinf(e) else e)
                    for e in EPSILONS]
            left.plot(xs, [a["auc"]["value"] if a else np.nan for a in aucs], "s--",
                      label=f"digits (EfficientNet), M={members}")
    from rayfp.privacy.bounds import gdp_mu, max_auc

    left.plot(xs, [max_auc(gdp_mu(e, defaults.DP_DELTA)) for e in EPSILONS], "k-", lw=1.5,
              label="bound: the best possible attack (Gaussian DP)")
    left.axhline(0.55, color="k", ls=":", lw=0.8)
    left.axvline(defaults.DP_EPSILON, color="grey", ls="--", lw=0.8)
    left.set(xscale="log", xticks=xs, xticklabels=labels, ylim=(0.45, 1.0), xlabel="ε",
             ylabel="strongest attack ROC AUC", title="Membership inference")
    for members in MEMBERS:
        rows = {(r["epsilon"] if r["epsilon"] is not None else math.inf): r
                for r in load["utility"]["rows"] if r["members"] == members}
        right.plot(xs, [rows[e]["top1"] if e in rows else np.nan for e in EPSILONS], "o-",
                   label=f"M={members:,}")
    right.axhline(0.9, color="k", ls=":", lw=0.8)
    right.axvline(defaults.DP_EPSILON, color="grey", ls="--", lw=0.8)
    right.set(xscale="log", xticks=xs, xticklabels=labels, ylim=(0, 1.02), xlabel="ε",
              ylabel="top-1 agreement with the noise-free ranking",
              title="Utility (1,000-task synthetic knowledge base)")
    for ax in (left, right):
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.suptitle(f"rayfp private fingerprints (δ = {defaults.DP_DELTA:g}; dashed: default ε)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
