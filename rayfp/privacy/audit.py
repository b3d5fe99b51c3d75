"""Membership-inference audit of fingerprints (docs/design.md §5, "measure, don't claim").

The attacker holds a task's released fingerprint, a candidate image (it can make its own
augmented views of it) and a reference population from the same distribution. It must tell
whether the candidate is one of the task's M images. Three attacks, each a score per candidate
(higher = "member"):

- ``lrt``: the per-bin log-likelihood ratio of the candidate's views under the fingerprint's
  histograms against the reference's (Homer et al. 2008 / Sankararaman et al. 2009, adapted to
  histograms);
- ``mean``: the tracing statistic on the mean vector, <x - ref, fp - ref> per reference
  variance (Dwork, Smith, Steinke, Ullman and Vadhan 2015);
- ``lira``: the lrt statistic calibrated per candidate by shadow fingerprints built from the
  reference population with and without the candidate, released by the same mechanism (online
  LiRA, Carlini et al. 2022): log N(s; μ_in, σ) − log N(s; μ_out, σ), with per-candidate means
  and one variance pooled over all candidates (their "fixed variance" variant, the stronger one
  with few shadows).

Everything works on a :class:`ViewBank` of features, real (a backbone's, see
rayfp.cli.audit) or synthetic (rayfp.privacy.synthetic), and fingerprints the members exactly as
rayfp does: the plan's views per image, the space's bins, the release's mechanism.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from rayfp.core.fingerprint import FingerprintSpace, PartialCounts, bin_indices, clip_to_edges
from rayfp.core.sampling import KEYED_PLAN, keyed_plan, sample_plan
from rayfp.errors import ConfigError
from rayfp.privacy.mechanism import PrivacySpec, privatize

ATTACKS = ("lrt", "mean", "lira")
_SMOOTHING = 0.5  # add-½ counts, so an empty bin is unlikely, never impossible


@dataclasses.dataclass(frozen=True)
class ViewBank:
    """Augmented views of a population of images: features (n_images, views, D) float32.

    The first half of each image's views makes fingerprints; the attacker makes its own views,
    the second half. A plan that needs more views of an image than the bank holds reuses them
    cyclically, which concentrates the image's contribution: the audit then overstates the leak,
    never understates it."""

    features: np.ndarray

    def __post_init__(self) -> None:
        if self.features.ndim != 3 or self.features.shape[1] < 2:
            raise ConfigError(f"a view bank is (images, views >= 2, D); got "
                              f"{self.features.shape}")

    @property
    def n_images(self) -> int:
        return int(self.features.shape[0])

    def fingerprint_views(self, image: int, count: int) -> np.ndarray:
        pool = self.features[image, : self.features.shape[1] // 2]
        return pool[np.arange(count) % len(pool)]

    def attacker_views(self, image: int, count: int, skip: int = 0) -> np.ndarray:
        """``count`` of the attacker's views, after the first ``skip`` when there are more."""
        pool = self.features[image, self.features.shape[1] // 2:]
        skip = skip if skip < len(pool) else 0
        return pool[skip + np.arange(count) % (len(pool) - skip)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditConfig:
    members: int  # M images in the audited task
    samples: int  # N views of its fingerprint
    privacy: PrivacySpec
    trials: int = 1  # fingerprints audited, each with fresh members
    candidates: int = 200  # members (and as many non-members) scored per trial, at most
    shadows: int = 16  # shadow fingerprints per candidate, each IN and OUT
    attacker_views: int = 2  # the attacker's own views of each candidate
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("members", "samples", "trials", "candidates", "shadows", "attacker_views"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class AttackScores:
    """Scores of members and non-members per attack (higher = says member)."""

    members: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {a: [] for a in ATTACKS})
    non_members: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {a: [] for a in ATTACKS})


class _Release:
    """Fingerprints of image sets as the audited task's owner releases them."""

    def __init__(self, bank: ViewBank, space: FingerprintSpace, config: AuditConfig,
                 rng: np.random.Generator) -> None:
        self.bank, self.space, self.config, self.rng = bank, space, config, rng
        if config.privacy.plan == KEYED_PLAN:  # slots stand for units: content = slot number
            drawn = keyed_plan([i.to_bytes(8, "little") for i in range(config.members)],
                               config.samples, config.seed)
        else:
            drawn = sample_plan(config.members, config.samples, config.seed,
                                plan=config.privacy.plan)
        self.views_per_slot = np.bincount(drawn.image_index, minlength=config.members)

    def part(self, images: np.ndarray, slots: np.ndarray, attacker: bool = False, skip: int = 0
             ) -> PartialCounts:
        """Exact counts of these images' views, image ``images[i]`` in plan slot ``slots[i]``
        (the owner's views, or the attacker's own after the first ``skip``)."""
        def take(image: int, count: int) -> np.ndarray:
            if attacker:
                return self.bank.attacker_views(image, count, skip)
            return self.bank.fingerprint_views(image, count)

        views = [take(int(img), int(self.views_per_slot[slot]))
                 for img, slot in zip(images, slots) if self.views_per_slot[slot]]
        if not views:
            return PartialCounts.empty(self.space)
        return PartialCounts.from_features(np.concatenate(views), self.space,
                                           clip_sum=self.config.privacy.private)

    def release(self, exact: PartialCounts) -> tuple[np.ndarray, np.ndarray]:
        """(log P smoothed (D, B), mean (D,)) of the released fingerprint of these counts."""
        if self.config.privacy.private:
            spec = dataclasses.replace(self.config.privacy,
                                       seed=int(self.rng.integers(2**63)))
            exact = privatize(exact, self.space, n_images=self.config.members,
                              spec=spec).partial
        counts = exact.counts.astype(np.float64) + _SMOOTHING
        log_p = np.log(counts / counts.sum(axis=1, keepdims=True))
        return log_p, exact.feature_sum / exact.n


def _swap(total: PartialCounts, out: PartialCounts, into: PartialCounts) -> PartialCounts:
    """``total`` with one image's counts replaced by another's (the same number of views)."""
    return PartialCounts(total.space_id, total.counts - out.counts + into.counts,
                         total.feature_sum - out.feature_sum + into.feature_sum, total.n)


def run_audit(bank: ViewBank, space: FingerprintSpace, config: AuditConfig, *,
              progress: Callable[[str], None] | None = None) -> AttackScores:
    """Score members and non-members of ``trials`` audited fingerprints with every attack."""
    m = config.members
    if bank.n_images < 4 * m:
        raise ConfigError(f"the audit needs at least 4 x M = {4 * m} images (members, "
                          f"non-members, and twice M for the attacker's reference population); "
                          f"the bank holds {bank.n_images}")
    rng = np.random.default_rng(config.seed)
    scores = AttackScores()
    for trial in range(config.trials):
        order = rng.permutation(bank.n_images)
        members, rest = order[:m], order[m:]
        non_members = rest[: min(m, len(rest) // 2)]
        reference = rest[len(non_members):]
        _score_trial(bank, space, config, rng, members, non_members, reference, scores)
        if progress:
            progress(f"trial {trial + 1}/{config.trials} scored")
    return scores


def _score_trial(bank, space, config, rng, members, non_members, reference, scores) -> None:
    release = _Release(bank, space, config, rng)
    m = config.members
    slots = np.arange(m)
    log_p, mean = release.release(release.part(members, slots))
    # The attacker's population, in two disjoint halves: one for the reference statistics the
    # scores compare against, one for shadow fingerprints (a shadow built from the very views
    # of the reference would bias every shadow statistic and blind LiRA).
    half = len(reference) // 2
    reference, shadow_pool = reference[:half], reference[half:]
    population = bank.features[reference, bank.features.shape[1] // 2:].reshape(-1, space.dim)
    ref_counts = PartialCounts.from_features(population, space).counts + _SMOOTHING
    ref_log_p = np.log(ref_counts / ref_counts.sum(axis=1, keepdims=True))
    ref_clipped = clip_to_edges(population, space)
    ref_mean, ref_var = ref_clipped.mean(axis=0), ref_clipped.var(axis=0) + 1e-12

    picks = {"members": rng.permutation(members)[: config.candidates],
             "non_members": rng.permutation(non_members)[: config.candidates]}
    dims = np.arange(space.dim)
    # Shadow OUT sets drawn from the attacker's reference population; the IN set of a
    # candidate swaps it into one slot (chosen per shadow) with views the attacker made.
    shadows = []
    for _ in range(config.shadows):
        images = rng.choice(shadow_pool, size=m, replace=False)
        slot = int(rng.integers(m))
        total = release.part(images, slots, attacker=True)
        shadows.append((total, slot, release.part(images[slot:slot + 1], np.array([slot]),
                                                  attacker=True), release.release(total)[0]))

    def lrt(view_bins: np.ndarray, fingerprint_log_p: np.ndarray) -> float:
        return float((fingerprint_log_p[dims, view_bins] - ref_log_p[dims, view_bins]).sum())

    pending = []  # (group, target statistic, IN statistics, OUT statistics) for LiRA
    for group, images in picks.items():
        for image in images:
            views = bank.attacker_views(int(image), config.attacker_views)
            view_bins = bin_indices(views, space)
            x = clip_to_edges(views, space).mean(axis=0)
            target = lrt(view_bins, log_p)
            mean_score = float(((x - ref_mean) * (mean - ref_mean) / ref_var).sum())
            outs, ins = [], []
            for total, slot, replaced, out_log_p in shadows:
                outs.append(lrt(view_bins, out_log_p))
                # Views of the candidate other than the ones it is scored with, as the real
                # fingerprint holds the owner's views, not the attacker's.
                candidate = release.part(np.array([image]), np.array([slot]), attacker=True,
                                         skip=config.attacker_views)
                ins.append(lrt(view_bins, release.release(_swap(total, replaced, candidate))[0]))
            getattr(scores, group)["lrt"].append(target)
            getattr(scores, group)["mean"].append(mean_score)
            pending.append((group, target, np.asarray(ins), np.asarray(outs)))
    ins = np.stack([p[2] for p in pending])
    outs = np.stack([p[3] for p in pending])
    # One variance for all candidates: the spread of each candidate's shadows around its own
    # IN and OUT means (floored, so identical shadows cannot divide by zero).
    pooled = np.concatenate([(ins - ins.mean(1, keepdims=True)).ravel(),
                             (outs - outs.mean(1, keepdims=True)).ravel()])
    sigma = max(float(np.sqrt((pooled ** 2).mean())), 1e-9)
    for (group, target, cand_ins, cand_outs) in pending:
        mu_in, mu_out = float(cand_ins.mean()), float(cand_outs.mean())
        getattr(scores, group)["lira"].append(
            ((target - mu_out) ** 2 - (target - mu_in) ** 2) / (2 * sigma ** 2))
