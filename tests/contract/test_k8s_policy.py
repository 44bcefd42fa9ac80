"""The deployment's policies, from the code's own lists: every Kafka principal a Strimzi KafkaUser generated from the
stages' topic list and the hospital list, each pod authenticating as its own over SASL_SSL; a network that denies by
default and opens only the line's paths; a disruption budget per workload; identifiable data pinned to the home
region, and the two regions' builds holding exactly their region's part of the line."""

import inspect
import json
import re
from pathlib import Path

import yaml
from rhd.local.manifests import MIRROR_PRINCIPAL, SCALER_PRINCIPAL, kafka_users_yaml
from rhd.local.security import hospital_principal, results_principal, stage_principal, topics_principal
from rhd.runtime.topics import (
    ACCESS_TRAIL,
    CROSSING,
    FLOWS,
    GPU,
    HOME,
    STAGES,
    STUDIES_DIAGNOSED,
    STUDIES_LINKS,
    results_topic,
    stage_region,
    upload_topic,
    upload_topics,
)
from test_k8s import (
    K8S,
    LINE,
    REGIONS,
    Doc,
    config,
    containers,
    http_port,
    kustomize,
    load_docs,
    mounts,
    objects,
    of_kind,
    only,
    pod_spec,
    stage_class,
    stage_deployments,
)

REGION_LABEL = "rhd.example/region"
RESULTS = "results"  # `rhd results --serve`: home region, not a stage
USER_MOUNT = "/run/secrets/kafka-user"
CA_MOUNT = "/run/secrets/kafka-ca"
CA_SECRET = "rhd-cluster-ca-cert"
MODEL_SERVER_GRPC = 8500


def hospitals() -> list[str]:
    return json.loads(config()["RHD_HOSPITALS"])


def users(path: Path) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in load_docs(path) if d["kind"] == "KafkaUser"}


def grants(user: Doc) -> dict[tuple[str, str, str], set[str]]:
    """(resource type, name, pattern) -> operations."""
    return {
        (acl["resource"]["type"], acl["resource"]["name"], acl["resource"]["patternType"]): set(acl["operations"])
        for acl in user["spec"]["authorization"]["acls"]
    }


def env(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def secret_at(doc: Doc, container: Doc, path: str) -> str:
    volume, read_only = mounts(doc, container)[path]
    assert read_only, f"{doc['metadata']['name']}: {path} is writable"
    return volume["secret"]["secretName"]


def model_clients() -> set[str]:
    """The stages whose service calls the model server (their module imports the gRPC client)."""
    return {s for s in STAGES if "rhd.runtime.model_client" in inspect.getsource(inspect.getmodule(stage_class(s)))}


def selected(policy: Doc) -> set[str] | None:
    """The app names a policy's pod selector picks; None: every pod."""
    selector = policy["spec"]["podSelector"]
    if not selector:
        return None
    names = set(selector.get("matchLabels", {}).get("app.kubernetes.io/name", "").split()) - {""}
    for expr in selector.get("matchExpressions", []):
        assert expr["key"] == "app.kubernetes.io/name" and expr["operator"] == "In", expr
        names |= set(expr["values"])
    return names or {"<" + ",".join(f"{k}={v}" for k, v in selector.get("matchLabels", {}).items()) + ">"}


# --- Kafka users ---------------------------------------------------------------------------------------------------


def test_the_kafka_users_are_generated_from_the_stage_list_and_the_hospitals():
    assert (K8S / "kafka" / "users.yaml").read_text() == kafka_users_yaml(hospitals()), "rhd manifests kafka-users"
    for region, folder in REGIONS.items():
        assert (folder / "kafka" / "users.yaml").read_text() == kafka_users_yaml(hospitals(), region), region


def test_each_user_may_do_only_what_its_place_in_the_line_needs():
    found = users(K8S / "kafka" / "users.yaml")
    expected = {stage_principal(s) for s in STAGES} | {hospital_principal(h) for h in hospitals()}
    assert set(found) == expected | {topics_principal(), SCALER_PRINCIPAL, results_principal()}
    for user in found.values():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "rhd"
        for (kind, name, pattern), ops in grants(user).items():
            assert "All" not in ops and name not in ("*", ""), (user["metadata"]["name"], name)
            assert pattern == "literal" or kind == "transactionalId", (user["metadata"]["name"], name)
    for stage, flow in FLOWS.items():
        mine = grants(found[stage_principal(stage)])
        reads = {name for (kind, name, _), ops in mine.items() if kind == "topic" and "Read" in ops}
        writes = {name for (kind, name, _), ops in mine.items() if kind == "topic" and "Write" in ops}
        extra = set(upload_topics(hospitals())) if stage == "deid" else set()
        assert reads == set(flow.reads()) | extra, stage
        assert writes == set(flow.writes()), stage
        assert {name for kind, name, _ in mine if kind == "group"} == {stage}, "its own consumer group only"
        assert bool({k for k in mine if k[0] == "transactionalId"}) == flow.transactional, stage
    for hospital in hospitals():
        who = hospital_principal(hospital)
        assert grants(found[who]) == {
            ("topic", upload_topic(hospital), "literal"): {"Describe", "Write"},
            ("topic", results_topic(hospital), "literal"): {"Describe", "Read"},
            ("group", who, "literal"): {"Read"},
        }, "a hospital writes its own upload topic and reads its own results, nothing else"
    delivery = grants(found[results_principal()])
    assert {name for (kind, name, _), ops in delivery.items() if kind == "topic" and "Write" in ops} == {
        *(results_topic(h) for h in hospitals()),
        ACCESS_TRAIL,
    }
    assert {name for (kind, name, _), ops in delivery.items() if kind == "topic" and "Read" in ops} == {
        STUDIES_DIAGNOSED,
        STUDIES_LINKS,
    }
    assert all(ops == {"Create", "Describe"} for ops in grants(found[topics_principal()]).values())
    assert all(ops == {"Describe"} for ops in grants(found[SCALER_PRINCIPAL]).values())


def test_every_pod_authenticates_as_its_own_user_over_sasl_ssl():
    settings = config()
    assert settings["RHD_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert settings["RHD_SASL_PASSWORD_FILE"] == f"{USER_MOUNT}/password"
    assert settings["RHD_SSL_CAFILE"] == f"{CA_MOUNT}/ca.crt"
    kafka = only("Kafka", "rhd", load_docs(K8S / "kafka" / "cluster" / "kafka.yaml"))
    [listener] = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"
    assert settings["RHD_BOOTSTRAP_SERVERS"] == f"rhd-kafka-bootstrap.kafka.svc:{listener['port']}"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple", "ACLs enforced"
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    assert kafka["spec"]["entityOperator"]["userOperator"]["watchedNamespace"] == "rhd", "secrets beside the pods"
    known = set(users(K8S / "kafka" / "users.yaml"))
    workloads = [
        *stage_deployments().items(),
        ("topics", only("Job", "topics")),
        (RESULTS, only("Deployment", RESULTS)),
    ]
    for name, doc in workloads:
        for container in containers(doc):
            user = env(container)["RHD_SASL_USERNAME"]
            mains = {RESULTS: results_principal(), **{s: stage_principal(s) for s in STAGES}}
            own = mains[name] if container["name"] == name and name in mains else topics_principal()
            assert user == own and user in known, (name, container["name"], user)
            assert secret_at(doc, container, USER_MOUNT) == user, "Strimzi's Secret of that user"
            assert secret_at(doc, container, CA_MOUNT) == CA_SECRET
    keda = {d["metadata"]["name"]: d for d in objects(K8S / "keda")}
    assert keda["keda-kafka"]["data"]["username"] == SCALER_PRINCIPAL in known
    assert {r["name"] for r in keda["kafka"]["spec"]["secretTargetRef"]} == {SCALER_PRINCIPAL, CA_SECRET}


# --- the network ---------------------------------------------------------------------------------------------------


def test_the_namespace_denies_by_default_and_opens_only_the_lines_paths():
    policies = of_kind("NetworkPolicy")
    deny = policies["default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    egress: dict[str, set] = {}
    ingress: dict[str, set] = {}
    for name, policy in policies.items():
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to") and rule.get("ports"), f"{name}: an egress rule open to anywhere or any port"
            for peer in rule["to"]:
                assert "ipBlock" not in peer, f"{name}: an address range"
            egress[name] = {p["port"] for p in rule["ports"]}
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from") and rule.get("ports"), f"{name}: an ingress rule open to anyone or any port"
            ingress[name] = {p["port"] for p in rule["ports"]}
    assert set(policies) == {"default-deny", "dns", "kafka-clients", "model-clients", "model-server", "prometheus"}
    assert selected(policies["dns"]) is None and egress["dns"] == {53}
    assert selected(policies["kafka-clients"]) == set(STAGES) | {"topics", RESULTS} and egress["kafka-clients"] == {
        9093
    }
    assert selected(policies["model-clients"]) == model_clients() == {"view", "valve"}
    assert egress["model-clients"] == ingress["model-server"] == {MODEL_SERVER_GRPC}
    [peer] = policies["model-server"]["spec"]["ingress"][0]["from"]
    assert set(peer["podSelector"]["matchExpressions"][0]["values"]) == model_clients()
    assert ingress["prometheus"] == {http_port(), 8501}, "metrics only"
    [peer] = policies["prometheus"]["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


def test_every_workload_has_a_disruption_budget_of_one_pod():
    budgets = of_kind("PodDisruptionBudget")
    deployments = of_kind("Deployment")
    assert set(budgets) == set(deployments)
    for name, budget in budgets.items():
        assert budget["spec"] == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": deployments[name]["spec"]["selector"]["matchLabels"]},
        }, name


# --- the regions ---------------------------------------------------------------------------------------------------


def test_identifiable_data_is_read_only_in_the_home_region():
    home = config()["RHD_HOME_REGION"]
    for stage, doc in stage_deployments().items():
        region = stage_region(stage)
        assert doc["metadata"]["labels"][REGION_LABEL] == region
        assert stage_class(stage).identifiable == (region == HOME), f"{stage}: reads identifiable data at home only"
        terms = (
            pod_spec(doc)
            .get("affinity", {})
            .get("nodeAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms", [])
        )
        pinned = [e for t in terms for e in t["matchExpressions"] if e["key"] == REGION_LABEL]
        if region == HOME:
            assert pinned == [{"key": REGION_LABEL, "operator": "In", "values": [home]}], stage
            assert env(containers(doc, init=False)[0])["RHD_REGION"] == home


def test_each_region_builds_its_part_of_the_line_and_mirrors_only_what_crosses():
    home = config()["RHD_HOME_REGION"]
    for region, folder in REGIONS.items():
        built = kustomize(folder)
        kinds = {(d["kind"], d["metadata"]["name"]): d for d in built}
        deployments = {name for kind, name in kinds if kind == "Deployment"}
        expected = {s for s in STAGES if stage_region(s) == region} | ({"model-server"} if region == GPU else {RESULTS})
        assert deployments == expected, region
        settings = kinds[("ConfigMap", "rhd-config")]["data"]
        assert settings["RHD_TWO_REGIONS"] == "true"
        assert (settings["RHD_REGION"] == home) == (region == HOME), "the home region's pods say they are home"
        incoming = [t for (_, target), topics in CROSSING.items() if target == region for t in topics]
        [mirror] = [d for d in built if d["kind"] == "KafkaMirrorMaker2"]
        [flow] = mirror["spec"]["mirrors"]
        assert mirror["spec"]["target"]["alias"] == region and flow["source"]["alias"] != region
        assert re.fullmatch(flow["topicsPattern"], incoming[0]) and flow["topicsPattern"] == re.escape(incoming[0])
        assert len(incoming) == 1
        config_ = flow["sourceConnector"]["config"]
        assert config_["replication.policy.class"].endswith("IdentityReplicationPolicy")
        assert config_["sync.topic.acls.enabled"] == "false" and config_["sync.topic.configs.enabled"] == "false"
        for side in (mirror["spec"]["target"], flow["source"]):
            assert side["authentication"]["type"] == "scram-sha-512" and side["authentication"]["username"] == (
                MIRROR_PRINCIPAL
            )
            assert side["tls"]["trustedCertificates"], "TLS both ways"
        region_users = set(users(folder / "kafka" / "users.yaml"))
        identifiable = {hospital_principal(h) for h in hospitals()} | {stage_principal("deid"), results_principal()}
        assert identifiable <= region_users if region == HOME else not identifiable & region_users
        assert MIRROR_PRINCIPAL in region_users
        cluster = kustomize(folder / "kafka")
        [kafka] = [d for d in cluster if d["kind"] == "Kafka"]
        listeners = kafka["spec"]["kafka"]["listeners"]
        assert all(x["tls"] and x["authentication"]["type"] == "scram-sha-512" for x in listeners)
        assert {x["port"] for x in listeners} == {9093, 9094}
        assert yaml.safe_dump(sorted(region_users)) == yaml.safe_dump(
            sorted(d["metadata"]["name"] for d in cluster if d["kind"] == "KafkaUser")
        )


def test_the_line_on_one_cluster_pins_no_region_but_the_home_one():
    """One cluster: the GPU-side stages may run on any node; only deid is held to the home region's nodes."""
    pinned = {
        name
        for name, doc in of_kind("Deployment", objects(LINE)).items()
        if "affinity" in pod_spec(doc) and "nodeAffinity" in pod_spec(doc)["affinity"]
    }
    assert pinned == {s for s in STAGES if stage_region(s) == HOME} | {RESULTS}


def test_grpc_to_the_model_server_is_tls_with_its_certificate_checked_by_each_client():
    deployment = only("Deployment", "model-server")
    [server] = containers(deployment, init=False)
    [init] = pod_spec(deployment)["initContainers"]
    [flag] = [a for a in server["args"] if a.startswith("--ssl_config_file=")]
    config_path = flag.partition("=")[2]
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    # The init container writes the SSLConfig from the TLS Secret into a memory volume the server reads.
    assert init["args"][:1] == ["model-server-tls"] and init["args"][init["args"].index("--out") + 1] == config_path
    ssl_volume, _ = mounts(deployment, server)[str(Path(config_path).parent)]
    assert ssl_volume["emptyDir"]["medium"] == "Memory"
    tls_secret = volumes["tls"]["secret"]["secretName"]
    assert {i["key"] for i in volumes["tls"]["secret"]["items"]} == {"tls.key", "tls.crt"}
    for stage in model_clients():
        doc = stage_deployments()[stage]
        [main] = containers(doc, init=False)
        ca = env(main)["RHD_MODEL_SERVER_CA"]
        volume, read_only = mounts(doc, main)[str(Path(ca).parent)]
        assert read_only and volume["secret"]["secretName"] == tls_secret, stage
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": Path(ca).name}], f"{stage}: the CA, no key"


def test_every_long_running_pod_has_probes_limits_and_runs_as_non_root():
    for name, doc in of_kind("Deployment").items():
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in containers(doc):
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits), f"{name}/{container['name']}: no limit"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
        for container in containers(doc, init=False):
            assert {"livenessProbe", "readinessProbe"} <= set(container), f"{name}: a probe is missing"
