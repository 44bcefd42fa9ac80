"""assemble: frames.done.v1 -> studies.features.v1, once every frame is accounted for or at the deadline.

Its state is rebuilt from frames.done.v1 after a restart (the commit is held at the oldest open study's first
record) and from the studies it already emitted, read back from studies.features.v1 (RHD_ASSEMBLE_REMEMBER_S).
"""

from rhd.assemble.ops import Assembler, study_of
from rhd.runtime import metrics
from rhd.runtime.records import Output, dead_letter_output
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_DONE, STUDIES_FEATURES
from rhd.v1 import rhd_pb2 as pb


class Assemble(StageService, name="assemble", input_topic=FRAMES_DONE, input_type=pb.FrameDone):
    concurrent = False  # one state machine: records are applied in order
    tick_seconds = 1.0  # deadlines
    written_topic = STUDIES_FEATURES  # read back before each assignment: the studies already emitted

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
        studies, strays = self.assembler.expire(now)
        letters = [
            dead_letter_output(
                FRAMES_DONE,
                self.name,
                f"{records} frame results for a study the line never registered (no manifest from split within "
                f"{self.assembler.deadline_s:.0f} s): not a study, no diagnosis",
                key=study_id.encode(),
                error_type="stray",
                study_id=study_id,
            )
            for study_id, records in strays
        ]
        return [*letters, *self._emitted(studies)]

    def _emitted(self, studies: list[pb.StudyFeatures]) -> list[Output]:
        for study in studies:
            metrics.observe_study_latency(self.name, study)
        return [Output(STUDIES_FEATURES, study.study_id, study) for study in studies]

    def committable(self, partition: int, next_offset: int) -> int:
        return self.assembler.watermark(partition, next_offset)

    async def partitions_assigned(self, partitions: set[int], written: list[str]) -> None:
        self.assembler.mark_closed(written)

    async def partitions_revoked(self, partitions: set[int]) -> None:
        self.assembler.drop_partitions(partitions)  # their open studies: their new reader rebuilds them


def build() -> StageService:
    return Assemble()
