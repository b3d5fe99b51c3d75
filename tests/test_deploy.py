"""cluster.yaml validates against Ray's own cluster-launcher schema; deploy manifests parse."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    assert any("pip install -e" in c for c in config["setup_commands"])


def test_deploy_manifests_name_the_refingerprint_job():
    rayjob = yaml.safe_load((REPO / "deploy" / "refingerprint-rayjob.yaml").read_text())
    assert rayjob["kind"] == "RayJob" and "jobs/refingerprint.py" in rayjob["spec"]["entrypoint"]
    cron = yaml.safe_load((REPO / "deploy" / "refingerprint-cronjob.yaml").read_text())
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert "jobs/refingerprint.py" in (REPO / "deploy" / "README.md").read_text()


def test_serve_config_is_valid_and_its_args_build_the_app():
    from ray.serve.schema import ServeDeploySchema

    from rayfp.cloud.models import AppArgs

    config = ServeDeploySchema.model_validate(
        yaml.safe_load((REPO / "serve" / "config.yaml").read_text()))
    app = config.applications[0]
    assert app.import_path == "rayfp.cloud.app:build_app"
    assert AppArgs(**app.args).default_metric == "bkld-small"  # the builder's typed arguments


def test_rayfp_serve_finds_the_app_from_any_working_directory(tmp_path):
    """A console script has no checkout on sys.path; `rayfp serve` must still import serve/."""
    import subprocess
    import sys

    probe = ("import sys; from rayfp.cli.cloud import serve_app_module; "
             "app = serve_app_module(); print(app.build_app.__module__, app.SERVE_ENVIRONMENT)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rayfp.cloud.app {'RAY_SERVE_PROXY_USE_GRPC': '1'}")
