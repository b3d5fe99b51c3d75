"""The package's walls: which layer may import which, what each loads, and light commands that
stay light (no torch, no Ray)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_space, random_fingerprint

PACKAGE = Path(__file__).resolve().parents[1] / "rayfp"
SHARED = {"rayfp", "rayfp.errors", "rayfp.registry", "rayfp.defaults"}
# Layer -> the rayfp layers it may import (besides itself and SHARED). Reading down the list,
# each layer builds on the ones above it: the fingerprint model, the store, search, private
# releases, decoding, extraction (torch), the cluster (Ray Data), the evaluation, the cloud
# (Serve), and the CLI on top of everything.
ALLOWED = {
    "core": set(),
    "store": {"core"},
    "search": {"core"},
    "privacy": {"core", "store"},
    "io": {"core"},
    "extract": {"core", "store", "io", "privacy"},
    "cluster": {"core", "store", "io", "extract", "privacy"},
    "evaluate": set(),
    "cloud": {"core", "store", "search", "evaluate", "privacy"},
    "cli": {"core", "store", "search", "io", "extract", "cluster", "cloud", "evaluate", "privacy"},
}
# Third-party walls, checked on every import statement, function-level ones included.
FORBIDDEN = {
    "core": {"torch", "ray", "fastapi", "pydantic", "PIL", "pydicom", "deltalake", "pyarrow"},
    "store": {"torch", "ray", "fastapi", "pydantic", "PIL", "pydicom"},
    "search": {"ray", "fastapi", "pydantic", "PIL", "pydicom", "deltalake"},
    "io": {"torch", "torchvision", "ray", "fastapi"},
    "extract": {"ray", "fastapi"},
    "evaluate": {"torch", "ray", "fastapi"},
    "privacy": {"torch", "torchvision", "ray", "fastapi"},
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "rayfp" and parts[1] in ALLOWED else None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_the_layers_beneath_them(layer):
    folder = PACKAGE / layer
    assert folder.is_dir(), f"rayfp/{layer}/ is part of the layout"
    for path in sorted(folder.glob("*.py")):
        for module in imports_of(path):
            top = module.split(".")[0]
            assert top not in FORBIDDEN.get(layer, set()), f"{path} imports {module}"
            other = layer_of(module)
            if module.startswith("rayfp") and module not in SHARED and other != layer:
                assert other in ALLOWED[layer], f"{path} ({layer}) imports {module}"


def test_every_module_belongs_to_a_layer():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "defaults.py", "errors.py", "registry.py"]


def loaded_after(code: str) -> list[str]:
    """Heavy packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = (f"{code}\nimport sys, json\n"
             "print(json.dumps(sorted(m for m in ('torch', 'ray', 'fastapi', 'pandas', 'scipy') "
             "if m in sys.modules)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_io_and_cloud_knowledge_load_neither_torch_nor_ray():
    """Ray's decode workers stay small; the cloud's data layer needs no deep-learning stack."""
    code = ("import rayfp.store.store, rayfp.core.distance, rayfp.search.index, rayfp.cloud.wire, "
            "rayfp.store.tasks, rayfp.io.inventory, rayfp.io.work, rayfp.io.sources, "
            "rayfp.cloud.knowledge, rayfp.cloud.recommend, rayfp.cloud.client, "
            "rayfp.cluster.refingerprint")
    assert not {"torch", "ray"} & set(loaded_after(code))
    assert "ray" in loaded_after("import rayfp.cluster.pipeline")
    assert "torch" not in loaded_after("import rayfp.cluster.pipeline")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from rayfp.store.store import Store

    store = Store(tmp_path_factory.mktemp("light") / "store")
    space = make_space(dim=6, bins=5)
    store.put_space(space)
    import numpy as np

    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        store.put_fingerprint(random_fingerprint(rng, space, name))
    return store, space


def test_light_commands_load_neither_torch_nor_ray(small_store):
    store, space = small_store
    root = str(store.root)
    commands = {
        "--help": ["--help"],
        "show": ["show", "--store", root],
        "compare": ["compare", "--store", root, "--space", space.space_id],
        "nearest": ["nearest", "--store", root, "--task-id", "a"],
        "evaluate --help": ["evaluate", "--help"],
        "query": ["query", "--server", "http://127.0.0.1:9", "--task-id", "a"],
        "recommend": ["recommend", "--server", "http://127.0.0.1:9", "--task-id", "a",
                      "--fingerprint-from", root],
        "import-paper": ["import-paper", str(store.root / "no-such-data"), "--store", root],
    }
    for name, argv in commands.items():
        code = ("from rayfp.cli.main import main\ntry:\n    main(" + repr(argv) +
                ")\nexcept SystemExit:\n    pass")
        loaded = loaded_after(code)
        assert not {"torch", "ray"} & set(loaded), f"`rayfp {name}` loaded {loaded}"
    assert loaded_after("from rayfp.cli.main import main\ntry:\n    main(['--help'])\n"
                        "except SystemExit:\n    pass") == []
