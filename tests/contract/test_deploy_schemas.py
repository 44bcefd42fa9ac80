"""The deployment files against their schemas, offline: compose/ against the Compose specification (the schema
check-jsonschema vendors), every object k8s/ builds (`kubectl kustomize`, each kustomization and both regions)
against the Kubernetes API's schemas (kubernetes-validate, strict: an unknown field fails), and the custom resources
(Strimzi, KEDA, Prometheus Operator) against their operators' CRD schemas as the @kubernetes-models npm packages
carry them (tests/schemas). Those CRD schemas check types, enums and required fields; like the API server, which
prunes unknown fields of a custom resource, they let an unknown field through (test_k8s_policy.py tests the fields
the line relies on)."""

import copy
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
from conftest import missing_tool
from test_k8s import KUSTOMIZATIONS, ROOT, Doc, kustomize

COMPOSE_FILES = sorted((ROOT / "compose").glob("docker-compose*.yml"))
SCHEMAS = ROOT / "tests" / "schemas"
KUBERNETES_VERSION = "1.33"  # the kubectl `make kubectl` installs (client v1.33)
CUSTOM_GROUPS = ("kafka.strimzi.io", "keda.sh", "monitoring.coreos.com")


def is_custom(doc: Doc) -> bool:
    return doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS


@cache
def built() -> list[Doc]:
    return [doc for folder in KUSTOMIZATIONS for doc in kustomize(folder)]


def check_compose(path: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "check-jsonschema"
    command = [str(tool), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def validate_custom(docs: list[Doc]) -> list[dict]:
    node = shutil.which("node")
    if node is None or not (SCHEMAS / "node_modules" / "@kubernetes-models").is_dir():
        missing_tool("Node.js and tests/schemas/node_modules (`make schemas`) check the custom resources")
    result = subprocess.run(
        [str(node), str(SCHEMAS / "validate.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCHEMAS,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_the_compose_files_follow_the_compose_specification(path: Path):
    result = check_compose(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_check_refuses_a_file_the_specification_does_not_allow(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILES[0].read_text().replace("services:", "services:\n  broken:\n    ports: 8000\n", 1))
    result = check_compose(broken)
    assert result.returncode != 0 and "ports" in result.stdout + result.stderr


def test_every_built_object_follows_the_kubernetes_schemas():
    docs = [doc for doc in built() if not is_custom(doc)]
    assert {"Deployment", "Service", "Job", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap"} <= {
        d["kind"] for d in docs
    }
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_check_refuses_an_unknown_field_and_a_wrong_type():
    deployment = next(copy.deepcopy(d) for d in built() if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    budget = next(copy.deepcopy(d) for d in built() if d["kind"] == "PodDisruptionBudget")
    budget["spec"]["selector"] = "app=deid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(budget, KUBERNETES_VERSION, strict=True)


def test_every_custom_resource_follows_its_operators_schema():
    docs = [doc for doc in built() if is_custom(doc)]
    kinds = {d["kind"] for d in docs}
    assert {"Kafka", "KafkaNodePool", "KafkaUser", "KafkaMirrorMaker2", "ScaledObject"} <= kinds
    assert {"TriggerAuthentication"} <= kinds
    assert {"PodMonitor", "PrometheusRule"} <= kinds
    results = validate_custom(docs)
    assert all(r["checked"] for r in results), [r for r in results if not r["checked"]]
    assert [r for r in results if r["errors"]] == []


def test_the_custom_resource_check_refuses_what_the_operator_would():
    user = next(copy.deepcopy(d) for d in built() if d["kind"] == "KafkaUser")
    user["spec"]["authentication"]["type"] = "plain"  # Strimzi users authenticate by SCRAM or TLS only
    mirror = next(copy.deepcopy(d) for d in built() if d["kind"] == "KafkaMirrorMaker2")
    del mirror["spec"]["target"]["groupId"]
    scaled = next(copy.deepcopy(d) for d in built() if d["kind"] == "ScaledObject")
    scaled["spec"]["minReplicaCount"] = "one"
    results = validate_custom([user, mirror, scaled])
    assert all(r["checked"] and r["errors"] for r in results), results
