"""Shared runtime pieces: blob store (claim check), settings, dead letters, uploads."""

import asyncio
import importlib

import numpy as np
import pytest
from rhd.local.publish import upload_from_dir
from rhd.runtime.blobs import BlobStore
from rhd.runtime.codec import frame_image, frame_pixels
from rhd.runtime.records import dead_letter, frame_key_of, frame_result
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DONE
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.v1 import rhd_pb2 as pb


def test_blob_store_round_trips_and_detects_corruption(tmp_path):
    store = BlobStore(tmp_path)
    uri = store.put(b"video bytes")
    assert store.put(b"video bytes") == uri and store.get(uri) == b"video bytes"
    next(tmp_path.rglob(uri.split(":")[-1])).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="corrupt"):
        store.get(uri)
    with pytest.raises(ValueError, match="unknown blob"):
        store.get("s3://bucket/x")
    with pytest.raises(ValueError, match="bad blob digest"):
        store.get("blob:sha256:../../etc/passwd")


def test_settings_come_from_rhd_environment(monkeypatch):
    monkeypatch.setenv("RHD_PARTITIONS", "8")
    monkeypatch.setenv("RHD_BOOTSTRAP_SERVERS", "kafka:9092")
    settings = Settings()
    assert settings.partitions == 8 and settings.bootstrap_servers == "kafka:9092"
    with pytest.raises(Exception):  # noqa: B017 - frozen
        settings.partitions = 2


def test_frame_result_is_keyed_by_study_on_frames_done():
    key = pb.FrameKey(study_id="S1", video_id="S1-V00", frame_index=3)
    out = frame_result(key, pb.FRAME_STATUS_SKIPPED, "inspect", "anatomical")
    assert (out.topic, out.key) == (FRAMES_DONE, "S1")
    assert out.message.result.reason == "anatomical" and out.message.result.stage == "inspect"
    nested = pb.ViewedFrame(segmented=pb.SegmentedFrame(frame=pb.Frame(key=key)))
    assert frame_key_of(nested) == key and frame_key_of(pb.StudyFeatures()) is None


def test_dead_letter_carries_original_bytes_or_a_reference():
    letter = dead_letter("t", "split", "bad", b"raw", key=b"k", partition=1, offset=5)
    assert letter.original_bytes == b"raw" and letter.WhichOneof("original") == "original_bytes"
    letter = dead_letter("t", "split", "bad", original_blob_uri="blob:sha256:" + "0" * 64)
    assert letter.WhichOneof("original") == "original_blob_uri"


def test_upload_inlines_videos_while_under_the_limit_and_references_the_rest(tmp_path):
    (study,) = synth_studies(2, 1, tmp_path / "s", SynthConfig(videos_per_study=6))
    store = BlobStore(tmp_path / "blobs")
    upload = upload_from_dir(study, store, max_message_bytes=1_000_000)
    assert upload.ByteSize() < 1_000_000
    inline = [v for v in upload.videos if v.HasField("inline_data")]
    referenced = [v for v in upload.videos if v.HasField("blob_uri")]
    assert inline and referenced
    assert all(store.get(v.blob_uri) == (study / v.filename).read_bytes() for v in referenced)
    assert upload.metadata["patient_name"]  # identifying fields travel until de-identification exists


def _frame(image, codec, max_message_bytes=1_000_000):
    return pb.Frame(height=image.shape[0], width=image.shape[1], **frame_pixels(image, codec, max_message_bytes))


def test_frames_travel_raw_or_as_png_and_read_back_identical():
    image = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    raw, png = _frame(image, "raw"), _frame(image, "png")
    assert raw.WhichOneof("pixels") == "bgr" and len(raw.bgr) == image.nbytes
    assert png.WhichOneof("pixels") == "png" and png.png.startswith(b"\x89PNG")
    for frame in (raw, png):
        decoded = frame_image(pb.Frame.FromString(frame.SerializeToString()))
        np.testing.assert_array_equal(decoded, image)
        decoded[0, 0] = 0  # the stage functions may work in place: the image is the reader's own
    # A raw frame too large for a message goes as PNG instead of being refused downstream.
    assert _frame(image, "raw", max_message_bytes=image.nbytes).WhichOneof("pixels") == "png"


def test_a_malformed_frame_is_an_error_with_the_reason():
    image = np.zeros((24, 32, 3), np.uint8)
    short = _frame(image, "raw")
    short.height = 25
    with pytest.raises(ValueError, match="not 25 x 32 x 3"):
        frame_image(short)
    with pytest.raises(ValueError, match="without pixels"):
        frame_image(pb.Frame(height=24, width=32))
    with pytest.raises(ValueError, match="not a PNG"):
        frame_image(pb.Frame(height=24, width=32, png=b"nope"))
    with pytest.raises(ValueError, match="unknown frame codec"):
        frame_pixels(image, "jpeg")


class _Consumer:
    def __init__(self, assigned, highwater):
        self.assigned, self.high = assigned, highwater

    def assignment(self):
        return self.assigned

    def highwater(self, tp):
        return self.high.get(tp)


def test_consumer_lag_is_reported_for_owned_partitions_only(tmp_path):
    from aiokafka import TopicPartition
    from prometheus_client import REGISTRY
    from rhd.runtime.stage import StageRunner, StageService

    class Probe(StageService):
        name, input_topic, input_type = "lagprobe", "frames.in.v1", pb.Frame

    def lag(partition):
        return REGISTRY.get_sample_value(
            "rhd_consumer_lag", {"stage": "lagprobe", "topic": "frames.in.v1", "partition": str(partition)}
        )

    runner = StageRunner(Probe(), Settings(blob_dir=tmp_path))
    p0, p1 = TopicPartition("frames.in.v1", 0), TopicPartition("frames.in.v1", 1)
    runner._positions = {p0: 90, p1: 40}
    runner.consumer = _Consumer({p0, p1}, {p0: 100, p1: 40})
    runner._record_lag()
    assert (lag(0), lag(1)) == (10, 0)
    # Partition 0 moved to another replica in a rebalance: its lag is that replica's to report now.
    runner.consumer = _Consumer({p1}, {p1: 45})
    runner._record_lag()
    assert (lag(0), lag(1)) == (None, 5)
    runner.pool.shutdown()


def test_a_stage_declares_itself_in_its_class_line_and_nothing_else():
    from rhd.runtime.stage import StageService

    class Probe(StageService, name="probe", input_topic=FRAMES_DONE, input_type=pb.FrameDone, tick_seconds=2.0):
        pass

    assert (Probe.name, Probe.input_topic, Probe.input_type, Probe.tick_seconds) == (
        "probe",
        FRAMES_DONE,
        pb.FrameDone,
        2.0,
    )
    assert Probe.concurrent and not Probe.written_topic
    with pytest.raises(TypeError, match="does not declare 'input'"):

        class Wrong(StageService, name="wrong", input="frames.done.v1"):
            pass


def test_split_keeps_only_the_clinical_metadata_and_reads_the_scan_settings():
    from rhd.split.ops import CLINICAL_FIELDS, acquisition

    metadata = {
        "pixel_spacing_mm": "0.6",
        "nyquist_cm_s": "62.5",
        "device": "Vivid iq",
        "fps": "30",
        "patient_name": "Maria Silva Costa",
        "patient_id": "123456",
        "birth_date": "2010-01-02",
        "hospital_id": "H1",
    }
    scan = acquisition(metadata)
    assert (scan.pixel_spacing_mm, scan.nyquist_cm_s) == (0.6, 62.5)
    assert scan.clinical == {"pixel_spacing_mm": "0.6", "nyquist_cm_s": "62.5", "device": "Vivid iq", "fps": "30"}
    assert set(scan.clinical) <= CLINICAL_FIELDS
    unknown = acquisition({"pixel_spacing_mm": "n/a"})
    # Not a number: unknown, and not passed on as if it were one.
    assert (unknown.pixel_spacing_mm, unknown.nyquist_cm_s, unknown.clinical) == (0.0, 0.0, {})


def _record(value: bytes, headers=(), topic="frames.in.v1", offset=0):
    from aiokafka import ConsumerRecord

    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=tuple(headers),
    )


def test_a_record_of_another_type_or_version_or_written_by_something_else_is_dead_lettered(tmp_path):
    """Protobuf parses most bytes as most messages (a Diagnosis reads as StudyFeatures): the schema header decides."""
    import asyncio

    from rhd.runtime.records import schema_headers
    from rhd.runtime.stage import StageRunner, StageService

    class Probe(StageService):
        name, input_topic, input_type = "schemaprobe", "studies.in.v1", pb.StudyFeatures

        def handle(self, message, at):
            return []

    runner = StageRunner(Probe(), Settings(blob_dir=tmp_path))
    diagnosis = pb.Diagnosis(study_id="S1", label=pb.LABEL_DEFINITE)
    assert pb.StudyFeatures.FromString(diagnosis.SerializeToString()).study_id == "S1"  # why a header is needed

    def outcome(headers):
        [out] = asyncio.run(runner._process(_record(diagnosis.SerializeToString(), headers)))
        return pb.DeadLetter.FromString(out[2]).reason if out[0].endswith(".dlq") else "handled"

    assert "a rhd.v1.Diagnosis record where a rhd.v1.StudyFeatures is read" in outcome(schema_headers(diagnosis))
    assert "a rhd.v2.StudyFeatures record" in outcome([("rhd-schema", b"rhd.v2.StudyFeatures")])
    assert "no rhd-schema header" in outcome([])
    assert asyncio.run(runner._process(_record(b"", schema_headers(pb.StudyFeatures())))) == []
    runner.pool.shutdown()


def test_a_dead_letter_too_large_for_a_message_keeps_its_original_in_the_blob_store(tmp_path):
    from rhd.runtime.records import dead_letter_output
    from rhd.runtime.stage import StageRunner, StageService

    class Probe(StageService):
        name, input_topic, input_type = "dlqprobe", "frames.in.v1", pb.Frame

    settings = Settings(blob_dir=tmp_path, max_message_bytes=100_000)
    runner = StageRunner(Probe(), settings)
    original = bytes(range(256)) * 1_000  # 256 kB
    letter = dead_letter_output("frames.in.v1", "dlqprobe", "x" * 200_000, key=b"k", original=original)
    topic, key, value, schema = runner._encode(letter)
    written = pb.DeadLetter.FromString(value)
    assert len(value) <= settings.max_message_bytes and schema == "rhd.v1.DeadLetter"
    assert BlobStore(tmp_path).get(written.original_blob_uri) == original  # nothing lost
    assert written.reason.startswith("x" * 100) and "reason cut" in written.reason
    runner.pool.shutdown()


def test_health_says_stuck_when_the_loop_stops_coming_round_and_ready_needs_the_broker(tmp_path):
    import asyncio
    import time

    from rhd.local.broker import free_port
    from rhd.runtime import kafka
    from rhd.runtime.stage import StageRunner, StageService

    class Probe(StageService):
        name, input_topic, input_type = "healthprobe", "frames.in.v1", pb.Frame

    settings = Settings(blob_dir=tmp_path, stuck_after_s=5.0, bootstrap_servers=f"127.0.0.1:{free_port()}")
    runner = StageRunner(Probe(), settings)
    assert runner.alive()
    runner._alive = time.monotonic() - 6.0  # the loop has not come round for 6 s
    assert not runner.alive()

    async def ready_without_a_broker():
        runner.producer = kafka.producer(settings, "healthprobe")
        runner.consumer = kafka.consumer(settings, None, "healthprobe")  # started, but nothing listens there
        return await runner.ready()

    assert asyncio.run(ready_without_a_broker()) is False
    runner.pool.shutdown()


def test_a_stage_whose_redaction_fails_still_writes_the_letter_and_keeps_no_plain_id(tmp_path):
    """A record that opened but did not parse once crashed deid in its redaction (a DecodeError it did not expect)."""
    import asyncio

    from rhd.runtime.records import schema_headers
    from rhd.runtime.stage import StageRunner, StageService

    class Fragile(StageService):
        name, input_topic, input_type = "fragileprobe", "studies.in.v1", pb.StudyFeatures

        def handle(self, message, at):
            raise RuntimeError("cannot handle it")

        def redact(self, letter, message):
            raise ValueError("cannot redact it either")

    runner = StageRunner(Fragile(), Settings(blob_dir=tmp_path))
    value = pb.StudyFeatures(study_id="S-123").SerializeToString()
    record = _record(value, schema_headers(pb.StudyFeatures()), topic="studies.in.v1")
    [(topic, key, data, _)] = asyncio.run(runner._process(record))
    letter = pb.DeadLetter.FromString(data)
    assert topic == "studies.in.v1.dlq" and "cannot handle it" in letter.reason
    assert key == "" and letter.study_id == "" and letter.original_bytes == value
    runner.pool.shutdown()


def test_the_blob_store_takes_the_same_content_from_many_writers_at_once(tmp_path):
    """An upload published twice and handled at once wrote one blob from two threads: the second rename failed."""
    from concurrent.futures import ThreadPoolExecutor

    store, data = BlobStore(tmp_path), bytes(range(256)) * 4_000
    with ThreadPoolExecutor(8) as pool:
        uris = set(pool.map(lambda _: store.put(data), range(64)))
    assert len(uris) == 1 and store.get(uris.pop()) == data
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_stage_writes_only_its_declared_outputs_and_its_dead_letters(tmp_path):
    """The stage's `outputs` are what the broker's ACLs grant it: the runner refuses any other topic before a
    byte is sent, and every stage of the line declares what it writes."""
    from rhd.runtime.stage import Output, StageRunner, StageService
    from rhd.runtime.topics import FLOWS, STAGES, TOPICS

    class Probe(StageService):
        name, input_topic, input_type = "outprobe", "frames.in.v1", pb.Frame
        outputs = ("frames.out.v1",)

    class Producer:
        sent: list[str] = []

        async def send(self, topic, value, key=None, headers=None):
            self.sent.append(topic)
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    assert Probe.writes() == ("frames.out.v1", "frames.in.v1.dlq")
    runner = StageRunner(Probe(), Settings(blob_dir=tmp_path))
    runner.producer = Producer()
    asyncio.run(runner._produce([Output("frames.out.v1", "k", pb.Frame())]))
    with pytest.raises(RuntimeError, match="not among its outputs"):
        asyncio.run(runner._produce([Output("studies.diagnosed.v1", "k", pb.Diagnosis())]))
    assert runner.producer.sent == ["frames.out.v1"]
    runner.pool.shutdown()

    # The line (topics.FLOWS, the one list the ACLs come from too): every topic but the raw upload and the access
    # trail (written by the hospital side and the home-region tools) is some stage's output, and no stage writes its
    # own input. Each stage's class must agree with it when it is defined.
    assert set(FLOWS) == set(STAGES)
    assert {t for f in FLOWS.values() for t in f.outputs} == {t.name for t in TOPICS} - {
        "studies.uploaded.v1",
        "access.trail.v1",
    }
    assert all(f.input not in f.outputs for f in FLOWS.values())
    for stage in STAGES:
        importlib.import_module(f"rhd.{stage}.service")
    with pytest.raises(TypeError, match="differ from FLOWS"):

        class Stray(StageService, name="segment", input_topic="frames.decoded.v1", input_type=pb.Frame):
            pass


def test_a_stage_that_calls_no_model_imports_no_tensorflow(tmp_path):
    """`rhd serve <stage>` for a stage without a network stays small: TensorFlow (about 650 MiB resident) comes
    only with the model client. (The stack module once brought it to every stage through `stop_on_sigterm`.)"""
    import subprocess
    import sys

    stages = ["deid", "split", "inspect", "segment", "features", "spectral", "assemble", "diagnose"]
    code = (
        "import sys, rhd.cli, rhd.runtime.stage\n"
        # The command line's own set-up, as before any command (a harmless one here).
        + f"rhd.cli.main(['keys', 'init', '--dir', {str(tmp_path)!r}])\n"
        + "".join(f"import rhd.{stage}.service\n" for stage in stages)
        + "print(sorted(m for m in ('tensorflow', 'keras', 'confluent_kafka') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_kraft_cluster_id_never_starts_with_a_dash(monkeypatch):
    """kafka-storage format -t -dK5H... reads such an id as an option and fails: one start in 64 did, in CI."""
    import uuid

    from rhd.local import broker

    ids = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(ids))
    cluster_id = broker.kafka_cluster_id()
    assert cluster_id == "EAAAAAAAAAAAAAAAAAAAAA" and len(cluster_id) == 22
