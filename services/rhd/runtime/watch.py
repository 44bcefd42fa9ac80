"""Reading the line's results back: frame accounting and diagnoses, for `rhd watch`, the demo and tests."""

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DONE, STUDIES_DIAGNOSED, TOPICS, dlq
from rhd.v1 import rhd_pb2 as pb


@dataclass
class Progress:
    expected_frames: dict[str, int] = field(default_factory=dict)        # study -> frames in its manifest
    frame_records: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # distinct frames ended
    terminal_records: int = 0                                            # including duplicates
    diagnoses: dict[str, list[pb.Diagnosis]] = field(default_factory=dict)
    dead_letters: list[pb.DeadLetter] = field(default_factory=list)

    def frames_accounted(self) -> int:
        return sum(len(v) for v in self.frame_records.values())

    def add(self, topic: str, value: bytes) -> None:
        if topic == FRAMES_DONE:
            done = pb.FrameDone.FromString(value)
            if done.HasField("manifest"):
                self.expected_frames[done.manifest.study_id] = sum(v.frame_count for v in done.manifest.videos)
            else:
                key = done.result.key
                self.terminal_records += 1
                self.frame_records.setdefault(key.study_id, set()).add((key.video_id, key.frame_index))
        elif topic == STUDIES_DIAGNOSED:
            diagnosis = pb.Diagnosis.FromString(value)
            self.diagnoses.setdefault(diagnosis.study_id, []).append(diagnosis)
        elif topic.endswith(".dlq"):
            self.dead_letters.append(pb.DeadLetter.FromString(value))


async def follow(
    settings: Settings,
    until: Callable[[Progress], bool],
    timeout_s: float,
    on_update: Callable[[Progress], None] | None = None,
    settle_s: float = 0.0,
) -> Progress:
    """Read frames.done, diagnoses and every dead-letter topic from the beginning until `until` holds
    (then `settle_s` more seconds, to catch anything duplicated) or the timeout passes."""
    topics = [FRAMES_DONE, STUDIES_DIAGNOSED, *(dlq(t.name) for t in TOPICS)]
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=settings.bootstrap_servers, group_id=f"watch-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", enable_auto_commit=False,
        session_timeout_ms=settings.session_timeout_ms, heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    progress = Progress()
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    progress.add(tp.topic, record.value or b"")
            if on_update:
                on_update(progress)
            if settle_until is None and until(progress):
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return progress


