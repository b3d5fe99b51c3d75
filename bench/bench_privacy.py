"""Privacy benchmark: membership-inference attacks and ranking utility against ε, M and N.

Parts (each writes bench/results/privacy-<part>.json; `report` turns them into BENCHMARKS.md's
"Privacy" section and docs/privacy.png):

- ``attack``: the audit (lrt, mean, LiRA) on synthetic correlated features, D = 512, B = 100,
  N = 10,000, for M in (50, 200, 1,000, 5,000) and ε in (0.5, 1, 2, 4, 8, ∞); N = 1,000 too.
- ``utility``: top-1 / top-5 agreement of private queries with the noise-free paper-plan
  fingerprint, against a synthetic knowledge base of 1,000 tasks (exact sources, and sources
  that are private themselves), plus the release-bins / mean-source frontier at M = 200.
- ``real``: the audit on EfficientNet-Lite0 features of scikit-learn's 1,797 handwritten digits,
  and the demo's same-modality score with private queries.

    python -m bench.bench_privacy attack utility real report [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.privacy_common import EPSILONS, MEMBERS, RESULTS, SAMPLES
from bench.privacy_common import eps_text as _eps
from rayfp import defaults
from rayfp.core.distance import LinearIndex
from rayfp.core.fingerprint import PartialCounts, finalize
from rayfp.core.sampling import keyed_plan, sample_plan, views_per_image_cap
from rayfp.privacy.audit import ATTACKS, AuditConfig, ViewBank, run_audit
from rayfp.privacy.mechanism import MEAN_FROM_NOISED_SUM, PrivacySpec, privatize
from rayfp.privacy.roc import summarize
from rayfp.privacy.synthetic import TaskFamilies, expected_fingerprint, synthetic_space


def _save(part: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"privacy-{part}.json").write_text(json.dumps(payload, indent=1))


def _audit_rows(bank: ViewBank, space, *, members: int, samples: int, epsilon: float,
                trials: int, candidates: int, shadows: int, seed: int = 0) -> list[dict]:
    config = AuditConfig(members=members, samples=samples, trials=trials, candidates=candidates,
                         shadows=shadows, seed=seed, privacy=PrivacySpec(epsilon=epsilon))
    started = time.perf_counter()
    scores = run_audit(bank, space, config)
    rows = []
    for attack in ATTACKS:
        s = summarize(attack, scores.members[attack], scores.non_members[attack], seed=seed)
        rows.append({"members": members, "samples": samples,
                     "epsilon": None if math.isinf(epsilon) else epsilon, **s.to_record()})
    print(f"  M={members} N={samples} ε={_eps(epsilon)}: " + ", ".join(
        f"{r['attack']} {r['auc']['value']:.3f}" for r in rows) +
        f" ({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


# -- attack ------------------------------------------------------------------------------------
def part_attack(quick: bool) -> None:
    families = TaskFamilies(dim=512)
    tasks = families.draw(20)
    space = synthetic_space(tasks)
    rows = []
    # M = 200 first: the setting the default ε is chosen on.
    settings = [(m, SAMPLES, eps) for m in (200, 50, 1000, 5000) for eps in EPSILONS]
    settings += [(200, 1000, math.inf), (200, 1000, defaults.DP_EPSILON)]
    if quick:
        settings = [(200, SAMPLES, math.inf), (200, SAMPLES, defaults.DP_EPSILON)]
    for members, samples, epsilon in settings:
        cap = views_per_image_cap(members, samples, plan="paper", seed=0)
        # ~800 members and as many non-members scored per setting (fewer at M >= 1,000, where
        # every trial is larger): AUC to about ±0.03 (95 %).
        candidates = 200 if members <= 200 else 300
        trials = {50: 8, 200: 4}.get(members, 2)
        shadows = 8
        if quick:  # a run-through (the test suite's), not an estimate: AUC to about ±0.15
            trials, candidates, shadows = 1, 50, 4
        pool = 4 * members + 400
        bank = tasks[0].view_bank(pool, 2 * cap, np.random.default_rng(members + samples))
        rows += _audit_rows(bank, space, members=members, samples=samples, epsilon=epsilon,
                            trials=trials, candidates=candidates, shadows=shadows)
    _save("attack", {"features": "synthetic, D=512, B=100", "rows": rows})


# -- utility -----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Target:
    exact: object  # the noise-free fingerprint (the paper's plan)
    balanced: PartialCounts  # exact counts of the private recipe (keyed plan, clipped sum)


def _targets(tasks, space, members: int, rng) -> list[_Target]:
    out = []
    for task in tasks:
        paper = np.bincount(sample_plan(members, SAMPLES, 0).image_index, minlength=members)
        exact = finalize(PartialCounts.from_features(task.views(paper, rng), space),
                         task_id=task.name, n_images=members)
        units = [f"{task.name}/{i}".encode() for i in range(members)]  # each image's content
        balanced = np.bincount(keyed_plan(units, SAMPLES, 0).image_index, minlength=members)
        out.append(_Target(exact, PartialCounts.from_features(task.views(balanced, rng), space,
                                                               clip_sum=True)))
    return out


def _agreement(index: LinearIndex, exact_top: np.ndarray, fingerprints) -> tuple[float, float]:
    top = np.argsort(index.bkld_many(fingerprints), axis=0)[:5].T
    top1 = float(np.mean(top[:, 0] == exact_top[:, 0]))
    top5 = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top, exact_top)]))
    return top1, top5


def _release(target: _Target, space, members: int, spec: PrivacySpec, seed: int):
    if not spec.private:
        return finalize(target.balanced, task_id=target.exact.task_id, n_images=members)
    released = privatize(target.balanced, space, n_images=members,
                         spec=dataclasses.replace(spec, seed=seed)).partial
    return finalize(released, task_id=target.exact.task_id, n_images=members)


def part_utility(quick: bool) -> None:
    families = TaskFamilies(dim=512)
    kb_tasks = families.draw(1000)
    space = synthetic_space(kb_tasks[:40])
    started = time.perf_counter()
    exact_sources = [expected_fingerprint(t, space, samples=SAMPLES, n_images=1000)
                     for t in kb_tasks]
    n_targets = 30 if quick else 100
    targets_tasks = families.draw(n_targets, prefix="target", offset=10_000)
    rng = np.random.default_rng(0)
    index_exact = LinearIndex(exact_sources)
    print(f"  knowledge base of {len(exact_sources)} synthetic tasks "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    # Sources that are private themselves (every site releases at ε, M_s = 1,000 images).
    private_indexes = {}
    for eps in EPSILONS:
        if math.isinf(eps):
            continue
        spec = PrivacySpec(epsilon=eps)
        released = []
        for i, fp in enumerate(exact_sources):
            part = PartialCounts(space.space_id, fp.counts, fp.feature_sum, fp.n_samples)
            # Seeds apart from the queries' (0..targets): equal seeds would give a query and a
            # source the same noise vector, a correlation no real release has.
            out = privatize(part, space, n_images=1000,
                            spec=dataclasses.replace(spec, seed=1_000_000 + i)).partial
            released.append(finalize(out, task_id=fp.task_id, n_images=1000))
        private_indexes[eps] = LinearIndex(released)
    rows, frontier = [], []
    for members in ((200, 1000) if quick else MEMBERS):
        targets = _targets(targets_tasks, space, members, rng)
        exact_top = np.argsort(index_exact.bkld_many([t.exact for t in targets]), axis=0)[:5].T
        for eps in EPSILONS:
            spec = PrivacySpec(epsilon=eps)
            fps = [_release(t, space, members, spec, seed=j) for j, t in enumerate(targets)]
            top1, top5 = _agreement(index_exact, exact_top, fps)
            row = {"members": members, "epsilon": None if math.isinf(eps) else eps,
                   "top1": top1, "top5": top5}
            if not math.isinf(eps):
                row["top1_private_sources"], row["top5_private_sources"] = _agreement(
                    private_indexes[eps], exact_top, fps)
            rows.append(row)
            print(f"  M={members} ε={_eps(eps)}: top-1 {top1:.2f}, top-5 {top5:.2f}", flush=True)
        if members == 200:
            for bins in (100, 20, 10, 5):
                for mean in ("counts", MEAN_FROM_NOISED_SUM):
                    for eps in (1.0, 2.0, 4.0):
                        spec = PrivacySpec(epsilon=eps, release_bins=bins, mean=mean)
                        fps = [_release(t, space, members, spec, seed=j)
                               for j, t in enumerate(targets)]
                        top1, top5 = _agreement(index_exact, exact_top, fps)
                        frontier.append({"release_bins": bins, "mean": mean, "epsilon": eps,
                                         "top1": top1, "top5": top5})
    _save("utility", {"knowledge_base": len(exact_sources), "targets": n_targets,
                      "rows": rows, "frontier_m200": frontier})


# -- real features ------------------------------------------------------------------------------
def _digits_folder(folder: Path) -> list[Path]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(digits.images):
        path = folder / f"digit-{i:04d}-{digits.target[i]}.png"
        Image.fromarray((image * (255 / 16)).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def part_real(quick: bool) -> None:
    from rayfp.cli.demo import build_demo_tasks
    from rayfp.extract.api import create_space, extractor_for_space
    from rayfp.extract.views import view_bank
    from rayfp.io.inventory import take_inventory
    from rayfp.io.sources import discover_sources
    from rayfp.store.store import Store

    work = Path(tempfile.mkdtemp(prefix="rayfp-privacy-"))
    paths = _digits_folder(work / "digits")
    reference, audited = paths[:297], paths[297:]  # edges from digits never audited
    store = Store(work / "store")
    space = create_space([[str(p) for p in reference]], backbone="efficientnet_lite0",
                         bins=defaults.BINS, store=store, samples_per_task=1000,
                         reference_names=["digits-reference"], threads=1).space
    extractor = extractor_for_space(space, threads=1)  # the synthetic parts use the other core
    inventory = take_inventory(discover_sources([str(p) for p in audited]), task_id="digits")
    views = 4
    started = time.perf_counter()
    # The features are the slow part on a CPU: kept between runs (outside the repository).
    cache = Path.home() / ".cache" / "rayfp-bench" / f"digits-{space.space_id}-{views}.npy"
    if cache.is_file():
        bank = ViewBank(np.load(cache))
    else:
        bank = ViewBank(view_bank(inventory, extractor, views=views, seed=0, progress=True))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, bank.features)
    print(f"  {bank.n_images} digits x {views} views extracted "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    rows = []
    for members in ((200,) if quick else (50, 200)):
        for eps in ((math.inf, defaults.DP_EPSILON) if quick else (math.inf, 1.0, 4.0)):
            rows += _audit_rows(bank, space, members=members, samples=defaults.FAST_SAMPLES,
                                epsilon=eps, trials={50: 8, 200: 3}[members],
                                candidates=200, shadows=6)
    demo = part_demo(work, build_demo_tasks)
    _save("real", {"features": f"efficientnet_lite0 (D=1280, B=100), {bank.n_images} "
                               f"scikit-learn digits, {views} views each",
                   "rows": rows, "demo": demo})


def part_demo(work: Path, build_demo_tasks) -> list[dict]:
    """The demo's tasks (4-8 images each) queried privately against their exact fingerprints."""
    from rayfp.extract.api import create_space, extractor_for_space, fingerprint_task
    from rayfp.store.store import Store

    tasks = build_demo_tasks(work / "demo-data")
    store = Store(work / "demo-store")
    names = list(tasks)
    space = create_space([[tasks[t][0]] for t in names], backbone="efficientnet_lite0",
                         bins=defaults.BINS, store=store, samples_per_task=100,
                         reference_names=names, threads=1).space
    extractor = extractor_for_space(space, threads=1)
    out = []
    for eps in (math.inf, 4.0, defaults.DP_EPSILON):
        private = Store(work / f"demo-private-{eps}")
        private.put_space(space)
        for seed, task in enumerate(names):
            fingerprint_task([tasks[task][0]], task_id=task, space_id=space.space_id,
                             store=store if math.isinf(eps) else private, samples=100,
                             seed=seed, min_images=1, modality=tasks[task][1],
                             extractor=extractor, privacy=PrivacySpec(epsilon=eps, seed=seed))
        exact = store.fingerprints(space.space_id)
        index = LinearIndex(exact)
        queries = exact if math.isinf(eps) else private.fingerprints(space.space_id)
        same = sum(tasks[index.top_k(q, 1)[0][0]][1] == tasks[q.task_id][1] for q in queries)
        out.append({"epsilon": None if math.isinf(eps) else eps, "same_modality": int(same),
                    "tasks": len(queries),
                    "images": {q.task_id: q.n_images for q in queries}})
        print(f"  demo ε={_eps(eps)}: {same}/{len(queries)} same-modality", flush=True)
    return out


# -- report ---------------------------------------------------------------------------------------
def part_report(quick: bool) -> None:
    from bench.privacy_report import report

    report()


PARTS = {"attack": part_attack, "utility": part_utility, "real": part_real,
         "report": part_report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=sorted(PARTS))
    parser.add_argument("--quick", action="store_true", help="a few settings only")
    args = parser.parse_args(argv)
    for part in args.parts:
        print(f"== {part}", flush=True)
        PARTS[part](args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
