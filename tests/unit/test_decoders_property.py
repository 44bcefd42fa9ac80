"""Property-based tests (hypothesis) of every decoder of outside input: whatever bytes arrive, each answers with its
own clear error or a value, never another exception (which would crash a stage or leak a value into a log)."""

import asyncio

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rhd.imaging.dicom import DicomError, read_dicom
from rhd.imaging.video import VideoDecodeError, VideoLimits, decode_video
from rhd.runtime.codec import frame_image
from rhd.runtime.records import SCHEMA_HEADER
from rhd.runtime.secrets import MAGIC, SecretError, init_secrets, load_keyring, parse_upload
from rhd.runtime.settings import Settings
from rhd.runtime.stage import StageRunner, StageService
from rhd.v1 import rhd_pb2 as pb

QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@QUICK
@given(st.binary(max_size=2_000))
def test_an_upload_is_parsed_or_refused_as_undecodable(data):
    try:
        upload, recoded = parse_upload(data)
    except DecodeError:
        return
    assert isinstance(upload, pb.StudyUpload) and recoded >= 0


@QUICK
@given(st.binary(max_size=4_000))
def test_any_bytes_as_a_video_decode_or_fail_with_the_reason(data):
    try:
        video = decode_video(data, VideoLimits(max_frames=50, max_frame_pixels=640 * 480))
    except VideoDecodeError as exc:
        assert str(exc)
        return
    assert 0 < len(video.frames) <= 50


@QUICK
@given(st.binary(max_size=3_000), st.booleans())
def test_any_bytes_as_dicom_read_or_fail_with_the_reason(data, with_marker):
    if with_marker:  # past the marker check, into pydicom's parser
        data = b"\0" * 128 + b"DICM" + data
    try:
        read_dicom(data)
    except DicomError as exc:
        assert str(exc)


@QUICK
@given(
    st.integers(-5, 400),
    st.integers(-5, 400),
    st.one_of(st.binary(max_size=3_000).map(lambda b: ("bgr", b)), st.binary(max_size=3_000).map(lambda b: ("png", b))),
)
def test_a_frame_message_gives_its_image_or_a_value_error(height, width, pixels):
    frame = pb.Frame(height=height, width=width, **{pixels[0]: pixels[1]})
    try:
        image = frame_image(frame)
    except ValueError:
        return
    assert isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3


@pytest.fixture(scope="module")
def keyring(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    init_secrets(root)
    return load_keyring(root / "raw")


@QUICK
@given(data=st.binary(max_size=300), prefixed=st.booleans())
def test_an_envelope_opens_or_is_refused_as_a_secret_error(keyring, data, prefixed):
    envelope = MAGIC + bytes([len(keyring.current)]) + keyring.current.encode() + data if prefixed else data
    try:
        keyring.open(envelope, b"aad")
    except SecretError:
        return
    raise AssertionError("an envelope nobody sealed opened")


class _Probe(StageService):
    name, input_topic, input_type = "propertyprobe", "studies.in.v1", pb.StudyFeatures

    def handle(self, message, at):
        return []


@QUICK
@given(
    value=st.binary(max_size=2_000),
    schema=st.one_of(st.none(), st.sampled_from(["rhd.v1.StudyFeatures", "rhd.v1.Diagnosis"]), st.text(max_size=20)),
)
def test_a_stage_handles_or_dead_letters_any_record_and_never_raises(tmp_path_factory, value, schema):
    from aiokafka import ConsumerRecord

    runner = StageRunner(_Probe(), Settings(blob_dir=tmp_path_factory.mktemp("blobs")))
    headers = () if schema is None else ((SCHEMA_HEADER, schema.encode()),)
    record = ConsumerRecord("studies.in.v1", 0, 0, 0, 0, b"k", value, None, 1, len(value), headers)
    try:
        outputs = asyncio.run(runner._process(record))
    finally:
        runner.pool.shutdown()
    assert outputs == [] or [topic for topic, *_ in outputs] == ["studies.in.v1.dlq"]
    for _, _, data, schema_name in outputs:
        assert schema_name == "rhd.v1.DeadLetter" and pb.DeadLetter.FromString(data).reason
