from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from rayfp.errors import MissingWeightsError, UnknownNameError
from rayfp.extract.backbones import (
    MICRO_BATCH,
    FeatureExtractor,
    build_efficientnet_lite0_classifier,
    file_sha256,
    get_backbone_spec,
    list_backbones,
    normalize,
    resolve_weights,
)
from rayfp.extract.views import crop_views
from rayfp.io.canonical import canonicalize

ESPRESSO = 967
CATS = range(281, 286)


@pytest.fixture(scope="module")
def lite0() -> FeatureExtractor:
    return FeatureExtractor("efficientnet_lite0", threads=2)


def test_registry_lists_backbones_and_rejects_unknown_names():
    assert {"resnet34", "efficientnet_lite0"} <= set(list_backbones())
    with pytest.raises(UnknownNameError, match="resnet34"):
        get_backbone_spec("resnet-34")


def _centre_view(image: np.ndarray) -> torch.Tensor:
    canonical = torch.from_numpy(canonicalize(image.astype(np.float32) / 255.0))
    return crop_views(canonical, np.array([16]), np.array([16]), np.array([False]))


@pytest.mark.parametrize("image,classes", [(data.coffee, [ESPRESSO]), (data.chelsea, CATS)])
def test_real_lite0_weights_and_normalisation_classify_imagenet_pictures(image, classes):
    spec = get_backbone_spec("efficientnet_lite0")
    classifier = build_efficientnet_lite0_classifier(spec.locate_weights()).eval()
    with torch.inference_mode():
        probs = classifier(normalize(_centre_view(image()), spec.mean, spec.std)).softmax(-1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[list(classes)].sum()) > 0.5


def test_wrong_normalisation_is_measurably_worse():
    spec = get_backbone_spec("efficientnet_lite0")
    classifier = build_efficientnet_lite0_classifier(spec.locate_weights()).eval()
    view = _centre_view(data.coffee())
    with torch.inference_mode():
        right = classifier(normalize(view, spec.mean, spec.std)).softmax(-1)[0, ESPRESSO]
        wrong = classifier(view).softmax(-1)[0, ESPRESSO]  # no normalisation at all
    assert right > wrong + 0.1


def test_lite0_features_are_1280d_and_independent_of_batch_size(lite0, rng):
    views = torch.from_numpy(rng.random((MICRO_BATCH + 5, 3, 224, 224), dtype=np.float32))
    whole = lite0.extract(views)
    pieces = np.concatenate([lite0.extract(views[i:i + 3]) for i in range(0, len(views), 3)])
    assert whole.shape == (MICRO_BATCH + 5, 1280) and whole.dtype == np.float32
    assert np.array_equal(whole, pieces)
    out = lite0({"views": views[:2].numpy(), "task": np.array(["a", "b"])})
    assert out["features"].shape == (2, 1280) and out["task"].tolist() == ["a", "b"]


def test_resnet34_loads_a_checkpoint_file_and_records_its_sha(tmp_path):
    from torchvision.models import resnet34

    torch.manual_seed(3)
    checkpoint = tmp_path / "resnet34-test.pth"
    torch.save(resnet34(weights=None).state_dict(), checkpoint)
    extractor = FeatureExtractor("resnet34", weights=checkpoint, threads=2)
    assert extractor.weights_sha256 == file_sha256(checkpoint)
    features = extractor.extract(torch.rand(2, 3, 224, 224))
    assert features.shape == (2, 512) and (features >= 0).all()  # pooled after ReLU
    fc_free = [k for k in extractor.model.state_dict() if k.startswith("fc.")]
    assert fc_free == []  # classifier removed


def test_missing_weights_is_actionable_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="never downloads") as info:
        resolve_weights(get_backbone_spec("resnet34"))
    assert "resnet34-b627a593.pth" in str(info.value) and "--weights" in str(info.value)
    with pytest.raises(MissingWeightsError, match="nope.pth"):
        FeatureExtractor("resnet34", weights=tmp_path / "nope.pth")
    assert not (tmp_path / "hub").exists()


def test_random_weights_only_when_asked_and_tagged():
    extractor = FeatureExtractor("resnet34", random_weights=True, threads=2)
    assert extractor.weights_sha256.startswith("random")
    again = FeatureExtractor("resnet34", random_weights=True, threads=2)
    x = torch.rand(1, 3, 224, 224)
    assert np.array_equal(extractor.extract(x), again.extract(x))  # seeded init


def test_canonicalize_handles_grey_colour_tiny_and_elongated_images(rng):
    for shape in [(3, 3), (64, 64, 3), (50, 900), (1200, 80, 3)]:
        canonical = canonicalize(rng.random(shape, dtype=np.float32))
        assert canonical.shape == (3, 256, 256) and canonical.dtype == np.float32
        assert 0.0 <= float(canonical.min()) <= float(canonical.max()) <= 1.0
    grey = torch.from_numpy(canonicalize(np.full((10, 10), 0.5, np.float32)))
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    views = crop_views(grey, np.array([0, 32]), np.array([32, 0]), np.array([True, False]))
    assert tuple(views.shape) == (2, 3, 224, 224)
