"""Small site-side files (view tables, task parts): numpy arrays plus a JSON header in one
.npz, written atomically (temporary file + rename) and read back with typed errors."""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rayfp.errors import ConfigError


def save_npz(path: str | os.PathLike, file_format: str, meta: dict[str, Any], *,
             exclusive: bool = False, **arrays: np.ndarray) -> Path:
    """Write atomically: a hidden temporary file of this writer (never matched by a reader's
    glob of the final names), then a rename. ``exclusive``: publish only if ``path`` does not
    exist yet (a hard link, atomic), else FileExistsError: of two writers one wins."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp.npz")
    try:
        np.savez_compressed(tmp, meta=json.dumps({**meta, "format": file_format}), **arrays)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_npz(path: str | os.PathLike, file_format: str, what: str
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a file written by save_npz; ConfigError naming ``what`` if it is not
    one, or cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {name: z[name] for name in z.files if name != "meta"}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: unreadable {what} ({exc})") from exc
    if meta.get("format") != file_format:
        raise ConfigError(f"{path}: not a rayfp {what} ({meta.get('format')})")
    return meta, arrays
