"""Request/response models of the /v1 API (pydantic), and the typed app arguments.

Choices (metrics, component kinds, count dtypes, compressions) are generated from the registries,
so /docs lists the real ones and a wrong value is refused before any handler runs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from rayfp import defaults
from rayfp.core.distance import METRICS
from rayfp.core.kernels import AUTO, KERNELS
from rayfp.core.schemas import COMPONENT_KINDS
from rayfp.core.wire import COMPRESSIONS, COUNT_DTYPES

MetricName = Literal[tuple(METRICS.names())]  # type: ignore[valid-type]
ComponentKind = Literal[COMPONENT_KINDS]  # type: ignore[valid-type]
CountsDtype = Literal[tuple(COUNT_DTYPES)]  # type: ignore[valid-type]
Compression = Literal[COMPRESSIONS]  # type: ignore[valid-type]
KernelName = Literal[(AUTO, *KERNELS)]  # type: ignore[valid-type]


class AppArgs(BaseModel):
    """What `serve run serve/config.yaml` (or `rayfp serve`) passes to the app builder."""

    store: str = Field(description="Parquet store directory")
    token: str = Field("", description="bearer token for writes; empty refuses every write")
    default_k: int = Field(defaults.K, ge=1, le=100)
    default_metric: MetricName = defaults.METRIC
    min_images: int = Field(defaults.MIN_IMAGES, ge=1)
    threads: int = Field(2, ge=1, description="BLAS threads of the replica (Ray sets 1)")
    max_request_bytes: int = Field(defaults.MAX_REQUEST_BYTES, ge=1024,
                                   description="larger request bodies get 413")
    kernel: KernelName = Field(AUTO, description="index kernel: 'auto' measures each on this "
                                                 "CPU and keeps the fastest")
    hubness_queries: int = Field(256, ge=0, description="stored tasks ranked against the others "
                                                        "to flag hubs (in the background); 0 "
                                                        "turns hub flags off")
    shards: int = Field(1, ge=1, description="index shard deployments; 1: the ingress ranks "
                                             "itself (rayfp.cloud.sharded)")
    shard_cpus: float = Field(1.0, ge=0, description="CPUs reserved by each shard replica")
    max_epsilon: float | None = Field(defaults.MAX_EPSILON, gt=0,
                                      description="refuse fingerprints that are not "
                                                  "(ε <= this)-DP with 403; null accepts all "
                                                  "(a cloud of public data only)")


class FingerprintIn(BaseModel):
    space_id: str
    counts: list[float] | str = Field(description="D*B counts, dimension-major; JSON list or "
                                                  "base64 of little-endian counts_dtype")
    feature_sum: list[float] | str = Field(description="D sums; list or base64 little-endian f64")
    counts_dtype: CountsDtype = Field("u4", description="base64 counts: uint32, uint16 or uint8")
    compression: Compression = Field("none", description="of the base64 arrays")
    n: int = Field(description="samples (views) per dimension")
    n_images: int | None = Field(None, description="distinct images (default: n)")
    privacy: dict[str, Any] | None = Field(None, description="how the counts were released "
                                                             "(rayfp's privacy record)")


class ReplicatesIn(BaseModel):
    counts: list[float] | str = Field(description="R*D*B counts (replicate-major), list or "
                                                  "base64 of little-endian counts_dtype")
    feature_sum: list[float] | str = Field(description="R*D sums; list or base64 f64")
    counts_dtype: CountsDtype = "u4"
    compression: Compression = "none"
    n: list[int] = Field(description="samples of each replicate", min_length=1)
    privacy: dict[str, Any] = Field(description="how the replicates were made and released "
                                                "(resampling seed, noise, composed ε)")


class Query(BaseModel):
    task_id: str | None = Field(None, description="a known task (instead of a fingerprint)")
    fingerprint: FingerprintIn | None = None
    replicates: ReplicatesIn | None = Field(None, description="bootstrap replicates of the "
                                                              "fingerprint: the answer then "
                                                              "says how sure it is")
    space_id: str | None = Field(None, description="for a task with several fingerprints")
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
    task_id: str
    name: str | None = None
    modality: str | None = None
    keywords: list[str] | None = None
    task_type: str | None = None
    n_classes: int | None = None
    owner: str | None = None
    fingerprint: FingerprintIn


class ComponentIn(BaseModel):
    kind: ComponentKind
    value: str
    metric: str = ""
    score: float | None = None
    seed: int | None = None
    provenance: str = ""


class RecommendOut(BaseModel):
    metric: str
    k: int
    neighbours: list[Neighbour]
    confidence: ConfidenceOut | None = None
    recommendations: dict[str, list[dict[str, Any]]]
