"""Small site-side files (view tables, task parts): numpy arrays plus a JSON header in one
.npz, written atomically (temporary file + rename) and read back with typed errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rayfp.errors import ConfigError


def save_npz(path: str | os.PathLike, file_format: str, meta: dict[str, Any],
             **arrays: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=json.dumps({**meta, "format": file_format}), **arrays)
    os.replace(tmp, path)
    return path


def load_npz(path: str | os.PathLike, file_format: str, what: str
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a file written by save_npz; ConfigError naming ``what`` if it is not
    one, or cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {name: z[name] for name in z.files if name != "meta"}
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable {what} ({exc})") from exc
    if meta.get("format") != file_format:
        raise ConfigError(f"{path}: not a rayfp {what} ({meta.get('format')})")
    return meta, arrays
