"""The paper's selection-evaluation protocol (docs/evaluation.md §3-§6), exactly: targets, valid
sources, target variant, affinity, top-k, seed strategies and the meta metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from rayfp.errors import ConfigError, UnknownNameError
from rayfp.evaluate.data import OUTCOME_METRICS, SCENARIOS, SETTINGS, PaperData
from rayfp.evaluate.metrics import (  # noqa: F401 - the protocol's meta metrics
    percentile_ranks,
    regret_score,
    top_meta_scores,
    weighted_tau,
)
from rayfp.evaluate.names import (  # noqa: F401 - re-exported for the protocol's users
    META_METRICS,
    MODES,
    SEED_STRATEGIES,
    TOP_META_METRICS,
)

N_SEEDS = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    setting: str = "development"
    ks: tuple[int, ...] = (1, 2, 3, 4, 5)
    mode: str = "best"
    seeds: str = "per-seed"
    scenarios: tuple[str, ...] = SCENARIOS
    metrics: tuple[str, ...] = OUTCOME_METRICS

    def __post_init__(self) -> None:
        for value, valid, what in ((self.setting, SETTINGS, "setting"), (self.mode, MODES, "mode"),
                                   (self.seeds, SEED_STRATEGIES, "seed strategy")):
            if value not in valid:
                raise UnknownNameError(what, value, valid)
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise UnknownNameError("scenario", s, SCENARIOS)
        for m in self.metrics:
            if m not in OUTCOME_METRICS:
                raise UnknownNameError("outcome metric", m, OUTCOME_METRICS)
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"k must be >= 1, got {self.ks}")


class Protocol:
    """Task lists and rules of one data folder and setting."""

    def __init__(self, data: PaperData, setting: str) -> None:
        if setting not in SETTINGS:
            raise UnknownNameError("setting", setting, SETTINGS)
        self.data, self.setting = data, setting
        self.splits = data.splits

    @property
    def validation(self) -> bool:
        return self.setting == "validation"

    def targets(self) -> list[str]:
        """43 validation tasks, or the development tasks with fewer than 40 classes (23)."""
        if self.validation:
            return list(self.splits.validation)
        classes = self.data.task_infos["num_classes"]
        return [t for t in self.splits.development if classes[t] < 40]

    def valid_sources(self, target: str) -> list[str]:
        """Candidates (development tasks for a development target, all 71 otherwise) minus the
        target's image-sharing group and the target itself (docs/evaluation.md §3)."""
        if target in self.splits.development:
            candidates = list(self.splits.development)
        else:
            candidates = [*self.splits.development, *self.splits.validation]
        excluded = {target}
        for group in self.splits.groups.values():
            if target in group:
                excluded.update(group)
        return [c for c in candidates if c not in excluded]

    def target_ref(self, target: str, columns: Sequence[str] | None = None) -> str:
        """The distance column: the shrunk variant for shrinkable tasks. A matrix without that
        column (e.g. from `rayfp compare`) falls back to the full task."""
        ref = target if target in self.splits.non_shrinkable else target + self.splits.shrink_tag
        if columns is not None and ref not in columns and target in columns:
            return target
        return ref

    def baseline_is_shrunk(self, target: str) -> bool:
        return target not in self.splits.non_shrinkable


def affinity(distances: pd.DataFrame) -> pd.DataFrame:
    """inf and exact zeros -> NaN, z-score over the whole matrix (ddof 0), negated."""
    values = distances.to_numpy(dtype=float, copy=True)
    values[~np.isfinite(values)] = np.nan
    values[values == 0] = np.nan
    mean, std = np.nanmean(values), np.nanstd(values)
    return pd.DataFrame(-(values - mean) / std, index=distances.index, columns=distances.columns)


def select_top_k(affinities: pd.Series, k: int) -> list[str]:
    """nlargest(k, keep='all') over non-NaN affinities, stable; a tie at the k-th place raises
    (as the paper's code does; it never happens with the released matrices)."""
    ordered = affinities.dropna().sort_values(ascending=False, kind="stable")
    if len(ordered) > k and ordered.iloc[k - 1] == ordered.iloc[k]:
        raise ConfigError(f"tie at the {k}-th place for target {affinities.name!r}: "
                          f"{list(ordered.index[k - 1:k + 1])}")
    return list(ordered.index[:k])


# --- the evaluation loop -------------------------------------------------------------------------


def _outcome_tables(proto: Protocol, scenario: str, metric: str, strategy: str
                    ) -> list[tuple[str, pd.DataFrame, dict[str, float]]]:
    """(seed label, outcome matrix P[source, target], baseline per target) per seed or mean."""
    data, validation = proto.data, proto.validation
    rows = data.outcomes(scenario, metric, validation)
    shrunk_b = data.baselines(metric, True, validation)
    full_b = data.baselines(metric, False, validation)

    def baseline_of(table_row) -> dict[str, float]:
        out = {}
        for t in proto.targets():
            source = shrunk_b if proto.baseline_is_shrunk(t) else full_b
            out[t] = float(table_row(source)[t])
        return out

    if strategy == "mean":
        matrix = rows.groupby(["s", "t"])["p"].mean().unstack("t")
        return [("mean", matrix, baseline_of(lambda b: b.mean(axis=0)))]
    tables = []
    for seed in range(N_SEEDS):
        matrix = rows[rows["r"] == seed].set_index(["s", "t"])["p"].unstack("t")
        tables.append((str(seed), matrix, baseline_of(lambda b, s=seed: b.iloc[s])))
    return tables


def evaluate(data: PaperData, selectors: Mapping[str, pd.DataFrame | Mapping[str, pd.DataFrame]],
             config: EvalConfig) -> pd.DataFrame:
    """Long-form scores: one row per (scenario, metric, selector, k, seed, target, meta metric).
    A selector is a distance matrix, or one per scenario (the learned selectors). weightedtau
    does not depend on k or mode and is reported with k = 0."""
    proto = Protocol(data, config.setting)
    targets = proto.targets()
    sources = {t: proto.valid_sources(t) for t in targets}
    affinities: dict[str, dict[str, pd.DataFrame]] = {}
    for name, matrix in selectors.items():
        if isinstance(matrix, pd.DataFrame):
            shared = affinity(matrix)
            affinities[name] = {scenario: shared for scenario in config.scenarios}
        else:
            affinities[name] = {scenario: affinity(matrix[scenario])
                                for scenario in config.scenarios}
    selections: dict[tuple[str, str, str, int], list[str]] = {}
    refs: dict[tuple[str, str], str] = {}
    for name, per_scenario in affinities.items():
        for scenario, aff in per_scenario.items():
            for t in targets:
                ref = proto.target_ref(t, aff.columns)
                if ref not in aff.columns:
                    raise ConfigError(f"selector {name!r} has no column for target {t!r} "
                                      f"({ref!r})")
                refs[name, t] = ref
                column = aff.reindex(sources[t])[ref]
                column.name = t
                for k in config.ks:
                    selections[name, scenario, t, k] = select_top_k(column, k)
    records = []
    for common, sources_t, pool, baseline in target_pools(proto, config):
        t, scenario = common["target"], common["scenario"]
        by_source = dict(zip(sources_t, pool))
        for name, per_scenario in affinities.items():
            aff = per_scenario[scenario]
            tau = weighted_tau(aff.reindex(sources_t)[refs[name, t]].to_numpy(), pool)
            records.append({**common, "selector": name, "k": 0, "meta_metric": "weightedtau",
                            "score": tau})
            for k in config.ks:
                chosen = np.array([by_source[s] for s in selections[name, scenario, t, k]])
                scores = top_meta_scores(chosen, pool, baseline, config.mode)
                records += [{**common, "selector": name, "k": k, "meta_metric": m,
                             "score": v} for m, v in scores.items()]
    return pd.DataFrame.from_records(records)


def target_pools(proto: Protocol, config: EvalConfig):
    """Per (scenario, metric, seed, target): the row keys, the valid sources, their outcomes
    (the pool) and the target's no-transfer baseline."""
    targets = proto.targets()
    sources = {t: proto.valid_sources(t) for t in targets}
    for scenario in config.scenarios:
        for metric in config.metrics:
            for seed, matrix, baselines in _outcome_tables(proto, scenario, metric,
                                                           config.seeds):
                for t in targets:
                    pool = matrix[t].reindex(sources[t]).to_numpy(dtype=float)
                    common = dict(setting=config.setting, scenario=scenario, metric=metric,
                                  mode=config.mode, seeds=config.seeds, seed=seed, target=t)
                    yield common, sources[t], pool, baselines[t]


def evaluate_random(data: PaperData, config: EvalConfig, *, tau_draws: int = 32,
                    seed: int = 0) -> pd.DataFrame:
    """The random selector's rows, in evaluate()'s long form plus `mc_se`: exact expectations
    of the top-k meta metrics (mc_se 0) and a Monte Carlo weightedtau (its standard error)."""
    from rayfp.evaluate.random_baseline import (
        RANDOM_SELECTOR,
        expected_top_scores,
        expected_weighted_tau,
    )

    proto = Protocol(data, config.setting)
    rng = np.random.default_rng(seed)
    records = []
    for common, _, pool, baseline in target_pools(proto, config):
        row = {**common, "selector": RANDOM_SELECTOR}
        tau, se = expected_weighted_tau(pool, tau_draws, rng)
        records.append({**row, "k": 0, "meta_metric": "weightedtau", "score": tau, "mc_se": se})
        for k in config.ks:
            expected = expected_top_scores(pool, baseline, k, config.mode)
            records += [{**row, "k": k, "meta_metric": m, "score": v, "mc_se": 0.0}
                        for m, v in expected.items()]
    return pd.DataFrame.from_records(records)
