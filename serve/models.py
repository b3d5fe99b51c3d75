"""Request/response models of the /v1 API (pydantic), and the typed app arguments."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from rayfp.distance import DEFAULT_METRIC
from rayfp.extract import DEFAULT_MIN_IMAGES
from rayfp.schemas import COMPONENT_KINDS


class AppArgs(BaseModel):
    """What `serve run serve/config.yaml` (or `rayfp serve`) passes to the app builder."""

    store: str = Field(description="Parquet store directory")
    token: str = Field("", description="bearer token for writes; empty refuses every write")
    default_k: int = Field(3, ge=1, le=100)
    default_metric: str = DEFAULT_METRIC
    min_images: int = Field(DEFAULT_MIN_IMAGES, ge=1)
    threads: int = Field(2, ge=1, description="BLAS threads of the replica (Ray sets 1)")


class FingerprintIn(BaseModel):
    space_id: str
    counts: list[float] | str = Field(description="D*B counts, dimension-major; JSON list or "
                                                  "base64 of little-endian counts_dtype")
    feature_sum: list[float] | str = Field(description="D sums; list or base64 little-endian f64")
    counts_dtype: str = Field("u4", description="base64 counts: 'u4' (uint32) or 'u2' (uint16)")
    compression: str = Field("none", description="base64 arrays: 'none' or 'zlib'")
    n: int = Field(description="samples (views) per dimension")
    n_images: int | None = Field(None, description="distinct images (default: n)")


class Query(BaseModel):
    task_id: str | None = Field(None, description="a known task (instead of a fingerprint)")
    fingerprint: FingerprintIn | None = None
    space_id: str | None = Field(None, description="for a task with several fingerprints")
    k: int | None = Field(None, ge=1, le=100)
    metric: str | None = None


class RecommendQuery(Query):
    kinds: list[str] = Field(default_factory=lambda: list(COMPONENT_KINDS))


class Neighbour(BaseModel):
    rank: int
    task_id: str
    distance: float
    basis: str


class NearestOut(BaseModel):
    metric: str
    k: int
    neighbours: list[Neighbour]


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
    kind: str
    value: str
    metric: str = ""
    score: float | None = None
    seed: int | None = None
    provenance: str = ""


class RecommendOut(BaseModel):
    metric: str
    k: int
    neighbours: list[Neighbour]
    recommendations: dict[str, list[dict[str, Any]]]
