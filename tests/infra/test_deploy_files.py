"""Static checks of the deployable stack (no Docker daemon or cluster needed): docker-compose.yml
against the Compose specification, infra/k8s against the Kubernetes schemas and KubeRay's
RayCluster against its CRD's required fields, the lock file and image, and that every variable
the code reads and every command a service runs exist."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
DOCKER = ROOT / "infra" / "docker"
K8S_VERSION = "1.33.0"
#: variables the code reads that describe the process, not the deployment
NOT_DEPLOYMENT = {"RAY_USAGE_STATS_ENABLED", "MLFLOW_DISABLE_TELEMETRY"}
#: boto3's generic endpoint; the stack sets the S3-specific AWS_ENDPOINT_URL_S3, which wins
OPTIONAL_FALLBACKS = {"AWS_ENDPOINT_URL"}


# ------------------------------------------------------------------------------- helpers

def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def k8s_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every document of every resource kustomization.yaml lists (kustomize's own assembly)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                yield name, doc


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kind = doc["kind"]
    if kind == "RayCluster":
        spec = doc["spec"]
        return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    if kind in ("Deployment", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def variables_read_by_code() -> set[str]:
    """Every environment variable services/ and workers/ read by name."""
    pattern = re.compile(r"""(?:environ(?:\.get|\.setdefault)?\(\s*|environ\[\s*|getenv\(\s*|_env_int\(\s*)["']([A-Z][A-Z0-9_]+)["']""")
    found: set[str] = set()
    for package in ("services", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            found |= set(pattern.findall(path.read_text()))
    return found


def env_file_keys(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------------------- compose

def compose_validator() -> Any:
    """The Compose specification's JSON schema as check-jsonschema ships it (vendor.compose-spec)."""
    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_compose_file_follows_the_compose_specification() -> None:
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in compose_validator().iter_errors(compose())]
    assert errors == []


def test_the_schema_check_rejects_a_broken_compose_file() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["scheduler"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["scheduler"]["restart_policy"] = "always"
    assert len(list(compose_validator().iter_errors(broken))) == 2


def test_compose_services_and_their_order() -> None:
    services = compose()["services"]
    assert {"postgres", "minio", "create-buckets", "mlflow", "migrate", "ray-head", "ray-worker", "ray-worker-gpu",
            "scheduler", "nightly"} <= set(services)
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    # everything that uses the store waits for the one-shot migration to complete
    for name in ("ray-head", "scheduler", "nightly"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["mlflow"]["depends_on"]["create-buckets"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["llc", "db", "upgrade"]
    # the project's own probe
    for name in ("ray-head", "scheduler", "nightly"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "llc", "doctor", "--quiet"], name


def test_ray_workers_scale_and_gpu_workers_reserve_nvidia_devices() -> None:
    services = compose()["services"]
    worker = services["ray-worker"]
    assert "container_name" not in worker and "ports" not in worker   # `--scale ray-worker=N` needs both absent
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu["build"]["args"]["TORCH_VARIANT"].startswith("${TORCH_VARIANT_GPU")
    assert "127.0.0.1:8265:8265" in services["ray-head"]["ports"]


def test_env_example_defines_every_compose_variable_with_development_values_only() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(?::-[^}]*)?\}", text))
    example = env_file_keys(ROOT / ".env.example")
    assert used - set(example) == set()
    for key, value in example.items():
        if re.search(r"PASSWORD|SECRET", key):
            assert "dev" in value, f"{key} in .env.example must stay an obvious development default"


# ------------------------------------------------------------------------------- variables

def test_every_variable_the_code_reads_is_provided_in_compose_and_k8s() -> None:
    needed = variables_read_by_code() - NOT_DEPLOYMENT - OPTIONAL_FALLBACKS
    assert {"LLC_DATABASE_URL", "LLC_STORAGE_URI", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "LLC_CACHE_DIR",
            "AWS_ENDPOINT_URL_S3"} <= needed   # the scan itself works
    compose_env = set(compose()["x-llc-env"])
    assert needed - compose_env == set()
    configmap = next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")
    k8s_env = set(configmap["data"]) | set(env_file_keys(K8S / "credentials.env.example"))
    assert needed - k8s_env == set()
    assert set(configmap["data"]) & set(env_file_keys(K8S / "credentials.env.example")) == set()


def test_every_llc_container_gets_the_configmap_and_the_secret() -> None:
    for name, doc in k8s_docs():
        for spec in pod_specs(doc):
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                refs = {next(iter(r.values()))["name"] for r in container.get("envFrom", [])}
                assert refs == {"llc-endpoints", "llc-credentials"}, f"{name}: {container['name']}"


# ------------------------------------------------------------------------------- commands

def service_commands() -> list[list[str]]:
    cmds = [s["command"] for s in compose()["services"].values() if isinstance(s.get("command"), list)]
    for _, doc in k8s_docs():
        for spec in pod_specs(doc):
            cmds += [c["command"] for c in spec.get("containers", []) + spec.get("initContainers", []) if "command" in c]
            for c in spec.get("containers", []):
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe in c:
                        cmds.append(c[probe]["exec"]["command"])
    return cmds


def test_every_llc_command_is_a_real_subcommand() -> None:
    llc = [c for c in service_commands() if c[0] == "llc"]
    assert {tuple(c[:2]) for c in llc} >= {("llc", "scheduler"), ("llc", "nightly"), ("llc", "db"), ("llc", "doctor")}
    parser = build_parser()
    for cmd in llc:
        parser.parse_args(cmd[1:])      # the options themselves parse
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*cmd[1:], "--help"])
        assert exit_.value.code == 0, cmd


@pytest.mark.parametrize("tool", ["ray", "mlflow"])
def test_every_ray_and_mlflow_option_exists(tool: str) -> None:
    cmds = [c for c in service_commands() if c[0] == tool]
    assert cmds
    module = {"ray": "ray.scripts.scripts", "mlflow": "mlflow"}[tool]
    for sub in sorted({c[1] for c in cmds}):
        out = subprocess.run([sys.executable, "-m", module, sub, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for cmd in (c for c in cmds if c[1] == sub):
            for flag in (a.split("=", 1)[0] for a in cmd[2:] if a.startswith("--")):
                assert flag in out.stdout, f"`{tool} {sub}` has no option {flag}"


# ------------------------------------------------------------------------------- kubernetes

def test_kubernetes_manifests_follow_the_kubernetes_schemas() -> None:
    kinds = []
    for name, doc in k8s_docs():
        kinds.append(doc["kind"])
        if doc["kind"] == "RayCluster":
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message}")
    assert sorted(kinds) == ["ConfigMap", "CronJob", "Deployment", "Job", "Namespace", "RayCluster"]


def test_the_kubernetes_check_rejects_a_broken_manifest() -> None:
    deployment = copy.deepcopy(next(d for _, d in k8s_docs() if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"] = "llc doctor"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_raycluster_meets_the_crd_and_its_pods_the_kubernetes_schema() -> None:
    cluster = next(d for _, d in k8s_docs() if d["kind"] == "RayCluster")
    schema = json.loads((Path(__file__).parent / "schemas" / "raycluster-v1-required.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(cluster)
    spec = cluster["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": template}, K8S_VERSION, strict=True)
    missing_template = copy.deepcopy(cluster)
    del missing_template["spec"]["workerGroupSpecs"][0]["template"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(missing_template)


def test_raycluster_groups_autoscale_and_gpus_are_limited() -> None:
    cluster = next(d for _, d in k8s_docs() if d["kind"] == "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    lock = (DOCKER / "requirements.lock").read_text()
    assert f"ray=={cluster['spec']['rayVersion']}" in lock, "rayVersion must match the image's ray"
    configmap = next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")
    assert configmap["data"]["RAY_ADDRESS"].startswith(f"{cluster['metadata']['name']}-head-svc.")


def test_probes_nightly_and_migrations_use_llc() -> None:
    docs = {d["kind"]: d for _, d in k8s_docs()}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["llc", "scheduler"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["llc", "doctor", "--quiet"]
    cron = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert cron["command"] == ["llc", "nightly", "--once", "--run"]
    assert docs["Job"]["spec"]["template"]["spec"]["containers"][0]["command"] == ["llc", "db", "upgrade"]
    images = {i["name"] for i in yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]}
    for _, doc in k8s_docs():
        for spec in pod_specs(doc):
            assert {c["image"] for c in spec["containers"]} <= images


# ------------------------------------------------------------------------------- image

def test_lock_pins_every_dependency_except_torch() -> None:
    lines = [ln for ln in (DOCKER / "requirements.lock").read_text().splitlines() if ln and not ln.startswith(" ")
             and not ln.startswith("#")]
    assert len(lines) > 50
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*(\[[a-z0-9,_-]+\])?==[^\s;]+( ; .+)?", ln) for ln in lines), \
        [ln for ln in lines if "==" not in ln]
    names = {ln.split("==")[0] for ln in lines}
    assert not {n for n in names if n == "torch" or n.startswith(("nvidia-", "cuda-", "triton"))}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in declared:
        name = re.split(r"[<>=\[ ]", dep)[0].lower()
        assert name == "torch" or name in names, f"{name} is in pyproject.toml but not in the lock"


def test_dockerfile_is_multistage_nonroot_and_installs_from_the_lock() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^USER llc$", text, re.M)
    assert "pip install -r /tmp/requirements.lock" in text
    assert "ARG TORCH_VARIANT=cpu" in text
    torch_pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                     if d.startswith("torch"))
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in text
    assert "lock.sh" in (DOCKER / "requirements.lock").read_text().splitlines()[1]
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for copied in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert f"!{copied.rstrip('/')}" in ignored or f"!{copied.rstrip('/')}/" in ignored, copied


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_build_is_valid_and_rewrites_every_image() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(d["kind"] for d in built) == sorted(d["kind"] for _, d in k8s_docs())
    images = {f"{i['newName']}:{i['newTag']}" for i in yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]}
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "llc", doc["kind"]
        if doc["kind"] != "RayCluster":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        for spec in pod_specs(doc):
            assert {c["image"] for c in spec["containers"]} <= images, doc["kind"]
