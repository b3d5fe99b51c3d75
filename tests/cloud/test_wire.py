"""The wire form of a fingerprint (rayfp.cloud.wire): round trips, validation, bombs."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest
from conftest import make_space, random_fingerprint

from rayfp.cloud import wire as wire_module
from rayfp.cloud.wire import decode_fingerprint, encode_fingerprint
from rayfp.core.fingerprint import Fingerprint
from rayfp.errors import ConfigError


def test_payload_validation_names_each_problem(rng):
    space = make_space(dim=3, bins=4)
    fp = random_fingerprint(rng, space, "q", n=20)
    good = dict(counts=fp.counts.ravel().tolist(), feature_sum=fp.feature_sum.tolist(), n=20)
    assert np.array_equal(decode_fingerprint(space, task_id="q", **good).counts, fp.counts)
    b64 = dict(counts=base64.b64encode(fp.counts.astype("<u4").tobytes()).decode(),
               feature_sum=base64.b64encode(fp.feature_sum.astype("<f8").tobytes()).decode(), n=20)
    assert np.array_equal(decode_fingerprint(space, task_id="q", **b64).counts, fp.counts)
    bad_cases = {
        "expected 3 x 4 = 12": {**good, "counts": good["counts"][:-1]},
        "non-negative finite integers": {**good, "counts": [-1.0] + good["counts"][1:]},
        "feature_sum: expected finite": {**good, "feature_sum": [float("nan")] * 3},
        "must hold n = 21": {**good, "n": 21},
        "not valid base64": {**good, "counts": "%%%"},
    }
    for message, payload in bad_cases.items():
        with pytest.raises(ConfigError, match=message):
            decode_fingerprint(space, task_id="q", **payload)


def use_the_standard_library(monkeypatch) -> None:
    """wire as on a light client: the standard library's base64 and zlib."""
    monkeypatch.setattr(wire_module, "b64decode", base64.b64decode)
    monkeypatch.setattr(wire_module, "b64encode", base64.b64encode)
    monkeypatch.setattr(wire_module, "zlib", zlib)


@pytest.fixture(params=["cloud", "light client"])
def libraries(request, monkeypatch):
    """The cloud decodes with pybase64 and zlib-ng, a light client with the standard library:
    both must give the same answers and refuse the same bombs."""
    if request.param == "light client":
        use_the_standard_library(monkeypatch)
    else:
        assert wire_module.zlib is not zlib and wire_module.b64decode is not base64.b64decode
    return request.param


def test_wire_format_round_trips_and_refuses_bombs(rng, libraries):
    space = make_space(dim=3, bins=4)
    small = random_fingerprint(rng, space, "q", n=20)
    def scaled(factor):
        return Fingerprint(task_id="h", space_id=space.space_id, counts=small.counts * factor,
                           feature_sum=small.feature_sum, n_samples=20 * factor, n_images=50)
    for fp, dtype in ((small, "u1"), (scaled(100), "u2"), (scaled(10_000), "u4")):
        for compression in ("zlib", "none"):
            wire = encode_fingerprint(fp, compression=compression)
            assert (wire["counts_dtype"], wire["compression"]) == (dtype, compression)
            back = decode_fingerprint(space, task_id="q", **{k: v for k, v in wire.items()
                                                                   if k != "space_id"})
            assert np.array_equal(back.counts, fp.counts)
            assert np.array_equal(back.feature_sum, fp.feature_sum)
    wire = {k: v for k, v in encode_fingerprint(small).items() if k != "space_id"}
    zeros = base64.b64encode(zlib.compress(bytes(10**7))).decode()  # 10 MB from ~10 KB
    truncated = base64.b64encode(zlib.compress(bytes(24))[:-3]).decode()
    bad_cases = {
        "does not hold exactly 12 uint8": {**wire, "counts": zeros},
        "counts: not a valid zlib stream|does not hold exactly": {**wire, "counts": truncated},
        "unknown compression 'gzip'; expected one of": {**wire, "compression": "gzip"},
        "unknown counts_dtype 'u8'; expected one of": {**wire, "counts_dtype": "u8"},
        "not a whole number of uint16": {**wire, "compression": "none", "counts_dtype": "u2",
                                         "counts": base64.b64encode(b"abc").decode()},
        "counts: not valid base64": {**wire, "counts": wire["counts"][:-4] + "*==="},
    }
    for message, payload in bad_cases.items():
        with pytest.raises(ConfigError, match=message):
            decode_fingerprint(space, task_id="q", **payload)


def test_a_light_clients_stream_decodes_on_the_cloud_and_back(rng, monkeypatch):
    """A light client compresses with the standard library's zlib, the cloud inflates with
    zlib-ng (and the other way round): the same zlib streams."""
    space = make_space(dim=6, bins=50)
    fp = random_fingerprint(rng, space, "q", n=5000)
    fast = encode_fingerprint(fp)
    use_the_standard_library(monkeypatch)
    light = encode_fingerprint(fp)
    back_light = decode_fingerprint(space, task_id="q", **{k: v for k, v in fast.items()
                                                            if k != "space_id"})
    monkeypatch.undo()
    back_cloud = decode_fingerprint(space, task_id="q", **{k: v for k, v in light.items()
                                                            if k != "space_id"})
    for back in (back_light, back_cloud):
        assert np.array_equal(back.counts, fp.counts)
        assert np.array_equal(back.feature_sum, fp.feature_sum)
