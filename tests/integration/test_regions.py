"""Two regions, as the seed ran them: a home-region cluster (Brazil: identifiable data) and a GPU-region cluster,
each an Apache Kafka of its own, with MirrorMaker 2 between them copying only the de-identified studies out and the
diagnoses back (`rhd.runtime.topics.CROSSING`). Records that carry identifiers are written home, among de-identified
ones: none of them, and no identifier, reaches the GPU-region cluster."""

import asyncio
import time

import pytest
from conftest import require_broker
from rhd.local.broker import KafkaBroker, default_kafka_libs
from rhd.local.mirror import MirrorMaker, mm2_properties
from rhd.runtime import kafka
from rhd.runtime.settings import Settings
from rhd.runtime.topics import (
    ACCESS_TRAIL,
    GPU,
    HOME,
    HOME_ONLY,
    STUDIES_DEIDENTIFIED,
    STUDIES_DIAGNOSED,
    STUDIES_LINKS,
    STUDIES_UPLOADED,
    dlq,
    region_topics,
    upload_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

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


async def _write(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    producer = kafka.producer(settings, "regions-test")
    await producer.start()
    try:
        for topic, value in records:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _everything(settings: Settings) -> dict[str, list[bytes]]:
    """Every record on every topic of a cluster (MirrorMaker's own topics included), by topic."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if not t.startswith("__")]
    finally:
        await admin.close()
    return {
        name: [r.value or b"" for r in await kafka.read_records(settings, name, 0, "regions-test")] for name in names
    }


def test_mirror_maker_copies_only_de_identified_studies_out_and_diagnoses_back(tmp_path):
    require_broker("kafka")
    home = KafkaBroker(tmp_path / "home", default_kafka_libs(), log_file=tmp_path / "home.log", heap="384m")
    gpu = KafkaBroker(tmp_path / "gpu", default_kafka_libs(), log_file=tmp_path / "gpu.log", heap="384m")
    home.topics, gpu.topics = region_topics(HOME, ["H1"]), region_topics(GPU)
    mirror = MirrorMaker(home, gpu, tmp_path / "mm2", log_file=tmp_path / "mm2.log")

    async def run() -> tuple[dict[str, list[bytes]], dict[str, list[bytes]]]:
        await asyncio.gather(home.start(2), gpu.start(2))
        at_home, at_gpu = home.admin_settings(), gpu.admin_settings()
        identifiable = b" ".join(IDENTIFIERS)
        await _write(
            at_home,
            [
                (STUDIES_UPLOADED, b"upload " + identifiable),
                (upload_topic("H1"), b"upload " + identifiable),
                (dlq(STUDIES_UPLOADED), b"letter " + identifiable),
                (STUDIES_LINKS, b"link " + identifiable),
                (ACCESS_TRAIL, b"trail " + identifiable),
                (STUDIES_DEIDENTIFIED, b"study P0123456789abcdef0123"),
            ],
        )
        await _write(at_gpu, [(STUDIES_DIAGNOSED, b"diagnosis P0123456789abcdef0123")])
        mirror.start()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            out = await kafka.read_records(at_gpu, STUDIES_DEIDENTIFIED, 0, "regions-test")
            back = await kafka.read_records(at_home, STUDIES_DIAGNOSED, 0, "regions-test")
            if out and back:
                break
            assert mirror.process is not None and mirror.process.poll() is None, "MirrorMaker 2 exited"
            await asyncio.sleep(2)
        await asyncio.sleep(10)  # several of MirrorMaker's topic refreshes: whatever else it would copy, it has
        return await _everything(at_gpu), await _everything(at_home)

    try:
        gpu_side, home_side = asyncio.run(run())
    finally:
        mirror.stop()
        home.stop()
        gpu.stop()
    assert gpu_side[STUDIES_DEIDENTIFIED] == [b"study P0123456789abcdef0123"]  # out, once
    assert home_side[STUDIES_DIAGNOSED] == [b"diagnosis P0123456789abcdef0123"]  # and back
    assert not set(gpu_side) & {*HOME_ONLY, upload_topic("H1"), dlq(STUDIES_UPLOADED)}, "an identifiable topic"
    hits = [
        (topic, needle) for topic, values in gpu_side.items() for v in values for needle in IDENTIFIERS if needle in v
    ]
    assert hits == [], f"identifiers on the GPU-region cluster: {hits}"
    assert home_side[STUDIES_UPLOADED], "the home records were there to copy"
