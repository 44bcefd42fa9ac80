"""MirrorMaker 2 between the two regions' clusters, as Apache Kafka ships it (`connect-mirror`, in kafka/pom.xml),
in dedicated mode: the de-identified studies out of the home region to the GPU region, the diagnoses back; nothing
else (`rhd.runtime.topics.CROSSING`). Topic names are kept (IdentityReplicationPolicy), the topics' configs and
ACLs are not copied, no consumer offsets, checkpoints or heartbeats are emitted: only the records of those topics
cross."""

import logging
import re
import subprocess
from pathlib import Path

from rhd.local.broker import KafkaBroker, stop_process
from rhd.runtime.topics import CROSSING, GPU, HOME

log = logging.getLogger(__name__)

MIRROR_MAKER_MAIN = "org.apache.kafka.connect.mirror.MirrorMaker"


def mm2_properties(bootstrap: dict[str, str], crossing: dict[tuple[str, str], tuple[str, ...]] = CROSSING) -> str:
    """The dedicated-mode configuration: one replication flow per direction, each an allow-list of exact topic
    names (regular expressions anchored by MirrorMaker, dots escaped here)."""
    lines = [f"clusters = {', '.join(bootstrap)}"]
    lines += [f"{name}.bootstrap.servers = {servers}" for name, servers in bootstrap.items()]
    for (source, target), topics in crossing.items():
        lines += [
            f"{source}->{target}.enabled = true",
            f"{source}->{target}.topics = {'|'.join(re.escape(t) for t in topics)}",
        ]
    lines += [
        "replication.policy.class = org.apache.kafka.connect.mirror.IdentityReplicationPolicy",
        # One node per cluster here; a production cluster keeps its defaults (3).
        "replication.factor = 1",
        "offset-syncs.topic.replication.factor = 1",
        "offset.storage.replication.factor = 1",
        "status.storage.replication.factor = 1",
        "config.storage.replication.factor = 1",
        "checkpoints.topic.replication.factor = 1",
        "heartbeats.topic.replication.factor = 1",
        "emit.checkpoints.enabled = false",
        "emit.heartbeats.enabled = false",
        "sync.group.offsets.enabled = false",
        "refresh.groups.enabled = false",
        "sync.topic.configs.enabled = false",
        "sync.topic.acls.enabled = false",
        "refresh.topics.interval.seconds = 5",
    ]
    return "\n".join(lines) + "\n"


class MirrorMaker:
    """A MirrorMaker 2 process between a home-region and a GPU-region cluster (brokers of our own, plaintext)."""

    def __init__(self, home: KafkaBroker, gpu: KafkaBroker, workdir: Path, log_file: Path | None = None) -> None:
        self.home, self.gpu, self.workdir, self.log_file = home, gpu, Path(workdir), log_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mm2.properties"
        config.write_text(mm2_properties({HOME: self.home.bootstrap_servers, GPU: self.gpu.bootstrap_servers}))
        log4j = self.workdir / "log4j2.properties"
        log4j.write_text((self.home.data_dir / "log4j2.properties").read_text())
        java = self.home.java_options(log4j, heap="256m")
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [*java, MIRROR_MAKER_MAIN, str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.info("MirrorMaker 2 %s -> %s, pid %d", HOME, GPU, self.process.pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_process(self.process, timeout_s)
