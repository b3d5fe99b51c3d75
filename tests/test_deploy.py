"""cluster.yaml validates against Ray's own cluster-launcher schema; deploy manifests parse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from rayfp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    assert any("pip install -e" in c for c in config["setup_commands"])


def test_every_way_of_starting_ray_gives_the_replicas_their_environment():
    """What `rayfp serve` sets for the replicas (rayfp.cloud.app.REPLICA_ENVIRONMENT) must also
    reach a cluster's `ray start` and the Kubernetes pods, or they run the slower defaults."""
    from rayfp.cloud.app import REPLICA_ENVIRONMENT, serve_environment

    for ingress in ("direct", "haproxy", "proxy"):
        assert REPLICA_ENVIRONMENT.items() <= serve_environment(ingress, 8000).items()
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in config[key] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        for name, value in REPLICA_ENVIRONMENT.items():
            assert f"{name}={value}" in command.split(), (name, command)
    service = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    assert REPLICA_ENVIRONMENT.items() <= env.items()


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
    defaults = AppArgs(store="x").model_dump()
    overrides = {k: v for k, v in app.args.items() if k not in ("store", "token")}
    assert all(defaults[k] != v for k, v in overrides.items()), "the config restates a default"
    (cloud,) = app.deployments  # the ingress scales out with load
    assert cloud.name == "KnowledgeCloud"
    assert cloud.autoscaling_config["max_replicas"] > cloud.autoscaling_config["min_replicas"]


def test_an_installed_wheel_serves_from_anywhere(tmp_path):
    """rayfp built as a wheel and installed into a fresh venv outside the checkout: `rayfp serve`
    starts and answers /v1/health. Nothing of the checkout is on any path (no sys.path or
    PYTHONPATH tricks); the fresh venv borrows only the third-party packages of this one."""
    import shutil
    import signal
    import site
    import socket
    import subprocess
    import sys
    import sysconfig
    import time
    import urllib.request

    source = tmp_path / "src"  # build from a copy: the checkout stays clean
    shutil.copytree(REPO / "rayfp", source / "rayfp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("rayfp-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"], capture_output=True, text=True, check=True)
    # The dependencies (torch, Ray, ...) as plain path entries: this venv's own .pth files, and
    # with them the editable checkout, are not processed.
    ours = sysconfig.get_path("purelib")
    assert ours in site.getsitepackages()
    (Path(purelib.stdout.strip()) / "deps.pth").write_text(ours + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([python, "-c", "import rayfp.cloud.app, rayfp; print(rayfp.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel's copy, not the checkout
    shipped = subprocess.run([python, "-c", "from rayfp.evaluate.data import PUBLISHED_SPLITS; "
                              "print(PUBLISHED_SPLITS.is_file())"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert shipped.stdout.strip() == "True", shipped.stderr  # package data travels

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "store").mkdir()
    server = subprocess.Popen([venv / "bin" / "rayfp", "serve", "--store", "store", "--port",
                               str(port)], cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, health = time.monotonic() + 240, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health",
                                            timeout=5) as answer:
                    health = json.loads(answer.read())
                    break
            except OSError:
                time.sleep(1)
        assert health is not None, server.stdout.read1().decode()
        assert (health["status"], health["spaces"], health["kernels"]) == ("ok", 0, {})
    finally:
        server.send_signal(signal.SIGINT)  # serve.run(blocking) shuts Ray down on Ctrl-C
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # whatever of Ray is left in its session
        except ProcessLookupError:
            pass


def test_every_cloud_setting_is_declared_once(monkeypatch):
    """AppArgs and the `rayfp serve` flags come from one table: same names, same defaults."""
    from rayfp.cli.main import build_parser
    from rayfp.cloud.models import AppArgs
    from rayfp.cloud.settings import SETTINGS, settings_from

    monkeypatch.delenv("RAYFP_TOKEN", raising=False)
    assert list(AppArgs.model_fields) == [s.name for s in SETTINGS]
    args = build_parser().parse_args(["serve", "--store", "here"])
    assert AppArgs(**settings_from(args)) == AppArgs(store="here")
    args = build_parser().parse_args(["serve", "--store", "here", "--max-epsilon", "inf",
                                      "--shards", "4", "--default-metric", "p2l"])
    typed = AppArgs(**settings_from(args))
    assert typed.max_epsilon is None and typed.shards == 4 and typed.default_metric == "p2l"
    # a yes/no setting is a --flag / --no-flag pair; the access log is off unless asked for
    assert AppArgs(store="here").access_log is False
    for flags, wanted in (([], False), (["--access-log"], True), (["--no-access-log"], False)):
        args = build_parser().parse_args(["serve", "--store", "here", *flags])
        assert AppArgs(**settings_from(args)).access_log is wanted
    from rayfp.cloud.app import build_app

    for on in (False, True):  # and it reaches Serve's logging config of the ingress
        app = build_app({"store": "here", "access_log": on})
        assert app._bound_deployment._deployment_config.logging_config[
            "enable_access_log"] is on
    # replicas reach the deployment, sharing one CPU of Ray's, behind HAProxy only: direct
    # ingress serves one replica on its port
    monkeypatch.delenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", raising=False)
    args = build_parser().parse_args(["serve", "--store", "here", "--replicas", "2",
                                      "--threads", "1"])
    config = build_app(settings_from(args))._bound_deployment._deployment_config
    assert config.num_replicas == 2
    assert build_app(settings_from(args))._bound_deployment.ray_actor_options[
        "num_cpus"] == 0.5
    assert build_app({"store": "here"})._bound_deployment._deployment_config.num_replicas == 1
    monkeypatch.setenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", "1")
    with pytest.raises(ConfigError, match="haproxy"):
        build_app(settings_from(args))
    import pydantic

    with pytest.raises(pydantic.ValidationError):  # the registries still check the choices
        AppArgs(**settings_from(build_parser().parse_args(
            ["serve", "--store", "x", "--default-metric", "nope"])))


# The RayService v1 spec's fields (KubeRay's CRD, ray-operator/config/crd/bases/
# ray.io_rayservices.yaml, Apache-2.0), to the depth this manifest uses. The full CRD (830 KB,
# mostly the Kubernetes pod template) is not shipped; a misspelt field fails here.
POD_TEMPLATE = {"type": "object", "required": ["spec"],
                "properties": {"spec": {"type": "object", "required": ["containers"]}}}
RAYSERVICE_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["rayClusterConfig"],
    "properties": {
        "deploymentUnhealthySecondThreshold": {"type": "integer"},
        "excludeHeadPodFromServeSvc": {"type": "boolean"},
        "serveConfigV2": {"type": "string"},
        "serveService": {"type": "object"},
        "serviceUnhealthySecondThreshold": {"type": "integer"},
        "upgradeStrategy": {"type": "object", "additionalProperties": False, "properties": {
            "type": {"enum": ["NewCluster", "None", "NewClusterWithIncrementalUpgrade"]}}},
        "rayClusterConfig": {
            "type": "object", "additionalProperties": False, "required": ["headGroupSpec"],
            "properties": {
                "autoscalerOptions": {"type": "object"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "gcsFaultToleranceOptions": {"type": "object"},
                "headServiceAnnotations": {"type": "object"},
                "managedBy": {"type": "string"},
                "rayVersion": {"type": "string"},
                "suspend": {"type": "boolean"},
                "headGroupSpec": {
                    "type": "object", "additionalProperties": False, "required": ["template"],
                    "properties": {"enableIngress": {"type": "boolean"},
                                   "headService": {"type": "object"},
                                   "rayStartParams": {"type": "object",
                                                      "additionalProperties": {"type": "string"}},
                                   "serviceType": {"type": "string"},
                                   "template": POD_TEMPLATE}},
                "workerGroupSpecs": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["groupName", "template"],
                    "properties": {"groupName": {"type": "string"},
                                   "maxReplicas": {"type": "integer"},
                                   "minReplicas": {"type": "integer"},
                                   "numOfHosts": {"type": "integer"},
                                   "rayStartParams": {"type": "object",
                                                      "additionalProperties": {"type": "string"}},
                                   "replicas": {"type": "integer"},
                                   "scaleStrategy": {"type": "object"},
                                   "suspend": {"type": "boolean"},
                                   "template": POD_TEMPLATE}}}}}}}


def test_the_rayservice_manifest_deploys_the_cloud_from_object_storage_with_a_secret_token():
    from ray.serve.schema import ServeDeploySchema

    from rayfp.cloud.models import AppArgs

    manifest = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    spec = manifest["spec"]
    jsonschema.validate(spec, RAYSERVICE_SPEC)
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(spec["serveConfigV2"]))
    (app,) = serve_config.applications
    assert app.import_path == "rayfp.cloud.app:build_app"
    args = AppArgs(**app.args)
    assert args.store.startswith("s3://") and args.token == ""  # the token is the Secret's
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    pods = [cluster["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["workerGroupSpecs"]]
    for pod in pods:  # every replica can check the token
        for container in pod["spec"]["containers"]:
            token = {e["name"]: e for e in container["env"]}["RAYFP_TOKEN"]
            assert token["valueFrom"]["secretKeyRef"]["key"] == "token"
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    probe = head["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v1/health", "port": serve_config.http_options.port}
    bad = dict(spec, upgradeStratgy={"type": "NewCluster"})  # a misspelt field
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, RAYSERVICE_SPEC)
