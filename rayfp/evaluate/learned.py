"""Ranking sources by what worked: a source's prior from the transfer outcomes of other targets,
blended with a distance (docs/learned.md).

Per scenario, every target's outcomes are z-scored over its sources (per metric and seed, then
averaged over seeds and metrics): Z[s, t] says how much better than that target's average
source s did. A source's prior for a new target is its mean Z over the targets it was tried on,
shrunk toward 0 by SHRINK pseudo-targets, so a source tried once cannot lead the list. The
blend standardises the prior and the affinity (−distance) over the candidate sources and mixes
them: score = (1 − α)·z(prior) + α·z(affinity), with α per scenario chosen leave-one-target-out
on the recorded outcomes. A target's own outcomes are never used for its own ranking: every
prior and every α choice here leaves out the target (and, with groups, its image-sharing
group). numpy and pandas only: `rayfp evaluate` and the cloud both use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

SHRINK = 2.0  # pseudo-targets of mean 0: a source tried on n targets keeps n / (n + 2) of its mean
ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))  # the blend weights tried
CHOICE_KS = (1, 3, 5)  # α is chosen on the best-of-k standardised outcome at these k
LEARNED = "learned"
LEARNED_BLEND = "learned+bkld-small"
# The cloud's component kinds and the paper's scenario ids name the same four scenarios.
SCENARIO_OF_KIND = {"architecture": "arch", "pretraining": "pretrain",
                    "augmentation": "augmentation", "cotraining": "multi_task"}


def standardised(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Z[source, target] of one scenario from long rows (metric, source, target, seed, score):
    each (target, metric, seed)'s scores z-scored over its sources (population sd; a constant
    pool gives 0), then averaged over metrics and seeds."""
    if outcomes.empty:
        return pd.DataFrame(dtype=float)
    frame = outcomes[["metric", "source", "target", "seed", "score"]].astype(
        {"score": float})
    groups = frame.groupby(["target", "metric", "seed"])["score"]
    mean, sd = groups.transform("mean"), groups.transform("std", ddof=0)
    frame = frame.assign(z=np.where(sd > 0, (frame["score"] - mean) / sd.where(sd > 0, 1.0), 0.0))
    return frame.groupby(["source", "target"])["z"].mean().unstack("target")


@dataclasses.dataclass(frozen=True)
class Prior:
    """One scenario's standardised outcomes, ready to give priors that leave targets out."""

    z: pd.DataFrame  # sources x targets, NaN where a source was not tried on a target

    @property
    def sources(self) -> list[str]:
        return list(self.z.index)

    @property
    def targets(self) -> list[str]:
        return list(self.z.columns)

    def of(self, exclude: Iterable[str] = ()) -> pd.DataFrame:
        """Per source: prior (shrunk mean Z over the targets not excluded), n (targets that
        back it), improved (of those, how many it beat the target's average on) and mean
        (the unshrunk mean Z)."""
        keep = [t for t in self.z.columns if t not in set(exclude)]
        z = self.z[keep]
        n = z.notna().sum(axis=1)
        total = z.sum(axis=1, min_count=1).fillna(0.0)
        return pd.DataFrame({"prior": total / (n + SHRINK), "n": n,
                             "improved": (z > 0).sum(axis=1),
                             "mean": (total / n.where(n > 0)).fillna(0.0)})


def _standard(values: np.ndarray) -> np.ndarray:
    """z-scores of a vector (NaN ignored, then 0); a constant vector gives zeros."""
    mean, sd = np.nanmean(values), np.nanstd(values)
    if not np.isfinite(sd) or sd == 0:
        return np.zeros_like(values)
    return np.nan_to_num((values - mean) / sd, nan=0.0)


def _zscore(values: pd.Series) -> pd.Series:
    """_standard over a Series, keeping its index."""
    return pd.Series(_standard(values.to_numpy(dtype=float)), index=values.index)


def blend(prior: pd.Series, affinity: pd.Series | None, alpha: float) -> pd.Series:
    """(1 − α)·z(prior) + α·z(affinity) over the candidates (prior's index). A candidate with
    no affinity gets the mean (0); with no affinity at all, the prior alone."""
    score = _zscore(prior)
    if affinity is None or alpha == 0:
        return score
    aff = affinity.reindex(prior.index)
    if aff.notna().sum() < 2:
        return score
    return (1 - alpha) * score + alpha * _zscore(aff)  # no affinity: 0, the mean


def choose_alpha(prior: Prior, affinity_of: Callable[[str], pd.Series | None],
                 candidates_of: Callable[[str], Sequence[str]], *, exclude: Iterable[str] = (),
                 held_out: Callable[[str], Iterable[str]] = lambda t: (t,)) -> float:
    """The α whose blend, leave-one-target-out over the recorded targets (minus ``exclude``),
    gives the best mean best-of-k standardised outcome at CHOICE_KS. Ties go to the smaller α
    (the prior). No target with a distance: 0."""
    return AlphaChooser(prior, affinity_of, candidates_of, held_out).choose(exclude)


class AlphaChooser:
    """choose_alpha for many exclusions of one scenario: each recorded target's pool,
    outcomes and standardised affinity are prepared once (numpy), so `rayfp evaluate` can
    choose α for every target without seeing it, in well under a second per scenario."""

    def __init__(self, prior: Prior, affinity_of: Callable[[str], pd.Series | None],
                 candidates_of: Callable[[str], Sequence[str]],
                 held_out: Callable[[str], Iterable[str]] = lambda t: (t,)) -> None:
        z = prior.z
        self.columns = {t: i for i, t in enumerate(z.columns)}
        self.values = z.to_numpy(dtype=float)
        present = np.isfinite(self.values)
        self.filled = np.where(present, self.values, 0.0)
        self.present = present.astype(float)
        self.total, self.count = self.filled.sum(axis=1), self.present.sum(axis=1)
        rows = {s: i for i, s in enumerate(z.index)}
        self.cases = []
        for target in z.columns:
            affinity = affinity_of(target)
            if affinity is None:
                continue
            column = self.values[:, self.columns[target]]
            pool = [rows[s] for s in candidates_of(target)
                    if s in rows and np.isfinite(column[rows[s]])]
            if len(pool) < 2:
                continue
            names = [z.index[i] for i in pool]
            aff = affinity.reindex(names).to_numpy(dtype=float)
            standard_aff = (_standard(aff) if np.isfinite(aff).sum() >= 2
                            else np.zeros(len(pool)))
            hidden = [self.columns[h] for h in held_out(target) if h in self.columns]
            self.cases.append((target, np.array(pool), column[pool], standard_aff, hidden))

    def choose(self, exclude: Iterable[str] = ()) -> float:
        excluded = {self.columns[t] for t in exclude if t in self.columns}
        alphas = np.array(ALPHAS)[:, None]
        gains = np.zeros(len(ALPHAS))
        counted = 0
        for target, pool, outcomes, standard_aff, hidden in self.cases:
            if self.columns[target] in excluded:
                continue
            cols = sorted(excluded | set(hidden))
            total = self.total[pool] - self.filled[np.ix_(pool, cols)].sum(axis=1)
            count = self.count[pool] - self.present[np.ix_(pool, cols)].sum(axis=1)
            scores = (1 - alphas) * _standard(total / (count + SHRINK)) + alphas * standard_aff
            order = np.argsort(-scores, axis=1, kind="stable")
            ranked = outcomes[order]  # (alphas, pool)
            gains += np.mean([ranked[:, :k].max(axis=1) for k in CHOICE_KS], axis=0)
            counted += 1
        if counted == 0:
            return 0.0
        return float(ALPHAS[int(np.argmax(gains))])  # argmax: the first (smallest α) of ties


def explain(row: Mapping[str, float], *, rank_by_distance: int | None = None) -> str:
    """Why a source is where it is, in words."""
    n, improved = int(row.get("n", 0)), int(row.get("improved", 0))
    parts = []
    if n:
        parts.append(f"beat the average source on {improved} of {n} targets it was tried on, "
                     f"mean {row.get('mean', 0.0):+.2f} SD")
    else:
        parts.append("no recorded outcomes")
    if rank_by_distance is not None:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(rank_by_distance if rank_by_distance < 20
                                                  else rank_by_distance % 10, "th")
        parts.append(f"{rank_by_distance}{suffix} nearest")
    return "; ".join(parts)


# --- `rayfp evaluate`: the learned selectors as distance matrices per scenario ---------------


def outcome_rows(data, scenario: str) -> pd.DataFrame:
    """The paper's development outcomes of one scenario as long rows."""
    from rayfp.evaluate.names import OUTCOME_METRICS

    frames = []
    for metric in OUTCOME_METRICS:
        raw = data.outcomes(scenario, metric, False)
        frames.append(pd.DataFrame({"metric": metric, "source": raw["s"], "target": raw["t"],
                                    "seed": raw["r"], "score": raw["p"]}))
    return pd.concat(frames, ignore_index=True)


def learned_selectors(proto, distances: pd.DataFrame, scenarios: Sequence[str], *,
                      holdout: str = "target") -> dict[str, dict[str, pd.DataFrame]]:
    """{LEARNED: {scenario: matrix}, LEARNED_BLEND: {...}}: for every target column of
    ``distances`` (bKLD small), the negated score of each valid source, computed without the
    target's own outcomes (holdout "target") or its image-sharing group's (holdout "group").
    Lower is better, as for every selector."""
    groups = proto.splits.groups

    def held_out(target: str) -> set[str]:
        out = {target}
        if holdout == "group":
            for members in groups.values():
                if target in members:
                    out.update(members)
        return out

    def base_of(column: str) -> str:
        return column.split(proto.splits.shrink_tag)[0]

    affinity = -distances
    columns_of: dict[str, list[str]] = {}
    for column in distances.columns:
        columns_of.setdefault(base_of(column), []).append(column)

    def affinity_of(target: str) -> pd.Series | None:
        ref = proto.target_ref(target, distances.columns)
        return affinity[ref] if ref in affinity.columns else None

    out: dict[str, dict[str, pd.DataFrame]] = {LEARNED: {}, LEARNED_BLEND: {}}
    for scenario in scenarios:
        prior = Prior(standardised(outcome_rows(proto.data, scenario)))
        chooser = AlphaChooser(prior, affinity_of, proto.valid_sources, held_out)
        learned = pd.DataFrame(np.nan, index=distances.index, columns=distances.columns)
        blended = learned.copy()
        for target in proto.targets():
            hidden = held_out(target)
            pool = [s for s in proto.valid_sources(target) if s in prior.z.index]
            rest = prior.of(exclude=hidden)["prior"].reindex(pool).fillna(0.0)
            alpha = chooser.choose(exclude=hidden)
            for column in columns_of.get(target, []):
                learned.loc[pool, column] = -rest.to_numpy()
                blended.loc[pool, column] = -blend(rest, affinity[column].reindex(pool),
                                                   alpha).to_numpy()
        out[LEARNED][scenario] = learned
        out[LEARNED_BLEND][scenario] = blended
    return out
