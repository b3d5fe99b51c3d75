"""rayfp: task fingerprinting for medical imaging.

Importing rayfp sets GOMP_SPINCOUNT (rayfp.defaults.OMP_SPINCOUNT) unless it or OMP_WAIT_POLICY
is set: libgomp reads it once, when numba's parallel loops or torch load it, which is always
later in rayfp's own processes (the CLI, the Ray job, the Serve replicas)."""

import os as _os

from rayfp import defaults as _defaults

if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", str(_defaults.OMP_SPINCOUNT))

__version__ = "0.1.0"
