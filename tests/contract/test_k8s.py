"""k8s/ agrees with the code, with compose/ and with its monitoring config: one Deployment per stage under the stage's
own name, the settings' real RHD_* names, the port Prometheus scrapes, TF Serving's files word for word, one image,
pods that pass the `restricted` Pod Security Standard; and `kubectl kustomize` builds it where kubectl is installed."""

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import missing_tool
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STAGES, all_topic_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
COMPOSE_DIR = ROOT / "compose"
TFSERVING_DIR = COMPOSE_DIR / "tfserving"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus" / "prometheus.yml"
NAMESPACE = "rhd"
KAFKA_NAMESPACE = "kafka"  # Strimzi's: the Kafka cluster's
PART_OF = ("app.kubernetes.io/part-of", "rhd-pipeline")
NAME_LABEL = "app.kubernetes.io/name"
MODEL_SERVER, MODEL_SERVER_GRPC_PORT, MODEL_SERVER_REST_PORT = "model-server", 8500, 8501
RESULTS = "results"  # `rhd results --serve`: each hospital's results to its own topic (home region), not a stage
RHD_IMAGE_NAME = "rhd-pipeline"
# Applied by hand (README.md), so in no kustomization.
STANDALONE = {K8S / "models-loader.yaml"}
LINE = K8S / "line"  # the line's objects; k8s/kustomization.yaml applies them in one cluster
TRAINING = K8S / "training"  # the video network's multi-worker training Job, applied apart when a model is trained
REGIONS = {region: K8S / "regions" / region for region in ("home", "gpu")}  # the same line across two regions
# Their own kustomizations, applied apart: they need CRDs (Prometheus Operator, KEDA, Strimzi).
KUSTOMIZATIONS = [
    LINE,
    K8S / "monitoring",
    K8S / "keda",
    K8S / "kafka",
    TRAINING,
    *REGIONS.values(),
    *(folder / "kafka" for folder in REGIONS.values()),
]
ONE_CLUSTER = KUSTOMIZATIONS[:4]  # the regions' are the same objects, split

Doc = dict[str, Any]


@cache  # parsed once per run; nothing mutates what it returns
def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def kustomization(folder: Path) -> Doc:
    return read_yaml(folder / "kustomization.yaml")


def resources(folder: Path) -> list[Path]:
    """The files a kustomization applies, those of the folders it names included."""
    paths = [folder / entry for entry in kustomization(folder).get("resources", [])]
    return [file for path in paths for file in (resources(path) if path.is_dir() else [path])]


def objects(folder: Path = LINE) -> list[Doc]:
    return [doc for path in resources(folder) for doc in load_docs(path)]


def only(kind: str, name: str, docs: list[Doc] | None = None) -> Doc:
    found = [d for d in (objects() if docs is None else docs) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def of_kind(kind: str, docs: list[Doc] | None = None) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in (objects() if docs is None else docs) if d["kind"] == kind}


def pod_spec(doc: Doc) -> Doc:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def pod_labels(doc: Doc) -> dict[str, str]:
    return doc["metadata"].get("labels", {}) if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]["labels"]


def containers(doc: Doc, init: bool = True) -> list[Doc]:
    spec = pod_spec(doc)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def workloads() -> list[Doc]:
    """Everything that runs a pod: the applied objects, the training Job and the standalone pod."""
    docs = [*objects(), *objects(TRAINING), *(doc for path in sorted(STANDALONE) for doc in load_docs(path))]
    return [d for d in docs if d["kind"] in ("Deployment", "Job", "Pod")]


def stage_deployments() -> dict[str, Doc]:
    return {name: d for name, d in of_kind("Deployment").items() if name not in (MODEL_SERVER, RESULTS)}


def config() -> dict[str, str]:
    return only("ConfigMap", "rhd-config")["data"]


def http_port() -> int:
    return int(config()["RHD_HTTP_PORT"])


def named_port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return found


def probes(container: Doc) -> dict[str, Doc]:
    return {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in container}


def mounts(doc: Doc, container: Doc) -> dict[str, tuple[Doc, bool]]:
    """Mount path -> (the pod's volume, read-only)."""
    volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    return {m["mountPath"]: (volumes[m["name"]], bool(m.get("readOnly"))) for m in container.get("volumeMounts", [])}


def claim(volume: Doc) -> str | None:
    return (volume.get("persistentVolumeClaim") or {}).get("claimName")


def is_rhd_image(image: str) -> bool:
    return image.rpartition(":")[0].rsplit("/", 1)[-1] == RHD_IMAGE_NAME


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with nothing set: the default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def compose_services(name: str) -> dict[str, Doc]:
    return read_yaml(COMPOSE_DIR / name)["services"]


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", text))


def stage_class(stage: str) -> type:
    """The StageService subclass that `rhd serve <stage>` runs."""
    module = importlib.import_module(f"rhd.{stage}.service")
    (found,) = [c for c in vars(module).values() if isinstance(c, type) and getattr(c, "name", None) == stage]
    return found


def prometheus_jobs() -> dict[str, Doc]:
    return {job["job_name"]: job for job in read_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}


def k8s_yaml_files() -> Iterator[Path]:
    yield from (p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")


# --- the files -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_resource_of_a_kustomization_exists_and_is_a_named_object(folder: Path):
    kust = kustomization(folder)
    # k8s/kafka spans two namespaces (the cluster in Strimzi's, its users beside the pods): each object names its own.
    explicit = folder.name == "kafka"
    assert kust.get("namespace") == (None if explicit else NAMESPACE)
    labels = [entry.get("pairs", {}) for entry in kust.get("labels", [])]
    assert any(pairs.get(PART_OF[0]) == PART_OF[1] for pairs in labels), f"{folder}: no {PART_OF[0]} label"
    assert resources(folder), f"{folder}: no resources"
    for path in resources(folder):
        assert path.is_file(), f"{path} is listed in {folder}/kustomization.yaml but missing"
        docs = load_docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not a Kubernetes object"
            assert doc["metadata"].get("name"), f"{path}: an object without a name"
            where = KAFKA_NAMESPACE if doc["kind"] in ("Kafka", "KafkaNodePool") else NAMESPACE
            assert doc["metadata"].get("namespace", None if explicit else where) == where, doc["metadata"]["name"]


def test_every_manifest_is_applied_by_a_kustomization_or_documented_as_standalone():
    listed = {path.resolve() for folder in KUSTOMIZATIONS for path in resources(folder)}
    for path in k8s_yaml_files():
        assert path.resolve() in listed or path in STANDALONE, f"{path.relative_to(ROOT)} is applied by nothing"
        load_docs(path)  # parses
    for path in STANDALONE:
        assert path.name in (K8S / "README.md").read_text(), f"{path.name}: k8s/README.md does not say how to use it"


def test_no_object_is_defined_twice():
    seen = [(d["kind"], d["metadata"]["name"]) for folder in ONE_CLUSTER for d in objects(folder)]
    assert len(seen) == len(set(seen)), sorted(seen)


# --- the stages ----------------------------------------------------------------------------------------------------


def test_the_stage_deployments_are_exactly_the_stages_each_under_its_own_name():
    deployments = stage_deployments()
    assert sorted(deployments) == sorted(STAGES), "one Deployment per stage, and no other besides the model server"
    for stage, deployment in deployments.items():
        (container,) = containers(deployment, init=False)
        assert container["name"] == stage
        assert container.get("args") == ["serve", stage], f"{stage}: args must be `serve {stage}`"
        assert "command" not in container, f"{stage}: the image's entry point is `rhd`"
        assert (LINE / "stages" / f"{stage}.yaml").resolve() in {p.resolve() for p in resources(K8S)}, stage
        labels = pod_labels(deployment)
        assert labels.get(NAME_LABEL) == stage
        assert deployment["spec"]["selector"]["matchLabels"] == {NAME_LABEL: stage}


def test_every_stage_has_a_headless_service_of_its_name_on_the_http_port():
    services = of_kind("Service")
    for stage in STAGES:
        service = services.get(stage)
        assert service, f"no Service {stage}"
        assert service["spec"].get("clusterIP") == "None", f"{stage}: headless, so its name resolves to every replica"
        assert service["spec"]["selector"] == {NAME_LABEL: stage}
        (port,) = service["spec"]["ports"]
        assert port["port"] == http_port()
        (container,) = containers(stage_deployments()[stage], init=False)
        assert named_port(container, port["targetPort"]) == http_port()


def test_replicas_are_left_to_the_operator():
    for name, deployment in of_kind("Deployment").items():
        assert "replicas" not in deployment["spec"], f"{name}: `kubectl apply` would reset `kubectl scale`"


def test_every_rhd_variable_set_anywhere_is_a_real_setting():
    known = {f"RHD_{field.upper()}" for field in Settings.model_fields}
    unknown = set(config()) - known
    assert not unknown, f"rhd-config sets {sorted(unknown)}, which services/rhd/runtime/settings.py does not read"
    for doc in workloads():
        for container in containers(doc):
            names = {e["name"] for e in container.get("env", []) if e["name"].startswith("RHD_")}
            assert names <= known, f"{container['name']} sets {sorted(names - known)}"


def test_every_rhd_container_reads_rhd_config():
    for doc in workloads():
        for container in containers(doc):
            if is_rhd_image(container["image"]) and doc["kind"] != "Pod":
                refs = [e.get("configMapRef", {}).get("name") for e in container.get("envFrom", [])]
                assert "rhd-config" in refs, f"{doc['metadata']['name']}/{container['name']}"


def test_the_configuration_matches_compose_but_for_the_broker():
    env = config()
    compose_env = {
        key: interpolate(str(value))
        for key, value in compose_services("docker-compose.yml")["split"]["environment"].items()
    }
    for key in ("RHD_HTTP_HOST", "RHD_HTTP_PORT", "RHD_BLOB_DIR", "RHD_MODELS_DIR", "RHD_PARTITIONS"):
        assert env.get(key) == compose_env.get(key), key
    assert env["RHD_MODEL_SERVER"] == f"{MODEL_SERVER}:{MODEL_SERVER_GRPC_PORT}"
    host, _, port = env["RHD_BOOTSTRAP_SERVERS"].rpartition(":")
    assert host and port.isdigit(), env["RHD_BOOTSTRAP_SERVERS"]


def test_the_http_port_is_the_one_probed_annotated_and_scraped_by_prometheus():
    port = http_port()
    jobs = prometheus_jobs()
    for stage, deployment in stage_deployments().items():
        (sd,) = jobs[stage]["dns_sd_configs"]
        assert sd["names"] == [stage], f"prometheus.yml's job {stage} resolves {sd['names']}: the Service's name"
        assert sd["port"] == port, f"prometheus.yml scrapes {stage} on {sd['port']}, RHD_HTTP_PORT is {port}"
        (container,) = containers(deployment, init=False)
        assert named_port(container, "http") == port
        for kind, probe in probes(container).items():
            assert named_port(container, probe["httpGet"]["port"]) == port, f"{stage} {kind}"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations.get("prometheus.io/scrape") == "true", stage
        assert annotations.get("prometheus.io/port") == str(port), stage
        assert annotations.get("prometheus.io/path") == jobs[stage].get("metrics_path", "/metrics"), stage


def test_stages_are_ready_on_readyz_and_alive_on_healthz():
    for stage, deployment in stage_deployments().items():
        (container,) = containers(deployment, init=False)
        found = probes(container)
        assert found["readinessProbe"]["httpGet"]["path"] == "/readyz", stage
        assert found["livenessProbe"]["httpGet"]["path"] == "/healthz", stage
        if "startupProbe" in found:
            assert found["startupProbe"]["httpGet"]["path"] == "/healthz", stage


def test_every_stage_shares_the_blob_volume_and_diagnose_reads_the_models():
    env = config()
    claims = of_kind("PersistentVolumeClaim")
    assert "ReadWriteMany" in claims["rhd-blobs"]["spec"]["accessModes"], "every stage, on any node, uses it"
    for stage, deployment in stage_deployments().items():
        (container,) = containers(deployment, init=False)
        found = mounts(deployment, container)
        volume, read_only = found[env["RHD_BLOB_DIR"]]
        assert claim(volume) == "rhd-blobs" and not read_only, f"{stage}: {env['RHD_BLOB_DIR']} is not rhd-blobs"
        assert "emptyDir" in found["/tmp"][0], f"{stage}: /tmp must be writable (split decodes through temp files)"
        if stage == "diagnose":
            volume, read_only = found[env["RHD_MODELS_DIR"]]
            assert claim(volume) == "rhd-models" and read_only, "diagnose reads models/study/ from rhd-models"


def test_stages_wait_for_the_topics_and_the_job_creates_them():
    job = only("Job", "topics")
    (container,) = containers(job)
    assert container["args"] == ["topics"]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    for stage, deployment in stage_deployments().items():
        inits = pod_spec(deployment).get("initContainers", [])
        assert [c.get("args") for c in inits] == [["topics"]], f"{stage}: no `rhd topics` init container"


def test_stages_have_time_to_stop_gracefully():
    compose_grace = duration_s(compose_services("docker-compose.yml")["split"]["stop_grace_period"])
    for stage, deployment in stage_deployments().items():
        assert pod_spec(deployment).get("terminationGracePeriodSeconds", 30) >= compose_grace, stage


def test_every_container_asks_for_resources_and_sets_limits():
    for doc in workloads():
        for container in containers(doc):
            asked = container.get("resources", {})
            for key in ("cpu", "memory"):
                assert key in asked.get("requests", {}), f"{container['name']}: no {key} request"
                assert key in asked.get("limits", {}), f"{container['name']}: no {key} limit"


# --- one image, non-root -------------------------------------------------------------------------------------------


def test_every_rhd_container_runs_the_same_image_tagged_with_the_project_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for doc in workloads() for c in containers(doc) if not c["image"].startswith("tensorflow/")}
    assert images == {f"{RHD_IMAGE_NAME}:{version}"}, images
    for stage, deployment in stage_deployments().items():
        assert all(is_rhd_image(c["image"]) for c in containers(deployment)), stage


def test_every_pod_passes_the_restricted_pod_security_standard():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (image_user,) = re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)
    assert only("Namespace", NAMESPACE)["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    for doc in workloads():
        name, spec = doc["metadata"]["name"], pod_spec(doc)
        security = spec.get("securityContext", {})
        assert security.get("runAsNonRoot") is True, name
        assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, f"{name}: needs no Kubernetes API"
        if any(is_rhd_image(c["image"]) for c in containers(doc)):
            assert str(security.get("runAsUser")) == image_user, f"{name}: runs as the image's user {image_user}"
        for container in containers(doc):
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, f"{name}/{container['name']}"
            assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{container['name']}"
            assert context.get("readOnlyRootFilesystem") is True, f"{name}/{container['name']}"
            assert "privileged" not in context and "runAsUser" not in context, f"{name}/{container['name']}"


# --- the model server ----------------------------------------------------------------------------------------------


def model_server() -> tuple[Doc, Doc]:
    deployment = only("Deployment", MODEL_SERVER)
    (container,) = containers(deployment, init=False)
    return deployment, container


def test_the_model_server_is_the_gpu_image_of_composes_tensorflow_serving_version():
    compose_image = interpolate(compose_services("docker-compose.gpu.yml")[MODEL_SERVER]["image"])
    default_version = interpolate(compose_services("docker-compose.yml")[MODEL_SERVER]["image"]).partition(":")[2]
    assert compose_image == f"tensorflow/serving:{default_version}-gpu"
    deployment, container = model_server()
    assert container["name"] == MODEL_SERVER
    assert container["image"] == compose_image, "k8s and compose must serve with the same TF Serving version"
    assert str(container["resources"]["limits"].get("nvidia.com/gpu")) == "1"
    tolerations = pod_spec(deployment).get("tolerations", [])
    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), "GPU nodes are commonly tainted"


def test_the_model_server_runs_with_composes_flags_and_files_word_for_word():
    deployment, container = model_server()
    compose_command = compose_services("docker-compose.yml")[MODEL_SERVER]["command"]
    # The same flags as compose (compose/tfserving/README.md), and gRPC over TLS (compose's one host stays plain).
    tls = [arg for arg in container["args"] if arg.startswith("--ssl_config_file=")]
    assert [arg for arg in container["args"] if arg not in tls] == compose_command
    assert len(tls) == 1
    assert "command" not in container, "the image's entry point gives --port and --rest_api_port"
    found = mounts(deployment, container)
    config_volume, _ = found["/config"]
    configmap = only("ConfigMap", config_volume["configMap"]["name"])
    flags = dict(arg.partition("=")[::2] for arg in container["args"] if arg not in tls)
    for flag in ("--model_config_file", "--batching_parameters_file", "--monitoring_config_file"):
        path = flags[flag]
        assert path.startswith("/config/"), flag
        assert path.removeprefix("/config/") in configmap["data"], f"{flag}={path}: not in {configmap['metadata']}"
    expected = {p.name: p.read_text() for p in TFSERVING_DIR.iterdir() if p.name != "README.md"}
    assert set(configmap["data"]) == set(expected), "the ConfigMap must hold compose/tfserving's files, no more"
    for name, text in expected.items():
        assert configmap["data"][name] == text, f"{name} differs from compose/tfserving/{name}: copy it again"
    models_volume, read_only = found["/models"]
    assert claim(models_volume) == "rhd-models" and read_only


def test_the_model_server_is_ready_when_the_configured_model_answers_its_status():
    _, container = model_server()
    assert named_port(container, "grpc") == MODEL_SERVER_GRPC_PORT
    assert named_port(container, "http") == MODEL_SERVER_REST_PORT
    model_config = (TFSERVING_DIR / "models.config").read_text()
    served = set(re.findall(r'name:\s*"([^"]+)"', model_config))
    readiness = container["readinessProbe"]["httpGet"]
    assert named_port(container, readiness["port"]) == MODEL_SERVER_REST_PORT
    assert readiness["path"].removeprefix("/v1/models/") in served, readiness["path"]
    assert config()["RHD_MODEL_SERVER"] == f"{MODEL_SERVER}:{named_port(container, 'grpc')}"


def test_the_model_server_service_and_annotations_match_prometheus():
    deployment, container = model_server()
    service = only("Service", MODEL_SERVER)
    assert service["spec"]["selector"] == {NAME_LABEL: MODEL_SERVER} == deployment["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == MODEL_SERVER_GRPC_PORT and ports["http"]["port"] == MODEL_SERVER_REST_PORT
    job = prometheus_jobs()[MODEL_SERVER]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == [MODEL_SERVER], "prometheus.yml's model-server job resolves the Service's name"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(sd["port"]) == str(named_port(container, "http"))
    assert annotations["prometheus.io/path"] == job["metrics_path"]


# --- storage -------------------------------------------------------------------------------------------------------


def test_the_models_volume_is_read_only_to_every_pod_but_the_loader():
    claims = of_kind("PersistentVolumeClaim")
    assert set(claims) == {"rhd-blobs", "rhd-models"}
    claims |= of_kind("PersistentVolumeClaim", objects(TRAINING))  # where a training Job writes a new version
    assert "ReadWriteMany" in claims["rhd-models"]["spec"]["accessModes"], "mounted on several nodes, loaded by one"
    for doc in workloads():
        for container in containers(doc):
            for path, (volume, read_only) in mounts(doc, container).items():
                if claim(volume) == "rhd-models":
                    loader = doc["kind"] == "Pod"
                    assert read_only != loader, f"{doc['metadata']['name']}: {path}"
                if claim(volume):
                    assert claim(volume) in claims, f"{doc['metadata']['name']}: no claim {claim(volume)}"


# --- monitoring and autoscaling ------------------------------------------------------------------------------------


def test_the_podmonitors_name_each_job_after_the_stage_as_the_alert_rules_expect():
    docs = objects(K8S / "monitoring")
    monitors = of_kind("PodMonitor", docs)
    jobs = prometheus_jobs()
    covered = set()
    for monitor in monitors.values():
        selector = monitor["spec"]["selector"]["matchLabels"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        for name, deployment in of_kind("Deployment").items():
            labels = pod_labels(deployment)
            if selector.items() <= labels.items():
                covered.add(name)
                assert labels[monitor["spec"]["jobLabel"]] == name, f"{name} would be scraped as another job"
                container = next(c for c in containers(deployment, init=False) if c["name"] == name)
                sd_port = jobs[name]["dns_sd_configs"][0]["port"]
                assert named_port(container, endpoint["port"]) == sd_port, name
                assert endpoint.get("path", "/metrics") == jobs[name].get("metrics_path", "/metrics"), name
    assert covered == {*STAGES, MODEL_SERVER}, f"not scraped: {sorted({*STAGES, MODEL_SERVER} - covered)}"


def test_the_prometheus_rules_are_composes_word_for_word():
    rules = of_kind("PrometheusRule", objects(K8S / "monitoring"))
    groups = [group for rule in rules.values() for group in rule["spec"]["groups"]]
    expected = [
        group
        for path in sorted((COMPOSE_DIR / "prometheus" / "rules").glob("*.yml"))
        for group in read_yaml(path)["groups"]
    ]
    by_name = itemgetter("name")
    assert sorted(groups, key=by_name) == sorted(expected, key=by_name), "copy compose/prometheus/rules' groups again"


def test_the_keda_scaler_watches_the_stages_own_group_and_input_topic():
    env = config()
    for scaled in of_kind("ScaledObject", objects(K8S / "keda")).values():
        stage = scaled["spec"]["scaleTargetRef"]["name"]
        assert stage in STAGES
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == stage, "a stage's consumer group is its name"
        assert meta["topic"] == stage_class(stage).input_topic
        assert meta["topic"] in all_topic_names()
        assert meta["bootstrapServers"] == env["RHD_BOOTSTRAP_SERVERS"]
        assert scaled["spec"]["maxReplicaCount"] <= int(env["RHD_PARTITIONS"]), "replicas beyond partitions idle"


# --- kubectl itself ------------------------------------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl `make kubectl` takes into the venv (from a PyPI wheel), else one on PATH."""
    path = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if path is None:
        missing_tool("kubectl is not installed (`make kubectl`): `kubectl kustomize` not run")
    return str(path)


def kustomize(folder: Path) -> list[Doc]:
    """What `kubectl apply -k folder` would send, built without a cluster."""
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_kubectl_kustomize_builds_every_object_in_the_namespace_with_the_labels(folder: Path):
    built = kustomize(folder)
    if folder in ONE_CLUSTER:
        assert len(built) == len(objects(folder)), "kustomize dropped or added objects"
    for doc in built:
        meta = doc["metadata"]
        if doc["kind"] != "Namespace":
            where = KAFKA_NAMESPACE if doc["kind"] in ("Kafka", "KafkaNodePool") else NAMESPACE
            assert meta.get("namespace") == where, f"{doc['kind']} {meta['name']}"
        assert meta.get("labels", {}).get(PART_OF[0]) == PART_OF[1], f"{doc['kind']} {meta['name']}"
        if doc["kind"] in ("Deployment", "Job"):
            assert pod_labels(doc).get(PART_OF[0]) == PART_OF[1], f"{meta['name']}: pods without the label"
            selector = doc["spec"].get("selector", {}).get("matchLabels", {})
            assert PART_OF[0] not in selector, f"{meta['name']}: selectors are immutable, keep labels out of them"


# --- training ------------------------------------------------------------------------------------------------------


def test_the_video_training_job_runs_one_worker_per_pod_that_find_each_other():
    from rhd.training.video import SHARDS

    docs = objects(TRAINING)
    job, service = only("Job", "video-train", docs), only("Service", "video-train", docs)
    spec, pod = job["spec"], pod_spec(job)
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    workers = spec["completions"]
    assert SHARDS % workers == 0, "the workers must divide the shards among them"
    (container,) = containers(job)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    # Indexed pods are named <job>-<index>; under the headless Service (the pods' subdomain) each has a DNS name.
    port = service["spec"]["ports"][0]["port"]
    assert env["RHD_TRAIN_WORKER_HOSTS"].split(",") == [f"video-train-{i}.video-train:{port}" for i in range(workers)]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels(job).items()
    assert container["args"][:2] == ["train", "video"] and "--precision=mixed" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (out,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/out"]
    assert "--models-dir=/out" in container["args"] and not out.get("readOnly")
