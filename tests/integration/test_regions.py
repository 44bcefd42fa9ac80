"""Two regions, as the seed ran them: a home-region cluster (Brazil: identifiable data) and a GPU-region cluster,
each an Apache Kafka of its own with its own blob store, MirrorMaker 2 between them copying only the de-identified
studies out and the diagnoses back (`rhd.runtime.topics.CROSSING`). The whole line runs across them: deid at home,
every other stage and the model server in the GPU region, the de-identified videos crossing with their study's
records. The study is diagnosed and its result read at home; records that carry identifiers in the clear are
written home too: none of them, and no identifier, reaches the GPU region's cluster or its blob store."""

import asyncio
import time

import pytest
from conftest import require_broker
from rhd.local.audit import audit
from rhd.local.mirror import mm2_properties
from rhd.local.publish import publish_uploads, raw_keyring, upload_from_dir
from rhd.local.stack import EmbeddedStack
from rhd.runtime import kafka
from rhd.runtime.blobs import BlobStore
from rhd.runtime.secrets import is_sealed
from rhd.runtime.settings import Settings
from rhd.runtime.topics import (
    ACCESS_TRAIL,
    GPU,
    HOME,
    HOME_ONLY,
    STAGES,
    STUDIES_DEIDENTIFIED,
    STUDIES_DIAGNOSED,
    STUDIES_LINKS,
    STUDIES_UPLOADED,
    dlq,
    region_topics,
    stage_region,
    upload_topic,
)
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.v1 import rhd_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# What a raw upload, a link and the access trail carry in the clear here (sealed in the line: plain, the test is
# stricter), and what de-identified records carry instead.
IDENTIFIERS = (b"Maria Aparecida da Silva", b"898001160012345", b"ECHO-2026-000417")


def test_the_region_topic_lists_keep_identifiable_topics_home():
    home, gpu = region_topics(HOME, ["H1"]), region_topics(GPU, ["H1"])
    assert set(HOME_ONLY) <= set(home) and upload_topic("H1") in home and dlq(STUDIES_UPLOADED) in home
    assert not set(gpu) & {*HOME_ONLY, upload_topic("H1"), dlq(STUDIES_UPLOADED), dlq(STUDIES_LINKS)}
    assert STUDIES_DEIDENTIFIED in gpu and STUDIES_DIAGNOSED in home
    config = mm2_properties({HOME: "h:1", GPU: "g:2"})
    assert "home->gpu.topics = studies\\.deidentified\\.v1\n" in config
    assert "gpu->home.topics = studies\\.diagnosed\\.v1\n" in config
    assert "IdentityReplicationPolicy" in config
    assert [s for s in STAGES if stage_region(s) == HOME] == ["deid"]  # the one stage that reads identifiable data


async def _write(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    producer = kafka.producer(settings, "regions-test")
    await producer.start()
    try:
        for topic, value in records:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _topics(settings: Settings) -> set[str]:
    admin = kafka.admin(settings)
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if not t.startswith("__")}
    finally:
        await admin.close()


def test_the_line_runs_across_two_regions_and_nothing_identifiable_leaves_home(tmp_path):
    require_broker("kafka")
    [study_dir] = synth_studies(12, 1, tmp_path / "in", SynthConfig(videos_per_study=3, duration_s=(1.0, 1.0)))
    identifiers = load_truth(study_dir)["identifiers"]
    settings = Settings(
        broker="kafka",
        two_regions=True,
        kafka_heap="384m",
        hospitals=["H1"],
        partitions=2,
        blob_dir=tmp_path / "home-blobs",
        max_message_bytes=400_000,  # the videos do not fit inline: they cross in pieces, with the study's records
        study_deadline_s=240,
    )
    stack = EmbeddedStack(tmp_path / "stack", settings)

    async def run():
        at_home = await stack.start(timeout_s=300)
        at_gpu = stack.brokers[GPU].admin_settings()
        blobs = BlobStore(at_home.blob_dir)
        upload = upload_from_dir(study_dir, blobs, at_home.max_message_bytes, "H1", raw_keyring(at_home).seal)
        await publish_uploads(at_home, [upload])
        # Identifiable records in the clear on every home-only topic (the line seals them: the test is stricter).
        clear = " ".join(str(identifiers[k]) for k in ("patient_name", "patient_id", "birth_date")).encode()
        await _write(at_home, [(t, b"identifiable " + clear) for t in (*HOME_ONLY, upload_topic("H1"))])
        deadline, diagnoses = time.monotonic() + 420, []
        while time.monotonic() < deadline and not diagnoses:
            await asyncio.sleep(3)
            diagnoses = await kafka.read_records(at_home, STUDIES_DIAGNOSED, 0, "regions-test")
        await asyncio.sleep(10)  # several of MirrorMaker's topic refreshes: whatever else it would copy, it has
        report = await audit(at_gpu, [identifiers], blob_dir=stack.blob_dirs[GPU])
        return diagnoses, report, await _topics(at_gpu), await _topics(at_home)

    try:
        diagnoses, report, gpu_topics, home_topics = asyncio.run(run())
        codes = stack.stop()
    finally:
        stack.stop()
    assert stack.all_stopped() and all(code == 0 for code in codes.values()), codes
    # Diagnosed in the GPU region, read at home, once.
    [diagnosis] = [pb.Diagnosis.FromString(r.value) for r in diagnoses]
    assert diagnosis.completeness == pb.COMPLETENESS_COMPLETE and diagnosis.probabilities
    assert diagnosis.label != pb.LABEL_UNSPECIFIED or diagnosis.referral  # labelled, or referred saying why
    # No identifiable topic, no identifier in any record or blob of the GPU region; the raw upload stayed home.
    assert not gpu_topics & {*HOME_ONLY, upload_topic("H1"), dlq(STUDIES_UPLOADED), dlq(STUDIES_LINKS)}
    assert report.records > 0 and report.hits == [], report.hits
    gpu_files = [p for p in stack.blob_dirs[GPU].rglob("*") if p.is_file()]
    stored_frames = [p for p in gpu_files if p.parent.name == "frames"]  # split's frame store, in the GPU region
    gpu_blobs = [p for p in gpu_files if p not in stored_frames]
    home_blobs = [p for p in (tmp_path / "home-blobs").rglob("*") if p.is_file()]
    assert len(gpu_blobs) == 3 and not any(is_sealed(p.read_bytes()[:8]) for p in gpu_files)  # the clean videos
    assert len(stored_frames) == 3 and all(p.suffix == ".npy" for p in stored_frames)  # their frames, once each
    assert not (tmp_path / "home-blobs" / "frames").exists()  # no frame is stored at home
    assert home_blobs and all(is_sealed(p.read_bytes()[:8]) for p in home_blobs)  # the raw upload, sealed
    assert {STUDIES_UPLOADED, STUDIES_LINKS, ACCESS_TRAIL, STUDIES_DEIDENTIFIED} <= home_topics
