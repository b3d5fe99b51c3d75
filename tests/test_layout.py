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
# (Serve), the catalog of the paper's tasks (seeds a store through the cluster), and the CLI on
# top of everything.
ALLOWED = {
    "core": set(),
    "store": {"core"},
    "search": {"core"},
    "privacy": {"core", "store"},
    "io": {"core"},
    "extract": {"core", "store", "io", "privacy"},
    "cluster": {"core", "store", "io", "extract", "privacy"},
    "evaluate": set(),
    "pictures": {"core"},
    "cloud": {"core", "store", "search", "evaluate", "privacy", "pictures"},
    "catalog": {"core", "store", "io", "extract", "cluster", "cloud", "evaluate", "privacy"},
    "cli": {"core", "store", "search", "io", "extract", "cluster", "cloud", "evaluate", "privacy",
            "catalog", "pictures"},
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
    "catalog": {"torch", "torchvision", "fastapi"},
    "pictures": {"torch", "ray", "fastapi"},
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


def base_install() -> set[str]:
    """The distributions `pip install rayfp` brings: its base requirements and all they require
    (no extras), as installed here."""
    import re
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requires("rayfp") or []]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        if norm(req.name) in seen:
            continue
        seen.add(norm(req.name))
        try:
            wanted = [""] + sorted(req.extras)
            for line in requires(req.name) or []:
                todo += [(Requirement(line), e) for e in wanted]
        except PackageNotFoundError:
            continue
    return seen


def test_light_commands_need_only_the_base_install(small_store, tmp_path):
    """The light client (`pip install rayfp`, no extras) runs show, compare, nearest, evaluate,
    import-paper, catalog check and the query/recommend/register path. Simulated here by refusing, in a fresh
    interpreter, every installed module that no base requirement brings (torch, Ray, numba,
    matplotlib, pydicom, ...): optional imports fall back exactly as in a light install."""
    import re
    from importlib.metadata import packages_distributions

    store, space = small_store
    root = str(store.root)
    allowed = base_install() | {"rayfp"}
    blocked = sorted(module for module, dists in packages_distributions().items()
                     if not {re.sub(r"[-_.]+", "-", d).lower() for d in dists} & allowed
                     and module not in sys.stdlib_module_names)
    assert {"torch", "ray", "numba", "matplotlib", "pydicom"} <= set(blocked)
    runs = [["show", "--store", root], ["compare", "--store", root, "--space", space.space_id],
            ["nearest", "--store", root, "--task-id", "a"],
            ["evaluate", "-k", "1", "--scenarios", "arch", "--bootstrap", "20",
             "--permutations", "20", "--tau-draws", "20"],
            ["import-paper", "--store", str(tmp_path / "paper")],
            ["catalog", "check", str(tmp_path), "--labels-only"]]
    code = ("import contextlib, io, json, sys\nSTART = set(sys.modules)  # site's .pth hooks\n"
            f"BLOCKED = set({blocked!r})\n"
            "class Refuse:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in BLOCKED:\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Refuse())\n"
            "from rayfp.cli.main import main\n"
            "import rayfp.cli.cloud, rayfp.cloud.client, rayfp.cloud.wire, rayfp.cloud.recommend\n"
            "import rayfp.privacy.mechanism, rayfp.privacy.replicates, rayfp.privacy.ledger\n"
            f"for argv in {runs!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        assert main(argv) == 0, argv\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - START})))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & set(blocked)
    assert {"numpy", "pandas", "pyarrow", "deltalake", "scipy"} <= loaded  # it did the work
    from rayfp.store.store import Store

    assert Store(tmp_path / "paper").read_table("tasks").num_rows == 71


def test_a_missing_extra_is_named():
    from rayfp.errors import MissingExtraError

    missing = MissingExtraError.of(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert "rayfp[site]" in str(missing) and "pip install 'rayfp[site]'" in str(missing)
    assert "rayfp[cloud]" in str(MissingExtraError.of(ModuleNotFoundError(name="fastapi.x")))
    assert MissingExtraError.of(ModuleNotFoundError(name="no_such_thing")) is None


def test_no_table_name_or_storage_column_leaves_the_store():
    """Outside rayfp/store, tables are read and written through the store's named methods
    (tasks(), put_components(), ...): no table name, no storage column, no generic upsert."""
    import re

    leak = re.compile(r"""read_table\(["']|\.upsert\(|schema_version|table_signature\(""")
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "store":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert not leak.search(line), f"{path}:{number}: {line.strip()}"
