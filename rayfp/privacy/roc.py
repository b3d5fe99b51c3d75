"""How well scores tell members from non-members: ROC AUC and the true-positive rate at a low
false-positive rate (what matters for privacy: Carlini et al. 2022), with bootstrap intervals."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import rankdata

LOW_FPRS = (0.01, 0.001)


def roc_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(member score > non-member score), ties half (the Mann-Whitney U statistic)."""
    members, non_members = np.asarray(members, float), np.asarray(non_members, float)
    ranks = rankdata(np.concatenate([members, non_members]))
    m, n = len(members), len(non_members)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float) -> float:
    """Share of members scored above the threshold that at most ``fpr`` of non-members pass.
    Below 1/len(non_members) no threshold exists: the strictest (above every non-member) is
    used."""
    members, non_members = np.asarray(members, float), np.asarray(non_members, float)
    ordered = np.sort(non_members)[::-1]
    allowed = int(np.floor(fpr * len(ordered)))
    threshold = ordered[allowed] if allowed < len(ordered) else -np.inf
    return float((members > threshold).mean())


def roc_curve(members: np.ndarray, non_members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every threshold, from (0, 0) to (1, 1)."""
    scores = np.concatenate([members, non_members])
    truth = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    order = np.argsort(-scores, kind="stable")
    tpr = np.r_[0.0, np.cumsum(truth[order]) / len(members)]
    fpr = np.r_[0.0, np.cumsum(1 - truth[order]) / len(non_members)]
    return fpr, tpr


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def text(self, percent: bool = False) -> str:
        f = (lambda v: f"{100 * v:.1f} %") if percent else (lambda v: f"{v:.3f}")
        return f"{f(self.value)} [{f(self.low)}, {f(self.high)}]"

    def to_record(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AttackSummary:
    attack: str
    members: int
    non_members: int
    auc: Estimate
    tpr: dict[float, Estimate]  # at each low FPR

    def to_record(self) -> dict:
        return {"attack": self.attack, "scored_members": self.members,
                "scored_non_members": self.non_members,
                "auc": self.auc.to_record(),
                **{f"tpr_at_{fpr:g}_fpr": e.to_record() for fpr, e in self.tpr.items()}}


def summarize(attack: str, members, non_members, *, replicates: int = 500, seed: int = 0,
              level: float = 0.95) -> AttackSummary:
    """AUC and TPR at 1 % / 0.1 % FPR with percentile bootstrap intervals (members and
    non-members resampled independently)."""
    members, non_members = np.asarray(members, float), np.asarray(non_members, float)
    rng = np.random.default_rng(seed)
    stats = {"auc": [], **{fpr: [] for fpr in LOW_FPRS}}
    for _ in range(replicates):
        a = members[rng.integers(len(members), size=len(members))]
        b = non_members[rng.integers(len(non_members), size=len(non_members))]
        stats["auc"].append(roc_auc(a, b))
        for fpr in LOW_FPRS:
            stats[fpr].append(tpr_at_fpr(a, b, fpr))
    tail = (1 - level) / 2 * 100

    def estimate(point: float, samples: list[float]) -> Estimate:
        low, high = np.percentile(samples, [tail, 100 - tail])
        return Estimate(point, float(low), float(high))

    return AttackSummary(attack, len(members), len(non_members),
                         estimate(roc_auc(members, non_members), stats["auc"]),
                         {fpr: estimate(tpr_at_fpr(members, non_members, fpr), stats[fpr])
                          for fpr in LOW_FPRS})
