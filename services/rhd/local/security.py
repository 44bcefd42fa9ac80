"""The broker's security for one machine (`rhd broker --kafka --secure`, the secured test stacks): a CA and the
broker's TLS certificate made with `cryptography`, one SCRAM-SHA-512 principal per service and per hospital with a
random password in a file of its own, and the ACLs every principal gets, generated from the stages' own declarations
(`rhd.runtime.topics.FLOWS`) and the hospital list. Nothing here is in the repository: it is all made at
set-up, under a directory the caller names (the stack's workdir), files 0600.

Who may do what (`acls`):
- a stage reads its input topic (in its consumer group, named after it), the output it reads back on assignment and
  its state topics; it writes its outputs and its input's dead-letter topic. Nothing else.
- a hospital writes its own upload topic (`studies.uploaded.<hospital>.v1`), so the topic a record arrives on says
  who sent it, as the broker authenticated them; it reads its own results topic (`studies.results.<hospital>.v1`,
  its diagnoses under its own ids) in a group named after itself, and nothing else.
- `results` (`rhd results --serve`, home region) reads the diagnoses and the re-link map and writes each hospital's
  results topic and the access trail.
- `rhd-topics` creates and describes the line's topics, each by name (`rhd topics`: the k8s Job and the stages'
  init containers).
- `admin`, the broker's super user, creates topics and ACLs; the operators' tools and the test harness use it.

On Kubernetes the same grants are Strimzi KafkaUser resources (`kafka_users`, written to k8s/kafka/users.yaml by
`rhd manifests kafka-users`), so a principal's name is also an object's name: lower case.
"""

import datetime as dt
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rhd.runtime.kafka import SASL_MECHANISM, sasl_password
from rhd.runtime.settings import Settings
from rhd.runtime.topics import (
    ACCESS_TRAIL,
    FLOWS,
    RESULTS_GROUP,
    STUDIES_DIAGNOSED,
    STUDIES_LINKS,
    STUDIES_UPLOADED,
    all_topic_names,
    results_topic,
    results_topics,
    transactional_prefix,
    upload_topic,
    upload_topics,
)

ADMIN = "admin"
CERT_DAYS = 825


def stage_principal(stage: str) -> str:
    return f"stage-{stage}"


def hospital_principal(hospital: str) -> str:
    """The hospital's Kafka user: a Kubernetes object's name as well (Strimzi's KafkaUser), so lower case, `-`."""
    upload_topic(hospital)  # a valid hospital id
    return f"hospital-{hospital.lower().replace('_', '-')}"


def results_principal() -> str:
    """Who delivers each hospital's results to its own topic (`rhd results --serve`, home region)."""
    return RESULTS_GROUP


def topics_principal() -> str:
    """Who creates the line's topics (`rhd topics`: the k8s Job and each stage's init container)."""
    return "rhd-topics"


@dataclass(frozen=True)
class Acl:
    principal: str  # without the User: prefix
    resource: str  # "topic" | "group" | "transactional_id"
    name: str
    operation: str  # "read" | "write" | "describe" | "create"
    pattern: str = "literal"  # or "prefixed": every name that starts with `name`


def acls(hospitals: Iterable[str]) -> list[Acl]:
    """Every grant of the line: from the stages' topic list and the hospital list (module docstring)."""
    hospitals = list(hospitals)
    grants: list[Acl] = []
    for stage, flow in FLOWS.items():
        who = stage_principal(stage)
        reads = [*flow.reads(), *(upload_topics(hospitals)[1:] if flow.input == STUDIES_UPLOADED else [])]
        for topic in reads:
            grants += [Acl(who, "topic", topic, "read"), Acl(who, "topic", topic, "describe")]
        grants.append(Acl(who, "group", stage, "read"))
        for topic in flow.writes():
            grants += [Acl(who, "topic", topic, "write"), Acl(who, "topic", topic, "describe")]
        if flow.transactional:
            prefix = transactional_prefix(stage)
            grants += [Acl(who, "transactional_id", prefix, op, "prefixed") for op in ("write", "describe")]
    principals = [hospital_principal(h) for h in hospitals]
    if len(set(principals)) != len(principals):
        raise ValueError(f"hospital ids that differ only by case or _/-: {hospitals} (one Kafka user each)")
    for hospital in hospitals:
        # Its own upload topic only: what arrives there was sent by it (deid checks the sealed hospital against it).
        who, topic = hospital_principal(hospital), upload_topic(hospital)
        grants += [Acl(who, "topic", topic, "write"), Acl(who, "topic", topic, "describe")]
        # ... and reads its own results topic, in a consumer group named after itself.
        grants += [Acl(who, "topic", results_topic(hospital), op) for op in ("read", "describe")]
        grants.append(Acl(who, "group", who, "read"))
    # Results back to each hospital: the diagnoses and the links in, each hospital's results topic and the trail out.
    who = results_principal()
    for topic in (STUDIES_DIAGNOSED, STUDIES_LINKS):
        grants += [Acl(who, "topic", topic, op) for op in ("read", "describe")]
    grants.append(Acl(who, "group", RESULTS_GROUP, "read"))
    for topic in (*results_topics(hospitals), ACCESS_TRAIL):
        grants += [Acl(who, "topic", topic, op) for op in ("write", "describe")]
    # The line's topics, each created by name (no wildcard: a topic outside the list is nobody's to create).
    grants += [
        Acl(topics_principal(), "topic", topic, op)
        for topic in all_topic_names(hospitals)
        for op in ("create", "describe")
    ]
    return list(dict.fromkeys(grants))


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner may read (0600), its folder made if missing: keys, passwords, first users."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rhd-pipeline"), x509.NameAttribute(NameOID.COMMON_NAME, common)]
    )


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ssl_config_text(key_pem: str, cert_pem: str) -> str:
    """TF Serving's SSLConfig (text format) for a gRPC server: its private key and certificate chain inline."""
    for what, pem in (("key", key_pem), ("certificate", cert_pem)):
        if "-----BEGIN " not in pem:
            raise ValueError(f"the {what} is not PEM")
    return f"server_key: {json.dumps(key_pem)}\nserver_cert: {json.dumps(cert_pem)}\n"


def write_ssl_config(key: Path, cert: Path, out: Path) -> None:
    """`rhd model-server-tls`: the SSLConfig file of a key and certificate issued elsewhere (a Kubernetes TLS Secret
    made by cert-manager or the operator), written 0600."""
    write_private(out, ssl_config_text(key.read_text(), cert.read_text()).encode())


@dataclass(frozen=True)
class Security:
    """A directory of TLS material and SCRAM passwords: tls/ca.pem (what clients trust), tls/ca.key, tls/<name>.pem
    (a server's PKCS#8 key and certificate chain), users/<principal>.password."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "ca.pem"

    def server_pem(self, name: str) -> Path:
        return self.root / "tls" / f"{name}.pem"

    def password_file(self, principal: str) -> Path:
        return self.root / "users" / f"{principal}.password"

    def password(self, principal: str) -> str:
        return self.password_file(principal).read_text().strip()

    def principals(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "users").glob("*.password"))

    @classmethod
    def create(cls, root: Path, principals: Iterable[str], servers: Iterable[str] = ("broker",)) -> "Security":
        """Make whatever is missing (never replacing a key or password): the CA, a certificate per server for
        127.0.0.1 and localhost, a password per principal (admin always)."""
        security = cls(Path(root))
        security._ca()
        for server in servers:
            security._server(server)
        for principal in (ADMIN, *principals):
            path = security.password_file(principal)
            if not path.exists():
                write_private(path, (secrets.token_urlsafe(24) + "\n").encode())
        return security

    def _ca(self) -> None:
        key_path = self.root / "tls" / "ca.key"
        if key_path.exists() and self.ca.exists():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("rhd-pipeline local CA"))
            .issuer_name(_name("rhd-pipeline local CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, _pkcs8(key))
        write_private(self.ca, cert.public_bytes(serialization.Encoding.PEM))

    def _server(self, name: str) -> None:
        path = self.server_pem(name)
        if path.exists():
            return
        ca_key = serialization.load_pem_private_key((self.root / "tls" / "ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"rhd {name}"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        pem = _pkcs8(key) + cert.public_bytes(serialization.Encoding.PEM) + self.ca.read_bytes()
        write_private(path, pem)

    def ssl_config(self, name: str) -> Path:
        """TF Serving's --ssl_config_file for a gRPC server: the text-format SSLConfig with its key and certificate
        chain inline (written beside them, 0600)."""
        pem = self.server_pem(name).read_text()
        key_end = pem.index("-----END PRIVATE KEY-----") + len("-----END PRIVATE KEY-----\n")
        path = self.root / "tls" / f"{name}.ssl_config.txt"
        write_private(path, ssl_config_text(pem[:key_end], pem[key_end:]).encode())
        return path

    def client(self, settings: Settings, principal: str) -> Settings:
        """Settings that connect as `principal` over SASL_SSL."""
        return settings.model_copy(
            update={
                "security_protocol": "SASL_SSL",
                "sasl_username": principal,
                "sasl_password": "",
                "sasl_password_file": self.password_file(principal),
                "ssl_cafile": self.ca,
            }
        )

    def client_env(self, principal: str) -> dict[str, str]:
        """The same as environment variables, for a service process."""
        return {
            "RHD_SECURITY_PROTOCOL": "SASL_SSL",
            "RHD_SASL_USERNAME": principal,
            "RHD_SASL_PASSWORD_FILE": str(self.password_file(principal).resolve()),
            "RHD_SSL_CAFILE": str(self.ca.resolve()),
        }


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """The same connection for a librdkafka client (confluent-kafka, kcat), as `rhd.runtime.kafka.connection`."""
    config = {"bootstrap.servers": settings.bootstrap_servers}
    if settings.security_protocol == "SASL_SSL":
        config.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": SASL_MECHANISM,
                "sasl.username": settings.sasl_username,
                "sasl.password": sasl_password(settings),
            }
        )
        if settings.ssl_cafile is not None:
            config["ssl.ca.location"] = str(settings.ssl_cafile)
    return config


_OPERATION = {
    "read": AclOperation.READ,
    "write": AclOperation.WRITE,
    "describe": AclOperation.DESCRIBE,
    "create": AclOperation.CREATE,
}
_RESOURCE = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
}
_PATTERN = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}


def apply_acls(admin_settings: Settings, grants: Iterable[Acl], timeout_s: float = 30.0) -> int:
    """Create the grants on the broker (as its super user); an existing one is left as it is. Returns how many."""
    bindings = [
        AclBinding(
            _RESOURCE[g.resource],
            g.name,
            _PATTERN[g.pattern],
            f"User:{g.principal}",
            "*",
            _OPERATION[g.operation],
            AclPermissionType.ALLOW,
        )
        for g in grants
    ]
    if bindings:
        client = AdminClient(librdkafka_config(admin_settings))
        for future in client.create_acls(bindings, request_timeout=timeout_s).values():
            future.result(timeout_s)
    return len(bindings)


def add_users(
    admin_settings: Settings, security: "Security", principals: Iterable[str], timeout_s: float = 30.0
) -> None:
    """SCRAM-SHA-512 credentials for principals the broker does not know yet (a new hospital, a new service)."""
    upserts = [
        UserScramCredentialUpsertion(
            p, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), security.password(p).encode()
        )
        for p in principals
    ]
    if upserts:
        client = AdminClient(librdkafka_config(admin_settings))
        for future in client.alter_user_scram_credentials(upserts, request_timeout=timeout_s).values():
            future.result(timeout_s)
