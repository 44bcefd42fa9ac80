"""assemble: frames.done.v1 -> studies.features.v1, once every frame is accounted for or at the deadline.

The state survives a restart without a store of its own: frames.done.v1 is its log. A partition's committed
offset never passes the first record of a study still open there, so a restarted (or newly assigned) replica
re-reads exactly the records of the open studies; the studies already emitted are read back from
studies.features.v1 (the last RHD_ASSEMBLE_REMEMBER_S of it), so replayed records of closed studies are dropped
as duplicates and no study is emitted twice.
"""

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from rhd.assemble.ops import Assembler
from rhd.runtime import metrics
from rhd.runtime.records import Output
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_DONE, STUDIES_FEATURES
from rhd.v1 import rhd_pb2 as pb

log = logging.getLogger(__name__)


class Assemble(StageService):
    name = "assemble"
    input_topic = FRAMES_DONE
    input_type = pb.FrameDone
    concurrent = False  # one state machine: records are applied in order
    tick_seconds = 1.0
    wants_position = True

    async def start(self, settings: Settings) -> None:
        self.settings = settings
        self.assembler = Assembler(settings.study_deadline_s)

    def validate(self, done: pb.FrameDone) -> str | None:
        if not _study_id(done):
            return "record without study_id"
        return None

    async def handle(self, done: pb.FrameDone, position: Position) -> list[Output]:
        duplicates = self.assembler.duplicates
        # The record's own time: a study rebuilt after a restart keeps its deadline.
        study = self.assembler.add(_study_id(done), done, position.timestamp, position.partition, position.offset)
        if self.assembler.duplicates > duplicates:
            metrics.DUPLICATES.labels(self.name).inc()
        return [_output(study)] if study is not None else []

    def tick(self, now: float) -> list[Output]:
        return [_output(study) for study in self.assembler.expire(now)]

    def committable(self, partition: int, next_offset: int) -> int:
        return self.assembler.watermark(partition, next_offset)

    async def partitions_assigned(self, partitions: set[int]) -> None:
        started = time.monotonic()
        emitted = await emitted_studies(self.settings, time.time() - self.settings.assemble_remember_s)
        self.assembler.mark_closed(emitted)
        log.info("assemble reads partitions %s; %d studies already emitted (read in %.2f s)",
                 sorted(partitions), len(emitted), time.monotonic() - started)

    async def partitions_revoked(self, partitions: set[int]) -> None:
        dropped = self.assembler.drop_partitions(partitions)
        log.info("assemble gives up partitions %s with %d open studies (their new reader rebuilds them)",
                 sorted(partitions), dropped)


async def emitted_studies(settings: Settings, since: float) -> list[str]:
    """The study_id keys of studies.features.v1 records written since `since` (epoch seconds), oldest first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, client_id="assemble-recovery")
    await consumer.start()
    try:
        await consumer.topics()  # metadata
        partitions = consumer.partitions_for_topic(STUDIES_FEATURES) or set()
        tps = [TopicPartition(STUDIES_FEATURES, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
        for tp in tps:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        emitted: list[str] = []
        # Read to the end offsets, then once more: the embedded broker's end offsets can lag behind.
        while True:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                emitted += [(r.key or b"").decode() for r in records]
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return emitted
    finally:
        await consumer.stop()


def _study_id(done: pb.FrameDone) -> str:
    return done.manifest.study_id if done.HasField("manifest") else done.result.key.study_id


def _output(study: pb.StudyFeatures) -> Output:
    if study.HasField("uploaded_at"):
        latency = time.time() - study.uploaded_at.ToMicroseconds() / 1e6
        metrics.STUDY_LATENCY.labels("assemble").observe(max(0.0, latency))
    return Output(STUDIES_FEATURES, study.study_id, study)


def build() -> StageService:
    return Assemble()
