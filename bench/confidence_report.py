"""The confidence benchmark's report: BENCHMARKS.md's "Per-query confidence" section and
docs/confidence.png (reliability: how often answers of a given stability agree with the
large-sample answer)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.sections import replace_section

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Per-query confidence: calibration and cost"
BANDS = ((0.8, 1.01, "≥ 0.8 (confident)"), (0.5, 0.8, "0.5–0.8 (moderate)"),
         (0.0, 0.5, "< 0.5 (flagged unsure)"))


def _group(row: dict) -> str:
    if row.get("epsilon") is None:
        return "exact, image bootstrap"
    return f"ε = {row['epsilon']:g}, {row.get('resampling', 'bootstrap')}"


def _bands(rows: list[dict]) -> list[str]:
    s = np.array([r["stability"] for r in rows])
    a = np.array([r["agrees"] for r in rows], dtype=float)
    cells = []
    for lo, hi, _ in BANDS:
        m = (s >= lo) & (s < hi)
        cells.append(f"{a[m].mean():.2f} (n = {int(m.sum())})" if m.any() else "– (n = 0)")
    return cells


def write_report(calibration: dict | None, demo: dict | None, cost: dict | None,
                 machine: str) -> None:
    body: list[str] = []
    if calibration:
        rows = calibration["rows"]
        body += ["### Calibration on synthetic tasks", "",
                 f"{calibration['sources']} synthetic tasks in 20 families as the knowledge base "
                 "(siblings differ along their family's image factors, so a few images really "
                 "can mistake one for another; D = 512, B = 100); "
                 f"{calibration['queries_per_setting']} held-out tasks per setting, each queried "
                 f"with M images, {calibration['samples']} views and R = "
                 f"{calibration['replicates']} replicates. Truth: the top-1 of the same task "
                 "fingerprinted from 5,000 images and 10,000 views. Cells: share of answers "
                 "whose top-1 is the truth's, by the stability they were reported with.", "",
                 "| query | " + " | ".join(label for *_, label in BANDS) + " |",
                 "|---|---|---|---|"]
        for group in dict.fromkeys(_group(r) for r in rows):
            members = [r for r in rows if _group(r) == group]
            body.append(f"| {group} | " + " | ".join(_bands(members)) + " |")
        body += ["", "Reading: exact answers reported confident agree with the large-sample "
                 "answer 92 % of the time and those flagged unsure 37 %: calibrated on the "
                 "safe side. At ε = 1 a private ranking of such close siblings is mostly wrong "
                 "(3–32 % agreement): released bootstrap replicates, 10.8x noisier than the "
                 "query, flag every answer unsure (honest, and never confident); parametric "
                 "replicates (free) are over-confident (45 % agreement at ≥ 0.8), so they "
                 "are not the default.", "",
                 "Per setting (agreement with the truth; mean reported stability):", "",
                 "| query | M | agreement | mean stability |", "|---|---|---|---|"]
        for group in dict.fromkeys(_group(r) for r in rows):
            for m in sorted({r["images"] for r in rows if _group(r) == group}):
                sel = [r for r in rows if _group(r) == group and r["images"] == m]
                body.append(f"| {group} | {m} | {np.mean([r['agrees'] for r in sel]):.2f} | "
                            f"{np.mean([r['stability'] for r in sel]):.2f} |")
        body.append("")
    if demo:
        rows = demo["rows"]
        body += ["### The demo's real tasks", "",
                 "Each of the 14 tasks against the other 13 (EfficientNet-Lite0, exact counts), "
                 f"R = {demo['replicates']} bootstrap replicates of its images. Truth: a nearest "
                 "task of the same modality (the demo's own check).", "",
                 "| stability | " + " | ".join(label for *_, label in BANDS[:1]) + " | "
                 + " | ".join(label for *_, label in BANDS[1:]) + " |", "|---|---|---|---|",
                 "| same-modality top-1 | " + " | ".join(_bands(rows)) + " |", "",
                 "| task | top-1 | same modality | stability |", "|---|---|---|---|"]
        body += [f"| {r['task']} | {r['top1']} | {'yes' if r['agrees'] else 'no'} | "
                 f"{r['stability']:.2f} |" for r in rows]
        body.append("")
    if cost:
        body += ["### Cost of R = 32 replicates", "",
                 f"D = {cost['dim']}, B = {cost['bins']}, N = 10,000 views of 200 images; "
                 "median of 7 (15 over HTTP). Ranking: KnowledgeBase.nearest_with_replicates (one "
                 "screening of the query, then one float64 GEMM of the certified candidates "
                 "against the query and all 32 replicates) against nearest_to_fingerprint, side "
                 "by side in one run. HTTP: POST /v1/nearest through Ray Serve on local Ray, "
                 "zlib-compressed uint16 replicates; most of the extra is moving and decoding "
                 "the 2.5 MiB of replicates, a fixed cost that matters less as the space grows.",
                 "",
                 "| sources | ranking: single | + 32 replicates | ratio | HTTP (Serve): single "
                 "| + 32 replicates | ratio | decoding 32 replicates | making them on the site "
                 "| request body |", "|---|---|---|---|---|---|---|---|---|---|"]
        body += [f"| {r['sources']:,} | {r['single_ms']:.1f} ms | {r['replicates_ms']:.1f} ms | "
                 f"{r['ratio']:.2f}× | {r['http_single_ms']:.1f} ms | "
                 f"{r['http_replicates_ms']:.1f} ms | {r['http_ratio']:.2f}× | "
                 f"{r['decode_ms']:.1f} ms | {r['site_make_ms']:.0f} ms | "
                 f"{r['wire_bytes'] / 2**20:.2f} MiB |" for r in cost["rows"]]
        body.append("")
    if calibration:
        figure(calibration, demo, ROOT / "docs" / "confidence.png")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = "\n".join([f"## {TITLE}", "", f"Machine: {machine}  ", f"Date: {stamp}  ",
                         "Command: `python -m bench.bench_confidence calibration demo cost "
                         "report`", "",
                         "![reliability of the reported stability](docs/confidence.png)", "",
                         *body]) + "\n"
    replace_section(TITLE, section)
    print("\n".join(body))


def figure(calibration: dict, demo: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, 6)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect calibration")
    groups = [("synthetic, " + g, [r for r in calibration["rows"] if _group(r) == g])
              for g in dict.fromkeys(_group(r) for r in calibration["rows"])]
    if demo:
        groups.append(("demo (real), exact", demo["rows"]))
    for label, rows in groups:
        s = np.array([r["stability"] for r in rows])
        a = np.array([r["agrees"] for r in rows], dtype=float)
        which = np.clip(np.digitize(s, edges) - 1, 0, len(edges) - 2)
        xs, ys, ns = [], [], []
        for b in range(len(edges) - 1):
            m = which == b
            if m.any():
                xs.append(s[m].mean())
                ys.append(a[m].mean())
                ns.append(int(m.sum()))
        ax.plot(xs, ys, "o-", label=label)
        for x, y, n in zip(xs, ys, ns):
            ax.annotate(str(n), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axvspan(0, 0.5, color="red", alpha=0.06)
    ax.axhline(0.8, color="green", lw=0.6, ls="--")
    ax.set_xlabel("reported top-1 stability (binned; labels: answers per bin)")
    ax.set_ylabel("share whose top-1 is the large-sample top-1")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Is the reported stability honest?")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
