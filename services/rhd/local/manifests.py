"""Kubernetes resources made from the line's own lists, so the deployment cannot drift from the code: the Strimzi
KafkaUser of every principal with the grants `rhd.local.security.acls` gives it (from `rhd.runtime.topics.FLOWS` and
the hospital list), one cluster's or one region's. `rhd manifests kafka-users` writes them; the contract tests
compare the files in k8s/ with what this makes."""

from collections.abc import Iterable

import yaml

from rhd.local.security import Acl, acls, hospital_principal, results_principal, stage_principal, topics_principal
from rhd.runtime.topics import CROSSING, FLOWS, GPU, HOME, STAGES, region_topics, stage_region

STRIMZI_API = "kafka.strimzi.io/v1"
MIRROR_PRINCIPAL = "mirror-maker"
SCALER_PRINCIPAL = "keda"
# The MirrorMaker 2 connect cluster's own topics and group (k8s/regions/*/mirror-maker.yaml: its group, its config,
# status and offset topics, and the offset-syncs it keeps on the target).
MIRROR_GROUP = "rhd-mirror"
MIRROR_INTERNAL_PREFIXES = ("rhd-mirror-", "mm2-offset-syncs.")

_OPERATIONS = {"read": "Read", "write": "Write", "describe": "Describe", "create": "Create"}
_RESOURCES = {"topic": "topic", "group": "group", "transactional_id": "transactionalId"}
_PATTERNS = {"literal": "literal", "prefixed": "prefix"}


def mirror_acls(region: str) -> list[Acl]:
    """MirrorMaker 2's grants on this region's cluster: it reads what leaves the region (no group: it assigns its
    partitions), and the connect cluster that runs here writes what comes in, with its own topics and group."""
    grants: list[Acl] = []
    for (source, target), topics in CROSSING.items():
        for topic in topics:
            if source == region:
                grants += [Acl(MIRROR_PRINCIPAL, "topic", topic, op) for op in ("read", "describe")]
            if target == region:
                grants += [Acl(MIRROR_PRINCIPAL, "topic", topic, op) for op in ("write", "describe", "create")]
    for prefix in MIRROR_INTERNAL_PREFIXES:
        grants += [
            Acl(MIRROR_PRINCIPAL, "topic", prefix, op, "prefixed") for op in ("read", "write", "describe", "create")
        ]
    grants += [Acl(MIRROR_PRINCIPAL, "group", MIRROR_GROUP, op) for op in ("read", "describe")]
    return grants


def scaler_acls(stages: Iterable[str]) -> list[Acl]:
    """KEDA's Kafka scaler (k8s/keda/): it reads each stage's lag, its group's committed offsets against the end of
    its input topic, so it may describe both and nothing more."""
    grants: list[Acl] = []
    for stage in stages:
        grants.append(Acl(SCALER_PRINCIPAL, "group", stage, "describe"))
        grants.append(Acl(SCALER_PRINCIPAL, "topic", FLOWS[stage].input, "describe"))
    return grants


def region_acls(hospitals: Iterable[str], region: str | None = None) -> list[Acl]:
    """The grants on one cluster: the whole line's (region None), or one region's: its stages, its topics (the
    hospitals upload at home) and MirrorMaker 2's."""
    hospitals = list(hospitals)
    grants = acls(hospitals)
    if region is None:
        return grants + scaler_acls(STAGES)
    if region not in (HOME, GPU):
        raise ValueError(f"region {region!r}: {HOME} or {GPU}")
    here = {stage_principal(s) for s in STAGES if stage_region(s) == region}
    here |= {hospital_principal(h) for h in hospitals} | {results_principal()} if region == HOME else set()
    topics = set(region_topics(region, hospitals))
    kept = [g for g in grants if g.principal in here]
    kept += [g for g in grants if g.principal == topics_principal() and g.name in topics]
    return kept + scaler_acls(s for s in STAGES if stage_region(s) == region) + mirror_acls(region)


def kafka_users(
    hospitals: Iterable[str], region: str | None = None, cluster: str = "rhd", namespace: str = "rhd"
) -> list[dict]:
    """One Strimzi KafkaUser (SCRAM-SHA-512, simple authorization) per principal, its ACLs grouped by resource.
    Strimzi makes each user's password into a Secret of the user's name (key `password`)."""
    by_principal: dict[str, dict[tuple[str, str, str], list[str]]] = {}
    for g in region_acls(hospitals, region):
        ops = by_principal.setdefault(g.principal, {}).setdefault((g.resource, g.name, g.pattern), [])
        ops.append(_OPERATIONS[g.operation])
    return [
        {
            "apiVersion": STRIMZI_API,
            "kind": "KafkaUser",
            "metadata": {
                "name": principal,
                "namespace": namespace,
                "labels": {"strimzi.io/cluster": cluster, "app.kubernetes.io/component": "kafka-user"},
            },
            "spec": {
                "authentication": {"type": "scram-sha-512"},
                "authorization": {
                    "type": "simple",
                    "acls": [
                        {
                            "resource": {
                                "type": _RESOURCES[resource],
                                "name": name,
                                "patternType": _PATTERNS[pattern],
                            },
                            "operations": sorted(set(ops)),
                            "host": "*",
                        }
                        for (resource, name, pattern), ops in grants.items()
                    ],
                },
            },
        }
        for principal, grants in by_principal.items()
    ]


def kafka_users_yaml(hospitals: Iterable[str], region: str | None = None, cluster: str = "rhd") -> str:
    hospitals = list(hospitals)
    command = f"rhd manifests kafka-users{f' --region {region}' if region else ''}"
    head = (
        f"# Generated by `{command}` from the stages' topic list (rhd.runtime.topics.FLOWS)\n"
        f"# and the hospitals {', '.join(hospitals) or '(none)'} (RHD_HOSPITALS): every principal of "
        f"{f'the {region} region' if region else 'the cluster'} with exactly its\n"
        "# grants (rhd.local.security, rhd.local.manifests). Do not edit: regenerate; the contract tests compare.\n"
    )
    return head + yaml.safe_dump_all(kafka_users(hospitals, region, cluster), sort_keys=False, explicit_start=True)
