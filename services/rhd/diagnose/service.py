"""diagnose: studies.features.v1 -> studies.diagnosed.v1 (per-criterion estimates combined by the WHF rules, with
the measurements each rests on)."""

import logging
import time
from collections import OrderedDict

from rhd.diagnose.ops import MODEL_NAME, diagnose, load_study_model, referral
from rhd.labels import CLASSES
from rhd.modelstore import version_dir
from rhd.runtime import metrics
from rhd.runtime.records import Output, now
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import STUDIES_DIAGNOSED, STUDIES_FEATURES
from rhd.v1 import rhd_pb2 as pb

log = logging.getLogger(__name__)
MODEL_CHECK_S = 10.0  # how soon a promoted study model serves

LABELS = {name: pb.Label.Value(f"LABEL_{name.upper()}") for name in CLASSES}
REMEMBER_STUDIES = 1_000_000  # study ids kept to drop a replayed record (about 100 MB at most)
NOTHING_READ = "no diagnosis possible: not one frame of the study could be analysed"


class Diagnose(StageService, name="diagnose", input_topic=STUDIES_FEATURES, input_type=pb.StudyFeatures):
    concurrent = False  # a study's record delivered twice in one batch is still diagnosed once
    written_topic = STUDIES_DIAGNOSED  # read back before each assignment: the studies already diagnosed

    async def start(self, settings: Settings) -> None:
        self.models_dir = settings.models_dir
        self.model = load_study_model(settings.models_dir)
        self.model_checked = time.monotonic()
        self.written_window_s = settings.assemble_remember_s
        self.diagnosed: OrderedDict[str, None] = OrderedDict()
        metrics.set_build_info(self.name, study_model=self.model.version)

    def validate(self, study: pb.StudyFeatures) -> str | None:
        return None if study.study_id else "study features without study_id"

    async def partitions_assigned(self, partitions: set[int], written: list[str]) -> None:
        for study_id in written:
            self._remember(study_id)

    def _follow_promotion(self) -> None:
        """The promoted study model serves (models/promotions.json, checked every MODEL_CHECK_S): a promotion or a
        rollback reaches the next studies without a restart. A version that cannot be loaded leaves the one serving."""
        if time.monotonic() - self.model_checked < MODEL_CHECK_S:
            return
        self.model_checked = time.monotonic()
        try:
            wanted = version_dir(self.models_dir, MODEL_NAME)  # the promoted version, else the latest
            if f"{MODEL_NAME}/{wanted.name}" != self.model.version:
                self.model = load_study_model(self.models_dir, int(wanted.name))
                metrics.set_build_info(self.name, study_model=self.model.version)
                log.info("diagnose now serves study model %s", self.model.version)
        except (OSError, ValueError) as exc:
            log.error("the promoted study model cannot be loaded (%s): %s keeps serving", exc, self.model.version)

    def _remember(self, study_id: str) -> None:
        self.diagnosed[study_id] = None
        self.diagnosed.move_to_end(study_id)
        while len(self.diagnosed) > REMEMBER_STUDIES:
            self.diagnosed.popitem(last=False)

    def handle(self, study: pb.StudyFeatures, at: Position) -> list[Output]:
        """One diagnosis per study: a record replayed (a restart, a rebalance, a dead letter replayed) or published
        again gets none."""
        if study.study_id in self.diagnosed:
            metrics.DUPLICATES.labels(self.name).inc()
            return []
        self._remember(study.study_id)
        self._follow_promotion()
        if study.completeness != pb.COMPLETENESS_FAILED and not study.frames.analysed:
            # Nothing of the study was read: a label would come from a vector of zeros. Say so instead.
            failed = pb.StudyFeatures()
            failed.CopyFrom(study)
            failed.completeness = pb.COMPLETENESS_FAILED
            failed.reason = "; ".join(r for r in (NOTHING_READ, study.reason) if r)
            study = failed
        diagnosis = pb.Diagnosis(
            study_id=study.study_id,
            model_version=self.model.version,
            completeness=study.completeness,
            reason=study.reason,
            frames=study.frames,
            uploaded_at=study.uploaded_at,
            diagnosed_at=now(),
        )
        if study.completeness != pb.COMPLETENESS_FAILED:
            referred = referral(study.clinical, study.features.names, study.features.values)
            if referred is not None:
                diagnosis.referred, diagnosis.referral = True, referred.reason
            if referred is None or referred.scored:
                self._score(diagnosis, study, label=referred is None)
        metrics.observe_study_latency(self.name, study)
        return [Output(STUDIES_DIAGNOSED, study.study_id, diagnosis)]

    def _score(self, diagnosis: pb.Diagnosis, study: pb.StudyFeatures, label: bool) -> None:
        """The criteria's estimates, the class probabilities and (unless referred) the label."""
        read_on = {e.feature: (e.video_id, e.frame_index) for e in study.evidence}
        result = diagnose(self.model, study.features.names, study.features.values, read_on)
        if label:
            diagnosis.label = LABELS[result.label]
        diagnosis.probabilities.update(result.probabilities)
        for name, value, contribution in result.evidence:
            diagnosis.evidence.add(name=name, value=value, contribution=contribution)
        for c in result.criteria:
            diagnosis.criteria.add(
                criterion=c.name,
                probability=c.probability,
                met=c.probability >= 0.5,
                measurements=c.measurements,
                frames=[pb.EvidenceFrame(feature=m, video_id=v, frame_index=i) for m, (v, i) in c.frames.items()],
            )

    def failed(self, study: pb.StudyFeatures, reason: str) -> list[Output]:
        # A study whose features cannot be classified still gets its one diagnosis: FAILED, with why.
        diagnosis = pb.Diagnosis(
            study_id=study.study_id,
            completeness=pb.COMPLETENESS_FAILED,
            frames=study.frames,
            reason=f"diagnose failed: {reason}",
            uploaded_at=study.uploaded_at,
            diagnosed_at=now(),
        )
        return [Output(STUDIES_DIAGNOSED, study.study_id, diagnosis)]


def build() -> StageService:
    return Diagnose()
