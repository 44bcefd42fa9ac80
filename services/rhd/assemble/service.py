"""assemble: frames.done.v1 -> studies.features.v1, once every frame is accounted for or at the deadline.

The state survives a restart without a store of its own: frames.done.v1 is its log. A partition's committed
offset never passes the first record of a study still open there, so a restarted (or newly assigned) replica
re-reads exactly the records of the open studies; the studies already emitted are read back by the runner from
studies.features.v1 (the last RHD_ASSEMBLE_REMEMBER_S of it), so replayed records of closed studies are dropped
as duplicates and no study is emitted twice.
"""

import logging

from rhd.assemble.ops import Assembler, study_of
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
    written_topic = STUDIES_FEATURES

    async def start(self, settings: Settings) -> None:
        self.assembler = Assembler(settings.study_deadline_s)
        self.written_window_s = settings.assemble_remember_s

    def validate(self, done: pb.FrameDone) -> str | None:
        return None if study_of(done) else "record without study_id"

    async def handle(self, done: pb.FrameDone, at: Position) -> list[Output]:
        duplicates = self.assembler.duplicates
        # The record's own time: a study rebuilt after a restart keeps its deadline.
        study = self.assembler.add(study_of(done), done, at.timestamp, at.partition, at.offset)
        if self.assembler.duplicates > duplicates:
            metrics.DUPLICATES.labels(self.name).inc()
        return self._emitted([study] if study is not None else [])

    def tick(self, now: float) -> list[Output]:
        return self._emitted(self.assembler.expire(now))

    def _emitted(self, studies: list[pb.StudyFeatures]) -> list[Output]:
        for study in studies:
            metrics.observe_study_latency(self.name, study.uploaded_at if study.HasField("uploaded_at") else None)
        return [Output(STUDIES_FEATURES, study.study_id, study) for study in studies]

    def committable(self, partition: int, next_offset: int) -> int:
        return self.assembler.watermark(partition, next_offset)

    async def partitions_assigned(self, partitions: set[int], written: list[str]) -> None:
        self.assembler.mark_closed(written)
        log.info("assemble reads partitions %s; %d studies already emitted", sorted(partitions), len(written))

    async def partitions_revoked(self, partitions: set[int]) -> None:
        dropped = self.assembler.drop_partitions(partitions)
        log.info("assemble gives up partitions %s with %d open studies (their new reader rebuilds them)",
                 sorted(partitions), dropped)


def build() -> StageService:
    return Assemble()
