"""assemble: frames.done.v1 -> studies.features.v1, once every frame is accounted for or at the deadline.

State is held in memory: a restart re-reads nothing already committed, so studies open at that moment
close at their deadline as INCOMPLETE (explicitly, never silently).
"""

import time

from rhd.assemble.ops import Assembler
from rhd.runtime import metrics
from rhd.runtime.records import Output
from rhd.runtime.settings import Settings
from rhd.runtime.stage import StageService
from rhd.runtime.topics import FRAMES_DONE, STUDIES_FEATURES
from rhd.v1 import rhd_pb2 as pb


class Assemble(StageService):
    name = "assemble"
    input_topic = FRAMES_DONE
    input_type = pb.FrameDone
    concurrent = False  # one state machine: records are applied in order
    tick_seconds = 1.0

    async def start(self, settings: Settings) -> None:
        self.assembler = Assembler(settings.study_deadline_s)

    def validate(self, done: pb.FrameDone) -> str | None:
        if not _study_id(done):
            return "record without study_id"
        return None

    async def handle(self, done: pb.FrameDone) -> list[Output]:
        duplicates = self.assembler.duplicates
        study = self.assembler.add(_study_id(done), done, time.time())
        if self.assembler.duplicates > duplicates:
            metrics.MESSAGES.labels(self.name, "duplicate").inc()
        return [_output(study)] if study is not None else []

    def tick(self, now: float) -> list[Output]:
        return [_output(study) for study in self.assembler.expire(now)]


def _study_id(done: pb.FrameDone) -> str:
    return done.manifest.study_id if done.HasField("manifest") else done.result.key.study_id


def _output(study: pb.StudyFeatures) -> Output:
    if study.HasField("uploaded_at"):
        latency = time.time() - study.uploaded_at.ToMicroseconds() / 1e6
        metrics.STUDY_LATENCY.labels("assemble").observe(max(0.0, latency))
    return Output(STUDIES_FEATURES, study.study_id, study)


def build() -> StageService:
    return Assemble()
