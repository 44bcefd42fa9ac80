"""rhd audit finds what leaks: over a real broker, a de-identified study passes and the same study with deid
switched off (its raw upload and frames where the line's de-identified ones go) fails, by bytes and by OCR."""

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from conftest import missing_tool
from rhd.deid.ops import deidentify_upload
from rhd.deid.policy import load_policy
from rhd.imaging.video import DecodedVideo, decode_video
from rhd.local.audit import audit, tesseract_available
from rhd.local.broker import broker_for
from rhd.local.publish import upload_from_dir
from rhd.runtime.blobs import BlobStore
from rhd.runtime.codec import frame_pixels
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DECODED, STUDIES_DEIDENTIFIED, STUDIES_UPLOADED
from rhd.split.ops import acquisition, video_frames
from rhd.synth.generator import SynthConfig, load_truth, synth_studies

pytestmark = pytest.mark.integration


def _frames(upload, read, count: int):
    """The first frames of the upload's first video as split would send them."""
    ref = upload.videos[0]
    decoded = decode_video(read(ref))
    few = DecodedVideo(decoded.frames[:count], decoded.fps, count)
    return video_frames(
        upload, ref.video_id, few, acquisition(upload.metadata), lambda fs: [frame_pixels(f, "raw") for f in fs]
    )


def test_the_audit_passes_a_de_identified_study_and_fails_the_same_study_without_deid(tmp_path, broker_kind):
    if not tesseract_available():
        missing_tool("no tesseract: `make tools` installs Debian's tesseract-ocr")
    [study] = synth_studies(31, 1, tmp_path / "studies", SynthConfig(videos_per_study=3, duration_s=(1.0, 1.0)))
    identifiers = [load_truth(study)["identifiers"]]
    blobs = BlobStore(tmp_path / "blobs")
    raw = upload_from_dir(study, blobs, 1_000_000)
    read = lambda ref: ref.inline_data if ref.HasField("inline_data") else blobs.get(ref.blob_uri)  # noqa: E731
    policy = load_policy()
    clean = deidentify_upload(raw, read, blobs.put, policy, policy.profile("analysis"), bytes(32), 900_000).upload
    broker = broker_for(Settings(broker=broker_kind), tmp_path, log_file=tmp_path / "broker.log")

    async def run():
        await broker.start(2)
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, max_request_size=8_000_000)
        await producer.start()
        # The raw topic holds identifiable data by design: the audit does not read it.
        await producer.send_and_wait(STUDIES_UPLOADED, raw.SerializeToString(), key=b"raw")
        await producer.send_and_wait(STUDIES_DEIDENTIFIED, clean.SerializeToString(), key=clean.study_id.encode())
        for frame in _frames(clean, read, 2):
            await producer.send_and_wait(FRAMES_DECODED, frame.SerializeToString(), key=b"v")
        passed = await audit(settings, identifiers, frames_to_ocr=2, ocr_every=1)
        # deid switched off: the raw upload and its frames go where the de-identified ones went.
        await producer.send_and_wait(STUDIES_DEIDENTIFIED, raw.SerializeToString(), key=raw.study_id.encode())
        for frame in _frames(raw, read, 2):
            await producer.send_and_wait(FRAMES_DECODED, frame.SerializeToString(), key=b"v")
        await producer.stop()
        failed = await audit(settings, identifiers, frames_to_ocr=4, ocr_every=1)
        return passed, failed

    try:
        passed, failed = asyncio.run(run())
    finally:
        broker.stop()
    assert passed.hits == [] and passed.records == 3 and passed.frames_ocred == 2
    found = {hit.identifier for hit in failed.hits}
    assert {"patient_name", "patient_id", "birth_date", "study_id", "hospital"} <= found
    ocr = {hit.identifier for hit in failed.hits if hit.where.endswith("(OCR)")}
    assert {"patient_name", "patient_id"} <= ocr, failed.hits
