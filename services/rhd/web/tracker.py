"""What the page knows of the line, read from it as it runs: every study's frames accounted per stage, its
diagnosis (filed in the database under the hospital's own study id and accession number once its sealed link is
read: the home region holds the link keyring) and the dead letters.

One consumer of its own (a group per process, from the beginning of the topics), for as long as the app runs.
"""

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError

from rhd.runtime import kafka
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DONE, STUDIES_DIAGNOSED, STUDIES_FEATURES, STUDIES_LINKS, TOPICS, dlq
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.console import completeness_name, label_name
from rhd.watch.figures import Progress, home_links
from rhd.web.db import PSEUDONYMOUS, Database
from rhd.web.drift import DriftMonitor, StudySummary

log = logging.getLogger(__name__)

# The stages that end a frame (its terminal record names one), in the order a frame meets them.
TERMINAL_STAGES = ("split", "inspect", "spectral", "features", "valve")
MAX_LETTERS = 500  # dead letters kept for the operators' page (the newest)
MAX_DIAGNOSED = 2_000  # diagnosed studies whose frame-by-frame progress is kept (the database keeps the rest)


@dataclass
class StudyProgress:
    expected: int = 0  # frames in its manifest (0 until split has read it)
    by_stage: Counter = field(default_factory=Counter)  # terminal stage -> frames ended there
    by_status: Counter = field(default_factory=Counter)  # analysed / skipped / failed
    by_view: Counter = field(default_factory=Counter)  # view label -> frames the view model read as it
    frames: set = field(default_factory=set)  # (video, index) ended, duplicates once

    def accounted(self) -> int:
        return len(self.frames)


class LineTracker:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.progress = Progress(links=home_links(settings))
        self.by_pseudonym: dict[str, StudyProgress] = {}
        self.letters: list[pb.DeadLetter] = []
        self.saved: dict[str, int] = {}  # pseudonym -> diagnoses saved, oldest first
        self.drift = DriftMonitor()
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def relinks(self) -> bool:
        """Whether this process holds the link keyring (home region): results under the hospitals' own ids."""
        return self.progress.links is not None

    def pseudonym_of(self, hospital: str, study_id: str) -> str | None:
        if hospital == PSEUDONYMOUS:  # filed outside the home region: its id is its pseudonym
            return study_id
        for pseudonym, seen in self.progress.ids_seen.items():
            if seen == (hospital, study_id):
                return pseudonym
        return None

    def study_progress(self, hospital: str, study_id: str) -> StudyProgress | None:
        pseudonym = self.pseudonym_of(hospital, study_id)
        return self.by_pseudonym.get(pseudonym) if pseudonym else None

    def add(self, topic: str, value: bytes | None, key: bytes | None) -> None:
        self.progress.add(topic, value, key)
        if topic == FRAMES_DONE and value:
            done = pb.FrameDone.FromString(value)
            if done.HasField("manifest"):
                mine = self.by_pseudonym.setdefault(done.manifest.study_id, StudyProgress())
                mine.expected = sum(v.frame_count for v in done.manifest.videos)
            else:
                result = done.result
                mine = self.by_pseudonym.setdefault(result.key.study_id, StudyProgress())
                frame = (result.key.video_id, result.key.frame_index)
                if frame not in mine.frames:
                    mine.frames.add(frame)
                    mine.by_stage[result.stage] += 1
                    mine.by_status[pb.FrameStatus.Name(result.status).removeprefix("FRAME_STATUS_").lower()] += 1
                    if result.view.label:
                        mine.by_view[result.view.label] += 1
        elif topic.endswith(".dlq") and value:
            self.letters = [*self.letters[-(MAX_LETTERS - 1) :], pb.DeadLetter.FromString(value)]

    def file_diagnoses(self) -> int:
        """Save each diagnosis: at home, once its study's link is known, under the hospital's ids; elsewhere under
        its pseudonym alone (no hospital, no accession number). How many were saved."""
        saved = 0
        links = self.progress.link_map
        for diagnoses in self.progress.diagnoses.values():
            diagnosis = diagnoses[-1]  # the newest, when a study was sent again
            pseudonym = diagnosis.study_id
            link = links.get(pseudonym) if self.relinks else {"hospital_id": PSEUDONYMOUS, "study_id": pseudonym}
            if link is None or self.saved.get(pseudonym, 0) >= len(diagnoses):
                continue
            hospital, study_id = str(link.get("hospital_id", "")), str(link["study_id"])
            at = diagnosis.diagnosed_at.ToSeconds() if diagnosis.HasField("diagnosed_at") else time.time()
            label = "referred" if diagnosis.referred else label_name(diagnosis.label)
            self.db.diagnosed(
                hospital,
                study_id,
                pseudonym,
                str(link.get("accession_number", "")),
                label,
                completeness_name(diagnosis.completeness),
                diagnosis.SerializeToString(),
                at,
            )
            self.saved[pseudonym] = len(diagnoses)
            saved += 1
            assembled = self.progress.studies.get(self.progress.names.get(pseudonym, pseudonym))
            device = assembled[-1].clinical.get("device", "") if assembled else ""
            mine = self.by_pseudonym.get(pseudonym, StudyProgress())
            self.drift.add(hospital, device, StudySummary(Counter(mine.by_view), Counter(mine.by_stage), label))
        self._forget_oldest()
        return saved

    def _forget_oldest(self) -> None:
        """A stack that runs for days keeps the frame-by-frame progress of its last MAX_DIAGNOSED diagnosed studies
        only: memory stays bounded; the page shows an older study's counts from its diagnosis."""
        diagnosed = [p for p in self.saved if p in self.by_pseudonym]
        for pseudonym in diagnosed[: max(0, len(diagnosed) - MAX_DIAGNOSED)]:
            name = self.progress.names.get(pseudonym, pseudonym)
            for table in (self.progress.frame_records, self.progress.expected_frames, self.progress.studies):
                table.pop(name, None)  # type: ignore[attr-defined]
            self.by_pseudonym.pop(pseudonym, None)

    async def run(self) -> None:
        """Follow the line until cancelled; a broker that goes away is waited for."""
        topics = [FRAMES_DONE, STUDIES_FEATURES, STUDIES_DIAGNOSED, *(dlq(t.name) for t in TOPICS)]
        if self.relinks:
            topics.append(STUDIES_LINKS)
        backoff = 1.0
        while True:
            group = f"web-{uuid.uuid4().hex[:8]}"
            consumer = kafka.consumer(self.settings, group, group)
            try:
                consumer.subscribe(topics)
                await consumer.start()
                self.letters = []  # read again from the beginning
                self.connected.set()
                backoff = 1.0
                while True:
                    batches = await consumer.getmany(timeout_ms=500)
                    for tp, records in batches.items():
                        for record in records:
                            self.add(tp.topic, record.value, record.key)
                    if batches:
                        await asyncio.to_thread(self.file_diagnoses)
            except (KafkaError, OSError) as exc:
                self.connected.clear()
                log.warning("the page lost the broker (%s): reading again in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                await consumer.stop()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
