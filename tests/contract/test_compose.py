"""compose/docker-compose.yml agrees with the code and the monitoring config: one service per stage under the stage's
own name, the settings' real RHD_* names, the ports Prometheus scrapes, and mounts of folders that exist."""

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from rhd.local.mirror import mm2_properties
from rhd.runtime.kafka import MAX_FETCH_BYTES
from rhd.runtime.settings import Settings
from rhd.runtime.topics import GPU, HOME, STAGES, stage_region

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
COMPOSE_GPU = COMPOSE_DIR / "docker-compose.gpu.yml"
COMPOSE_REGIONS = COMPOSE_DIR / "docker-compose.regions.yml"
MM2_PROPERTIES = COMPOSE_DIR / "mirror-maker" / "mm2.properties"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDER = COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "rhd.yml"
MODEL_SERVER, MODEL_SERVER_GRPC_PORT, MODEL_SERVER_REST_PORT = "model-server", 8500, 8501
# The flags whose value is a file tensorflow/serving reads (compose/tfserving/README.md).
MODEL_SERVER_FILE_FLAGS = ("--model_config_file", "--batching_parameters_file", "--monitoring_config_file")


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default} and ${NAME-default} with nothing set: the default (${NAME}: empty)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


COMPOSE_DOC = read_yaml(COMPOSE)
SERVICES: dict[str, dict[str, Any]] = COMPOSE_DOC["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.partition("=")[::2] for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source: a named volume's name, or a bind mount's path resolved from the compose folder."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):  # the long form
            source, target = volume["source"], volume["target"]
        else:
            source, target = interpolate(volume).split(":")[:2]
        bind = source.startswith((".", "/"))
        found[target] = str((COMPOSE_DIR / source).resolve()) if bind else source
    return found


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(part) for part in cmd]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Service -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        text = interpolate(str(port["target"]) if isinstance(port, dict) else str(port))
        ports.add(int(text.split("/")[0].rsplit(":", 1)[-1]))
    return ports


def stage_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in SERVICES.items() if command(service)[:1] == ["serve"]}


def dns_sd_jobs() -> dict[str, tuple[str, int]]:
    """Prometheus job -> (name it resolves, port) for every DNS-discovered job."""
    jobs = {}
    for job in read_yaml(PROMETHEUS_CONFIG)["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            (name,) = sd["names"]
            jobs[job["job_name"]] = (name, int(sd["port"]))
    return jobs


def listeners(text: str) -> dict[str, tuple[str, int]]:
    """Kafka's NAME://host:port,... -> {NAME: (host, port)}."""
    found = {}
    for item in text.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        found[name] = (host, int(port))
    return found


# --- the stages ----------------------------------------------------------------------------------------------------


def test_the_stage_services_are_exactly_the_stages_each_under_its_own_name():
    stages = stage_services()
    assert sorted(stages) == sorted(STAGES), "one compose service per stage, no other service runs `rhd serve`"
    for name, service in stages.items():
        assert command(service) == ["serve", name], f"{name}: the service name must be its `serve` argument"


def test_every_stage_runs_the_image_built_from_the_repository_dockerfile():
    images = set()
    for name, service in stage_services().items():
        build = service.get("build")
        assert build, f"{name}: no build section"
        context = build if isinstance(build, str) else build["context"]
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (COMPOSE_DIR / context).resolve() == ROOT, f"{name}: build context is not the repository root"
        assert (ROOT / dockerfile).is_file()
        images.add(service.get("image"))
    assert len(images) == 1 and None not in images, f"the stages must share one named image, got {images}"


def test_every_rhd_variable_set_anywhere_is_a_real_setting():
    known = {f"RHD_{field.upper()}" for field in Settings.model_fields}
    for name, service in SERVICES.items():
        unknown = {key for key in environment(service) if key.startswith("RHD_")} - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which services/rhd/runtime/settings.py does not read"


def test_every_stage_reaches_the_broker_on_the_listener_kafka_advertises_to_the_compose_network():
    kafka = environment(SERVICES["kafka"])
    advertised = listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka["KAFKA_LISTENERS"])
    internal = [name for name, (host, _) in advertised.items() if host == "kafka"]
    assert len(internal) == 1, f"one listener must be advertised as the service name `kafka`: {advertised}"
    host, port = advertised[internal[0]]
    assert bound[internal[0]][1] == port, "the listener advertises a port it does not bind"
    assert f"{host}:{port}" == "kafka:9092"
    for name in [*stage_services(), "topics"]:
        env = environment(SERVICES[name])
        assert env.get("RHD_BOOTSTRAP_SERVERS") == f"{host}:{port}", name


def test_kafka_is_kraft_and_creates_no_topic_by_itself():
    kafka = environment(SERVICES["kafka"])
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"].split(","), "KRaft: the node is its own controller"
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics are created by `rhd topics` only"
    assert kafka.get("CLUSTER_ID"), "the apache/kafka image formats its storage with CLUSTER_ID in KRaft mode"


def test_no_password_has_a_default():
    """A password or secret is required from the environment (`${VAR:?...}`), never defaulted (`${VAR:-admin}`)."""
    text = (COMPOSE_DIR / "docker-compose.yml").read_text() + (COMPOSE_DIR / "docker-compose.gpu.yml").read_text()
    defaulted = re.findall(r"\$\{(\w*(?:PASSWORD|SECRET|TOKEN|KEY)\w*):-", text)
    assert not defaulted, f"defaults for {defaulted}"
    assert "${GRAFANA_ADMIN_PASSWORD:?" in text


def test_compose_runs_the_kafka_the_tests_run():
    """The apache/kafka image is the version kafka/pom.xml pins (what `make test` runs the line on), with the same
    largest message as the tests' broker and the stages' fetch size."""
    pom = ET.parse(ROOT / "kafka" / "pom.xml").getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = pom.find("m:properties/m:kafka.version", ns).text  # type: ignore[union-attr]
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{version}"
    assert int(environment(SERVICES["kafka"])["KAFKA_MESSAGE_MAX_BYTES"]) == MAX_FETCH_BYTES
    assert all(environment(SERVICES[name]).get("RHD_IDEMPOTENCE") == "true" for name in stage_services())
    assert all(environment(SERVICES[name]).get("RHD_TRANSACTIONS") == "true" for name in stage_services())


def test_topics_are_created_once_before_any_stage_starts():
    topics = SERVICES["topics"]
    assert command(topics) == ["topics"]
    assert topics.get("image") == stage_services()["split"].get("image")
    assert depends_on(topics).get("kafka") == "service_healthy", "`rhd topics` needs a broker that answers"
    assert "healthcheck" in SERVICES["kafka"]
    for name, service in stage_services().items():
        assert depends_on(service).get("topics") == "service_completed_successfully", name


def test_every_stage_has_the_environment_its_settings_need():
    for name, service in stage_services().items():
        env = environment(service)
        assert env.get("RHD_MODEL_SERVER") == f"{MODEL_SERVER}:{MODEL_SERVER_GRPC_PORT}", name
        assert env.get("RHD_HTTP_HOST") == "0.0.0.0", f"{name}: Prometheus scrapes from another container"
        assert env.get("RHD_MODELS_DIR") == "/models", name
        blob_dir = env.get("RHD_BLOB_DIR")
        assert blob_dir, name
        volume = mounts(service).get(blob_dir)
        assert volume in (COMPOSE_DOC.get("volumes") or {}), f"{name}: {blob_dir} is not a named volume"
        assert volume == mounts(SERVICES["split"])[blob_dir], f"{name}: every stage must share split's blob volume"


def test_the_stage_http_port_is_the_port_prometheus_discovers_each_stage_on():
    jobs = dns_sd_jobs()
    for name, service in stage_services().items():
        assert name in jobs, f"prometheus.yml has no job for {name}"
        resolved, port = jobs[name]
        assert resolved == name, f"job {name} resolves {resolved}: it must be the compose service name"
        assert environment(service).get("RHD_HTTP_PORT") == str(port), name


def test_every_name_prometheus_resolves_is_a_compose_service():
    for job, (name, _) in dns_sd_jobs().items():
        assert name in SERVICES, f"prometheus job {job} resolves {name}, which is no compose service"


def test_stages_scale_with_compose_and_are_health_checked_on_readyz():
    for name, service in stage_services().items():
        assert "replicas" not in (service.get("deploy") or {}), f"{name}: replicas are the operator's (--scale)"
        assert "container_name" not in service and not service.get("ports"), f"{name}: would break --scale"
        test = service.get("healthcheck", {}).get("test")
        assert test and "/readyz" in " ".join(test if isinstance(test, list) else [test]), name


def test_diagnose_finds_the_study_model_under_the_models_dir():
    diagnose = stage_services()["diagnose"]
    models_dir = environment(diagnose)["RHD_MODELS_DIR"]
    assert mounts(diagnose).get(models_dir) == str(ROOT / "models"), "models/ (made by `make models`) not mounted"


# --- the model server ----------------------------------------------------------------------------------------------


def test_the_model_server_runs_tensorflow_serving_with_the_files_in_compose_tfserving():
    server = SERVICES[MODEL_SERVER]
    assert interpolate(server["image"]).startswith("tensorflow/serving:")
    assert not interpolate(server["image"]).endswith("-gpu"), "the GPU image belongs in docker-compose.gpu.yml"
    volumes = mounts(server)
    assert volumes.get("/models") == str(ROOT / "models")
    config_dir = volumes.get("/config")
    assert config_dir == str(COMPOSE_DIR / "tfserving")
    flags = dict(arg.partition("=")[::2] for arg in command(server))
    assert "--enable_batching" in flags, "--batching_parameters_file does nothing without --enable_batching"
    for flag in MODEL_SERVER_FILE_FLAGS:
        path = flags.get(flag)
        assert path and path.startswith("/config/"), f"{flag} must name a file in the mounted /config"
        assert (Path(config_dir) / path.removeprefix("/config/")).is_file(), f"{flag}={path}: not in tfserving/"
    # The image's entry point gives these; a flag repeated with another value would move the server.
    assert flags.get("--port", str(MODEL_SERVER_GRPC_PORT)) == str(MODEL_SERVER_GRPC_PORT)
    assert flags.get("--rest_api_port", str(MODEL_SERVER_REST_PORT)) == str(MODEL_SERVER_REST_PORT)
    assert {MODEL_SERVER_GRPC_PORT, MODEL_SERVER_REST_PORT} <= published_container_ports(server)
    model_config = (Path(config_dir) / flags["--model_config_file"].removeprefix("/config/")).read_text()
    base_paths = re.findall(r'base_path:\s*"([^"]+)"', model_config)
    assert base_paths and all(path.startswith("/models/") for path in base_paths), base_paths


def test_prometheus_scrapes_the_model_server_on_its_rest_port():
    assert dns_sd_jobs()[MODEL_SERVER] == (MODEL_SERVER, MODEL_SERVER_REST_PORT)


def test_the_view_stage_starts_once_the_model_server_serves():
    assert depends_on(stage_services()["view"]).get(MODEL_SERVER) == "service_healthy"
    assert "healthcheck" in SERVICES[MODEL_SERVER]


def test_the_gpu_override_only_swaps_the_model_server_image_and_reserves_a_gpu():
    override = read_yaml(COMPOSE_GPU)["services"]
    assert list(override) == [MODEL_SERVER]
    server = override[MODEL_SERVER]
    image = interpolate(server["image"])
    assert image.startswith("tensorflow/serving:") and image.endswith("-gpu")
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


# --- monitoring ----------------------------------------------------------------------------------------------------


def test_prometheus_mounts_compose_prometheus_where_its_command_reads_the_config():
    prometheus = SERVICES["prometheus"]
    assert mounts(prometheus).get("/etc/prometheus") == str(COMPOSE_DIR / "prometheus")
    flags = dict(arg.partition("=")[::2] for arg in command(prometheus))
    config = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    assert config.startswith("/etc/prometheus/")
    assert (COMPOSE_DIR / "prometheus" / config.removeprefix("/etc/prometheus/")).resolve() == PROMETHEUS_CONFIG
    assert 9090 in published_container_ports(prometheus)


def test_grafana_mounts_the_provisioning_and_the_dashboards_where_the_provider_looks():
    grafana = SERVICES["grafana"]
    volumes = mounts(grafana)
    assert volumes.get("/etc/grafana/provisioning") == str(COMPOSE_DIR / "grafana" / "provisioning")
    (provider,) = read_yaml(GRAFANA_DASHBOARD_PROVIDER)["providers"]
    dashboards = provider["options"]["path"]
    assert volumes.get(dashboards) == str(COMPOSE_DIR / "grafana" / "dashboards")
    env = environment(grafana)
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED") == "true" and env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert (Path(volumes[str(Path(home).parent)]) / Path(home).name).is_file(), home
    assert 3000 in published_container_ports(grafana)


def test_every_bind_mount_and_named_volume_exists():
    declared = set(COMPOSE_DOC.get("volumes") or {})
    for name, service in SERVICES.items():
        for target, source in mounts(service).items():
            if source.startswith("/"):
                # models/ is made by `make models`; its folder is in the repository.
                assert Path(source).is_dir(), f"{name}: {source} (mounted at {target}) does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


# --- the image -----------------------------------------------------------------------------------------------------


def test_the_dockerfile_builds_from_the_lock_and_runs_rhd_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in dockerfile.splitlines() if line and not line.startswith("#")]
    froms = [rest for word, *rest in instructions if word == "FROM"]
    assert froms and all(rest[0].startswith("python:3.11-slim") for rest in froms)
    assert "--no-deps -r requirements.lock" in dockerfile
    assert "grpc_tools.protoc" in dockerfile
    users = [rest[0] for word, *rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the stages must not run as root"
    assert ["ENTRYPOINT", '["rhd"]'] in instructions
    for word, *rest in instructions:
        if word == "COPY" and not rest[0].startswith("--from"):
            for source in rest[0].split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# --- two regions --------------------------------------------------------------------------------------------------


def test_the_regions_override_runs_each_stage_on_its_regions_kafka_with_its_regions_blob_store():
    regions = read_yaml(COMPOSE_REGIONS)["services"]
    assert regions["kafka-gpu"]["image"] == SERVICES["kafka"]["image"], "both regions run the Kafka the tests run"
    home = {s for s in STAGES if stage_region(s) == HOME}
    assert home == {"deid"}
    for stage in STAGES:
        env = regions[stage]["environment"]
        assert env["RHD_TWO_REGIONS"] == "true", stage
        if stage in home:
            assert "RHD_BOOTSTRAP_SERVERS" not in env, "the home region's Kafka, as in docker-compose.yml"
            assert regions[stage]["volumes"] == ["blobs-home:/blobs"]
        else:
            assert env["RHD_BOOTSTRAP_SERVERS"] == "kafka-gpu:9092" and env["RHD_REGION"] == GPU, stage
            assert {"kafka-gpu", "topics-gpu"} <= set(regions[stage]["depends_on"]), stage
            assert "volumes" not in regions[stage], f"{stage}: the GPU region's own blob store (docker-compose.yml's)"
    mounted = {v.split(":")[0] for svc in regions.values() for v in svc.get("volumes", [])}
    assert "blobs-home" in mounted and not any(
        "blobs-home" in v for s in STAGES if s not in home for v in regions[s].get("volumes", [])
    )
    assert regions["topics-gpu"]["environment"]["RHD_REGION"] == GPU
    assert regions["topics"]["environment"]["RHD_TWO_REGIONS"] == "true"


def test_mirror_maker_copies_what_the_code_says_crosses():
    service = read_yaml(COMPOSE_REGIONS)["services"]["mirror-maker"]
    assert service["image"] == SERVICES["kafka"]["image"], "MirrorMaker 2 of the same Kafka distribution"
    assert service["command"][-1] == "/config/mm2.properties" and "./mirror-maker:/config:ro" in service["volumes"]
    body = "".join(line for line in MM2_PROPERTIES.read_text().splitlines(keepends=True) if not line.startswith("#"))
    assert body == mm2_properties({HOME: "kafka:9092", GPU: "kafka-gpu:9092"})


# --- docker compose itself -----------------------------------------------------------------------------------------


def docker_compose() -> list[str]:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed: `docker compose config` not run (the checks above still ran)")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(
            "the docker compose plugin is not installed (`docker compose version` failed): "
            "`docker compose config` not run (the checks above still ran)"
        )
    return ["docker", "compose"]


@pytest.mark.parametrize(
    "files", [[COMPOSE], [COMPOSE, COMPOSE_GPU], [COMPOSE, COMPOSE_REGIONS]], ids=["cpu", "gpu", "regions"]
)
def test_docker_compose_accepts_the_file(files: list[Path], tmp_path: Path):
    """`config` reads and validates the files against the compose spec; it needs no daemon. The keys deid reads are
    a directory the operator names (never the repo's): here an empty one; Grafana's password has no default."""
    args = [arg for path in files for arg in ("-f", str(path))]
    env = {**os.environ, "RHD_SECRETS_DIR": str(tmp_path), "GRAFANA_ADMIN_PASSWORD": "chosen-by-the-operator"}
    result = subprocess.run(
        [*docker_compose(), *args, "config", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
