"""Request/response models of the /v1 API (pydantic), and the typed app arguments.

Choices (metrics, component kinds, count dtypes, compressions) are generated from the registries,
so /docs lists the real ones and a wrong value is refused before any handler runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rayfp import defaults
from rayfp.cloud.wire import COMPRESSIONS, COUNT_DTYPES
from rayfp.core.distance import METRICS
from rayfp.search.kernels import AUTO, KERNELS
from rayfp.store.schemas import COMPONENT_KINDS

MetricName = Literal[tuple(METRICS.names())]  # type: ignore[valid-type]
ComponentKind = Literal[COMPONENT_KINDS]  # type: ignore[valid-type]
CountsDtype = Literal[tuple(COUNT_DTYPES)]  # type: ignore[valid-type]
Compression = Literal[COMPRESSIONS]  # type: ignore[valid-type]
KernelName = Literal[(AUTO, *KERNELS)]  # type: ignore[valid-type]


def _app_args() -> type[BaseModel]:
    """AppArgs from the one table of settings (rayfp/cloud/settings.py)."""
    from pydantic import create_model

    from rayfp.cloud.settings import REQUIRED, SETTINGS

    fields: dict[str, Any] = {}
    for s in SETTINGS:
        kind: Any = {"metric": MetricName, "kernel": KernelName}.get(s.choices or "", s.kind)
        if s.optional:
            kind = kind | None
        default = ... if s.default is REQUIRED else s.default
        fields[s.name] = (kind, Field(default, description=s.help, **s.bounds))
    return create_model("AppArgs", __doc__="What `serve run serve/config.yaml` (or `rayfp "
                        "serve`) passes to the app builder.", **fields)


AppArgs = _app_args()


# Ids anyone may send: bounded, printable (no control characters, no NUL), not blank.
TaskId = Annotated[str, Field(min_length=1, max_length=defaults.MAX_ID_LENGTH,
                              pattern=r"^[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$",
                              description="a task id: printable, 1-200 characters")]
SpaceId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                               description="a space id (`GET /v1/spaces`)")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Text = Annotated[str, Field(max_length=1000)]


class DPRecordIn(BaseModel):
    """The `dp` part of a privacy record, typed: a wrong type is a 422 at the door, so nothing
    the service cannot read is ever stored. Fields rayfp writes beyond these pass through."""

    model_config = ConfigDict(extra="allow")
    mechanism: Text
    epsilon: Positive
    delta: float = Field(gt=0, lt=1)
    plan: Text
    views_per_image_cap: int = Field(ge=1, le=defaults.MAX_SAMPLES)
    sigma_counts: Positive
    sigma_sum: Positive | None = None
    sensitivity_counts: Positive | None = None
    sensitivity_sum: Positive | None = None
    release_bins: int | None = Field(None, ge=2, le=100_000)
    mean: Text = "counts"
    count_share: float | None = Field(None, gt=0, le=1)
    sigma_part: Positive | None = None


class PrivacyIn(BaseModel):
    """A fingerprint's privacy record: ``dp`` null (exact counts) or the release's record."""

    model_config = ConfigDict(extra="allow")
    dp: DPRecordIn | None = None

    def record(self) -> dict[str, Any]:
        """As sent (fields not sent stay absent)."""
        return self.model_dump(exclude_unset=True)


class PlanIn(BaseModel):
    """What the sites of a pooled task agreed on (rayfp.core.parts.PartPlan), bounded."""

    task_id: TaskId
    image_counts: list[Annotated[int, Field(ge=1, le=defaults.MAX_IMAGES)]] = Field(
        min_length=1, max_length=defaults.MAX_PARTS)
    samples: int = Field(ge=1, le=defaults.MAX_SAMPLES)
    seed: int = Field(ge=0, le=2**53 - 1)  # JSON-safe integers
    plan: Literal["paper", "keyed", "balanced"]


class PartPrivacyIn(PrivacyIn):
    noise_share: Literal["full", "split"] | None = None


class PartIn(BaseModel):
    """One site's part of a pooled task (`rayfp fingerprint --part k/K`, TaskPart.to_record)."""

    space_id: SpaceId
    part: int = Field(ge=1, le=defaults.MAX_PARTS)
    plan: PlanIn
    counts: list[Finite]
    shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(min_length=2, max_length=2)
    n_views: int = Field(ge=0, le=defaults.MAX_SAMPLES)
    feature_sum: list[Finite]
    privacy: PartPrivacyIn

    def record(self) -> dict[str, Any]:
        return {**self.model_dump(exclude={"privacy"}), "privacy": self.privacy.record()}


class FingerprintIn(BaseModel):
    space_id: SpaceId
    counts: list[float] | str = Field(description="D*B counts, dimension-major; JSON list or "
                                                  "base64 of little-endian counts_dtype")
    feature_sum: list[float] | str = Field(description="D sums; list or base64 little-endian f64")
    counts_dtype: CountsDtype = Field("u4", description="base64 counts: uint32, uint16 or uint8")
    compression: Compression = Field("none", description="of the base64 arrays")
    n: int = Field(ge=1, le=defaults.MAX_SAMPLES, description="samples (views) per dimension")
    n_images: int | None = Field(None, ge=1, le=defaults.MAX_IMAGES,
                                 description="distinct images (default: n)")
    privacy: PrivacyIn | None = Field(None, description="how the counts were released "
                                                        "(rayfp's privacy record)")


class ReplicatesIn(BaseModel):
    counts: list[float] | str = Field(description="R*D*B counts (replicate-major), list or "
                                                  "base64 of little-endian counts_dtype")
    feature_sum: list[float] | str = Field(description="R*D sums; list or base64 f64")
    counts_dtype: CountsDtype = "u4"
    compression: Compression = "none"
    n: list[Annotated[int, Field(ge=1, le=defaults.MAX_SAMPLES)]] = Field(
        description="samples of each replicate", min_length=1, max_length=256)
    privacy: dict[str, Any] = Field(description="how the replicates were made and released "
                                                "(resampling seed, noise, composed ε)")


class Query(BaseModel):
    task_id: TaskId | None = Field(None, description="a known task (instead of a fingerprint)")
    fingerprint: FingerprintIn | None = None
    replicates: ReplicatesIn | None = Field(None, description="bootstrap replicates of the "
                                                              "fingerprint: the answer then "
                                                              "says how sure it is")
    space_id: SpaceId | None = Field(None, description="for a task with several fingerprints")
    k: int | None = Field(None, ge=1, le=100)
    metric: MetricName | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Query:
        if (self.fingerprint is None) == (self.task_id is None):
            raise ValueError("give exactly one of 'fingerprint' and 'task_id'")
        if self.replicates is not None and self.fingerprint is None:
            raise ValueError("'replicates' go with a 'fingerprint'")
        return self


class RecommendQuery(Query):
    kinds: list[ComponentKind] = Field(default_factory=lambda: list(COMPONENT_KINDS),
                                       min_length=1)
    rank: Literal["learned", "distance"] = Field(
        "learned", description="learned: by what worked on other targets, blended with the "
                               "distance (docs/learned.md); distance: nearest first")


class Neighbour(BaseModel):
    rank: int
    task_id: str
    distance: float
    basis: str
    epsilon: float | None = Field(None, description="the neighbour's fingerprint's DP ε; "
                                                    "null: exact counts (public data)")
    k_occurrence: float | None = Field(None, description="in how many stored tasks' top-k this "
                                                         "task is (its mean over tasks is k)")
    hub: bool = Field(False, description="near to at least twice its share of tasks: its "
                                         "nearness says little about this query")
    top1_rate: float | None = Field(None, description="share of the query's replicates whose "
                                                      "nearest task this is")
    topk_rate: float | None = Field(None, description="share of replicates whose k nearest "
                                                      "include it")
    distance_lo: float | None = Field(None, description="2.5 % quantile of its distance to "
                                                        "the replicates")
    distance_hi: float | None = Field(None, description="97.5 % quantile")


class ConfidenceOut(BaseModel):
    replicates: int
    stability: float = Field(description="top-1 rate of the answer's top-1")
    label: Literal["confident", "moderate", "unsure"]
    unsure: bool
    epsilon_total: float | None = Field(description="ε of the query and its replicates "
                                                    "together (null: exact counts)")
    certified: bool = Field(description="every replicate was ranked against every source "
                                        "(false: among the query's nearest candidates)")


class NearestOut(BaseModel):
    metric: str
    k: int
    neighbours: list[Neighbour]
    confidence: ConfidenceOut | None = None


class TaskIn(BaseModel):
    task_id: TaskId
    name: Text | None = None
    modality: Annotated[str, Field(max_length=100)] | None = None
    keywords: list[Annotated[str, Field(max_length=100)]] | None = Field(None, max_length=100)
    task_type: Annotated[str, Field(max_length=100)] | None = None
    n_classes: int | None = Field(None, ge=1, le=1_000_000)
    owner: Text | None = None
    fingerprint: FingerprintIn


class ComponentIn(BaseModel):
    kind: ComponentKind
    value: Text = Field(min_length=1)
    metric: Annotated[str, Field(max_length=100)] = ""
    score: Finite | None = None
    seed: int | None = Field(None, ge=0, le=2**53 - 1)
    provenance: Text = ""


UnitScore = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
MAX_SEEDS = 100


class OutcomeIn(BaseModel):
    """What a site measured: its task trained with knowledge from a source, against the same
    training without it, per seed. Higher is better (AUROC, balanced accuracy, ...)."""

    model_config = ConfigDict(extra="forbid")
    scenario: ComponentKind = Field(description="what was transferred")
    source: TaskId = Field(description="the source task (a known task id)")
    metric: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="e.g. AUROC or BA")
    baseline: list[UnitScore] = Field(min_length=1, max_length=MAX_SEEDS,
                                      description="the no-transfer score of every seed")
    score: list[UnitScore] = Field(min_length=1, max_length=MAX_SEEDS,
                                   description="the transferred score of every seed")
    seeds: list[Annotated[int, Field(ge=0, le=2**31)]] | None = Field(
        None, description="the seeds' ids (default 0, 1, ...)")

    @model_validator(mode="after")
    def _every_seed_has_a_baseline(self) -> OutcomeIn:
        if len(self.baseline) != len(self.score):
            raise ValueError(f"baseline has {len(self.baseline)} seeds, score "
                             f"{len(self.score)}: give a baseline for every seed")
        if self.seeds is not None and (len(self.seeds) != len(self.score)
                                       or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds must name every seed once, as many as the scores")
        return self


class RecommendOut(BaseModel):
    metric: str
    k: int
    neighbours: list[Neighbour]
    confidence: ConfidenceOut | None = None
    recommendations: dict[str, list[dict[str, Any]]]
