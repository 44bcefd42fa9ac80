"""Killing `assemble` mid-study loses nothing and duplicates nothing: on the real embedded broker, with the
service a separate process killed by SIGKILL (no graceful shutdown) and started again."""

import asyncio
import os
import signal
import sys
import time

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rhd.features.ops import FEATURE_NAMES
from rhd.local.broker import broker_for, free_port
from rhd.local.stack import ServiceProcess
from rhd.runtime.kafka import partitions
from rhd.runtime.records import schema_headers
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DONE, STUDIES_FEATURES
from rhd.v1 import rhd_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def manifest(study: str, frames: int) -> pb.FrameDone:
    return pb.FrameDone(
        manifest=pb.StudyManifest(
            study_id=study,
            videos=[pb.VideoManifest(video_id=f"{study}-V0", status=pb.VIDEO_STATUS_DECODED, frame_count=frames)],
        )
    )


def result(study: str, index: int, jet_mm: float) -> pb.FrameDone:
    values = [jet_mm if name == "jet_length_mm" else 1.0 for name in FEATURE_NAMES]
    return pb.FrameDone(
        result=pb.FrameResult(
            key=pb.FrameKey(study_id=study, video_id=f"{study}-V0", frame_index=index),
            status=pb.FRAME_STATUS_ANALYSED,
            stage="features",
            view=pb.ViewPrediction(label="plax", model_name="view", model_version=1),
            features=pb.FeatureVector(feature_set="frame-v2", names=FEATURE_NAMES, values=values),
        )
    )


async def produce(bootstrap: str, records: list[pb.FrameDone]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for done in records:
            study = done.manifest.study_id if done.HasField("manifest") else done.result.key.study_id
            # One partition for all: the closed study's records come after the open one's first record, so a
            # restart replays them too.
            await producer.send_and_wait(
                FRAMES_DONE, done.SerializeToString(), key=study.encode(), partition=0, headers=schema_headers(done)
            )
    finally:
        await producer.stop()


async def emitted(bootstrap: str) -> list[pb.StudyFeatures]:
    tps = await partitions(Settings(bootstrap_servers=bootstrap), [STUDIES_FEATURES])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out = []
        while batch := await consumer.getmany(timeout_ms=500):
            out += [pb.StudyFeatures.FromString(r.value) for records in batch.values() for r in records]
        return out
    finally:
        await consumer.stop()


async def committed(bootstrap: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="assemble", enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(FRAMES_DONE, 0))
    finally:
        await consumer.stop()


async def handled(port: int) -> float:
    """Records assemble has taken in (ok or duplicate), from its /metrics."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("rhd_messages_total{") and 'stage="assemble"' in line and 'outcome="ok"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def until(check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = await check()
            if value:
                return value
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"not reached in {timeout_s:.0f} s: {check}")


def test_a_killed_assemble_rebuilds_its_open_studies_and_re_emits_none(tmp_path, broker_kind):
    broker = broker_for(Settings(broker=broker_kind), tmp_path, log_file=tmp_path / "broker.log")

    def assemble(name: str, port: int) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RHD_")}
        env.update(
            RHD_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            RHD_HTTP_PORT=str(port),
            RHD_PARTITIONS="4",
            RHD_STUDY_DEADLINE_S="120",
            RHD_BLOB_DIR=str(tmp_path / "blobs"),
            PYTHONUNBUFFERED="1",
        )
        if broker_kind == "kafka":  # as the stacks run it there: a batch's studies and offsets in one transaction
            env.update(RHD_IDEMPOTENCE="true", RHD_TRANSACTIONS="true")
        return ServiceProcess(
            name, [sys.executable, "-m", "rhd.cli", "serve", "assemble"], env, tmp_path / f"{name}.log", http_port=port
        )

    async def run() -> list[pb.StudyFeatures]:
        await broker.start(4)
        bootstrap = broker.bootstrap_servers
        # Study A is open when assemble dies (3 of its 6 frames seen); study B closes before.
        await produce(
            bootstrap,
            [
                manifest("A", 6),
                *(result("A", i, 25.0) for i in range(3)),
                manifest("B", 2),
                result("B", 0, 0.0),
                result("B", 1, 0.0),
            ],
        )
        first = assemble("assemble-1", free_port())
        first.start()
        try:
            await until(lambda: _handled_at_least(first.http_port, 7))
            await until(lambda: _has(bootstrap, {"B"}))
            await until(lambda: _committed_at_least(bootstrap, 0))
            assert await handled(first.http_port) == 7  # every record so far taken in by the first process
        finally:
            first.stop(signal.SIGKILL)
        # Assemble is down: the rest of A arrives, with redeliveries of A and B.
        await produce(
            bootstrap, [*(result("A", i, 25.0) for i in range(3, 6)), result("A", 0, 25.0), result("B", 1, 0.0)]
        )
        second = assemble("assemble-2", free_port())
        second.start()
        try:
            await until(lambda: _has(bootstrap, {"A", "B"}))
            # Let the second process take in everything it replays before counting what it emitted.
            await until(lambda: _idle(second.http_port))
            return await emitted(bootstrap)
        finally:
            second.stop()

    try:
        studies = asyncio.run(run())
    finally:
        broker.stop()
    assert sorted(s.study_id for s in studies) == ["A", "B"]  # each exactly once
    a = next(s for s in studies if s.study_id == "A")
    assert a.completeness == pb.COMPLETENESS_COMPLETE, a.reason
    assert (a.frames.expected, a.frames.analysed, a.frames.missing) == (6, 6, 0)  # frames seen before the kill too
    features = dict(zip(a.features.names, a.features.values, strict=True))
    assert features["jet_length_mm_max"] == 25.0


async def _has(bootstrap: str, ids: set[str]) -> bool:
    return ids <= {s.study_id for s in await emitted(bootstrap)}


async def _committed_at_least(bootstrap: str, offset: int) -> bool:
    position = await committed(bootstrap)
    return position is not None and position >= offset


async def _handled_at_least(port: int, count: int) -> bool:
    return await handled(port) >= count


async def _idle(port: int) -> bool:
    before = await handled(port)
    await asyncio.sleep(1.5)
    return await handled(port) == before
