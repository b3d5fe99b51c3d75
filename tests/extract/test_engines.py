"""The CPU engine a space records: ONNX Runtime's features stay within the stated tolerance of
eager torch's on real images, are identical whatever the threads or batch split, and a space
decides which engine computes its features (an older space without the key stays torch)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_space
from skimage import data

from rayfp.errors import ConfigError
from rayfp.extract.api import extractor_for_space, space_from_features, space_preprocessing
from rayfp.extract.backbones import MICRO_BATCH, FeatureExtractor, engine_of
from rayfp.extract.views import crop_views
from rayfp.io.canonical import canonicalize

# Stated tolerance (docs/fingerprint.md "Engines"): features within 1e-5 of the largest
# feature. Measured 1.4e-6 (BENCHMARKS.md "CPU extraction engines").
TOLERANCE = 1e-5


def real_views() -> torch.Tensor:
    """Views of real pictures from scikit-image: retina, histology, coffee, a cat."""
    views = []
    for image in (data.retina(), data.immunohistochemistry(), data.coffee(), data.chelsea()):
        canonical = torch.from_numpy(canonicalize(image.astype(np.float32) / 255.0))
        offsets = np.array([0, 8, 16, 24, 32])
        views.append(crop_views(canonical, offsets, offsets[::-1].copy(),
                                np.array([False, True, False, True, False])))
    return torch.cat(views)


@pytest.fixture(scope="module")
def engines():
    return {name: FeatureExtractor("efficientnet_lite0", threads=2, engine=name)
            for name in ("torch", "onnxruntime")}


def test_onnxruntime_features_are_within_the_tolerance_of_torch_on_real_images(engines):
    views = real_views()
    eager = engines["torch"].extract(views)
    onnx = engines["onnxruntime"].extract(views)
    assert onnx.shape == eager.shape == (len(views), 1280)
    relative = np.abs(onnx - eager).max() / np.abs(eager).max()
    assert relative < TOLERANCE
    assert not np.array_equal(onnx, eager)  # a different engine indeed (not torch again)


def test_onnxruntime_features_do_not_depend_on_threads_or_batch_split(engines):
    views = torch.from_numpy(np.random.default_rng(1).random((MICRO_BATCH + 5, 3, 224, 224),
                                                             dtype=np.float32))
    whole = engines["onnxruntime"].extract(views)
    pieces = np.concatenate([engines["onnxruntime"].extract(views[i:i + 7])
                             for i in range(0, len(views), 7)])
    one_thread = FeatureExtractor("efficientnet_lite0", threads=1, engine="onnxruntime")
    assert np.array_equal(whole, pieces)
    assert np.array_equal(whole, one_thread.extract(views))


def test_a_space_decides_its_engine_and_older_spaces_stay_torch():
    features = np.random.default_rng(0).random((64, 1280), dtype=np.float32)
    new = space_from_features(features, backbone="efficientnet_lite0", weights_sha256="x",
                              bins=10, reference=["a"])
    assert new.preprocessing["engine"] == "onnxruntime" == engine_of(new.preprocessing)
    older = dataclasses.replace(new, preprocessing={k: v for k, v in new.preprocessing.items()
                                                    if k != "engine"})
    assert engine_of(older.preprocessing) == "torch"
    assert older.space_id != new.space_id  # the engine is part of what a space is
    legacy = make_space()  # made before engines: its id does not move
    assert "engine" not in legacy.preprocessing and engine_of(legacy.preprocessing) == "torch"
    lite0 = FeatureExtractor("efficientnet_lite0").weights_sha256
    for engine in ("torch", "onnxruntime"):
        space = dataclasses.replace(new, weights_sha256=lite0,
                                    preprocessing=space_preprocessing("efficientnet_lite0",
                                                                      engine))
        assert extractor_for_space(space, threads=1).engine == engine
    with pytest.raises(ConfigError, match="tensorrt"):
        engine_of({"engine": "tensorrt"})
