"""Faults inside a stage: an upload that cannot be handled as a whole is still answered (its study ends FAILED,
saying why), and nothing identifying leaks into what is written about it."""

from rhd.assemble.ops import Assembler
from rhd.deid import service as deid_service
from rhd.deid.anonymity import Census
from rhd.deid.policy import load_policy
from rhd.imaging.video import VideoLimits
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import Output
from rhd.runtime.secrets import init_secrets, load_keyring, load_pseudonym_key, sealed_upload
from rhd.runtime.stage import Position
from rhd.runtime.topics import FRAMES_DONE, STUDIES_DEIDENTIFIED, STUDIES_LINKS, STUDIES_UPLOADED, dlq, upload_topic
from rhd.split.service import Split
from rhd.v1 import rhd_pb2 as pb


def _deid(tmp_path) -> deid_service.Deid:
    """The deid stage as start() makes it, without the census read from the broker."""
    init_secrets(tmp_path / "secrets")
    stage = deid_service.Deid()
    stage.policy = load_policy()
    stage.profile = stage.policy.profile("analysis")
    stage.key = load_pseudonym_key(tmp_path / "secrets")
    stage.raw, stage.links = load_keyring(tmp_path / "secrets" / "raw"), load_keyring(tmp_path / "secrets" / "link")
    stage.blobs, stage.budget, stage.census = BlobStore(tmp_path / "blobs"), 900_000, Census()
    stage.limits, stage.max_upload_frames = VideoLimits(1800, 1920 * 1080), 4000
    stage.two_regions, stage.keep = False, None
    return stage


def test_an_upload_deid_cannot_handle_whole_is_answered_failed_and_names_no_one(tmp_path, monkeypatch):
    stage = _deid(tmp_path)
    upload = pb.StudyUpload(
        schema="rhd.v1.StudyUpload", study_id="ECHO-77", upload_id="u-77", hospital_id="H001", metadata={"x": "y"}
    )
    upload.videos.add(video_id="v0", filename="v0.mp4", inline_data=b"\x00")
    upload.videos.add(video_id="v1", filename="v1.mp4", inline_data=b"\x00")
    key, value, _ = sealed_upload(upload, stage.raw)

    def boom(*args, **kwargs):
        raise RuntimeError("cannot handle Maria da Silva's study")

    monkeypatch.setattr(deid_service, "deidentify_upload", boom)
    outputs: list[Output] = stage.handle(pb.SealedRecord.FromString(value), Position(0, 5, 0.0, key))
    by_topic = {o.topic: o.message for o in outputs}
    assert set(by_topic) == {dlq(STUDIES_UPLOADED), STUDIES_LINKS, STUDIES_DEIDENTIFIED}
    letter, answer = by_topic[dlq(STUDIES_UPLOADED)], by_topic[STUDIES_DEIDENTIFIED]
    assert "RuntimeError" in letter.reason and "Maria" not in letter.reason
    assert stage.raw.open(pb.SealedRecord.FromString(letter.original_bytes).envelope, key)  # sealed, kept
    assert answer.study_id.startswith("P") and answer.study_id != "ECHO-77" and not answer.metadata
    assert [v.error for v in answer.videos] == [letter.reason] * 2
    link = stage.links.open(by_topic[STUDIES_LINKS].envelope)
    assert b"ECHO-77" in link and b"H001" in link  # the hospital reads the FAILED answer under its own id


def test_an_upload_split_cannot_handle_whole_still_closes_its_study_failed(tmp_path):
    split = Split()
    upload = pb.StudyUpload(study_id="P1", upload_id="u-1")
    upload.videos.add(video_id="P1-V00", inline_data=b"...")
    [manifest] = split.failed(upload, "UnicodeDecodeError: metadata is not UTF-8")
    assert manifest.topic == FRAMES_DONE and manifest.key == "P1"
    study = Assembler(deadline_s=60).add("P1", manifest.message, at=0.0)
    assert study is not None and study.completeness == pb.COMPLETENESS_FAILED
    assert "metadata is not UTF-8" in study.reason
    assert split.failed(pb.StudyUpload(), "no id") == []  # nothing names a study: the dead letter is all


def test_a_video_over_the_limits_is_refused_before_it_is_decoded(tmp_path):
    import cv2
    import numpy as np
    import pytest
    from rhd.imaging.video import VideoDecodeError, VideoLimits, decode_video

    def mp4(frames: int, height: int, width: int) -> bytes:
        path = tmp_path / f"{frames}-{height}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30.0, (width, height))
        for _ in range(frames):
            writer.write(np.zeros((height, width, 3), np.uint8))
        writer.release()
        return path.read_bytes()

    limits = VideoLimits(max_frames=20, max_frame_pixels=320 * 240)
    assert len(decode_video(mp4(20, 240, 320), limits).frames) == 20
    many, large = mp4(60, 240, 320), mp4(2, 480, 640)
    with pytest.raises(VideoDecodeError, match="more than 20 frames"):
        decode_video(many, limits)
    with pytest.raises(VideoDecodeError, match="480 x 640 pixels"):
        decode_video(large, limits)
    assert len(many) < 20_000  # small files: what they decode to is what the limits bound


def test_a_dicom_declaring_more_than_the_limits_is_refused_before_its_pixels_are_read():
    import pytest
    from pydicom.dataset import Dataset
    from rhd.imaging.dicom import DicomError, dicom_video
    from rhd.imaging.video import VideoLimits

    ds = Dataset()
    ds.NumberOfFrames, ds.Rows, ds.Columns = 100_000, 240, 320  # no pixel data needed: refused before
    with pytest.raises(DicomError, match="more than 1800 frames"):
        dicom_video(ds, VideoLimits(max_frames=1800, max_frame_pixels=1920 * 1080))
    ds.NumberOfFrames, ds.Rows, ds.Columns = 10, 4000, 4000
    with pytest.raises(DicomError, match="4000 x 4000 pixels"):
        dicom_video(ds, VideoLimits(max_frames=1800, max_frame_pixels=1920 * 1080))


def test_an_upload_whose_text_is_latin_1_not_utf_8_is_read_not_refused():
    from rhd.runtime.secrets import parse_upload

    # What a hospital's older client writes: the same wire format, its text in Latin-1 (protobuf refuses it).
    loose = pb.StudyUploadBytes(
        schema=b"rhd.v1.StudyUpload",
        study_id=b"AC-9",
        upload_id=b"u-9",
        hospital_id=b"H002",
        metadata=[pb.BytesEntry(key=b"patient_name", value="Conceição".encode("latin-1"))],
        videos=[pb.VideoRefBytes(video_id=b"v0", filename="vídeo.mp4".encode("latin-1"), inline_data=b"\x00")],
    )
    data = loose.SerializeToString()
    try:
        pb.StudyUpload.FromString(data)
        raise AssertionError("protobuf took non-UTF-8 text")
    except Exception as exc:  # DecodeError, as the stage met it
        assert "DecodeError" in type(exc).__name__
    upload, recoded = parse_upload(data)
    assert recoded == 2 and upload.study_id == "AC-9" and upload.metadata["patient_name"] == "Conceição"
    assert upload.videos[0].filename == "vídeo.mp4" and upload.videos[0].inline_data == b"\x00"
    assert parse_upload(pb.StudyUpload(study_id="S").SerializeToString()) == (pb.StudyUpload(study_id="S"), 0)


def test_a_nyquist_limit_that_is_not_a_positive_finite_number_is_unknown_and_not_passed_on():
    from rhd.split.ops import acquisition

    for bad in ("nan", "inf", "-60", "fast"):
        scan = acquisition({"nyquist_cm_s": bad, "pixel_spacing_mm": "0.6", "sex": "F"})
        assert scan.nyquist_cm_s == 0.0 and "nyquist_cm_s" not in scan.clinical
        assert scan.pixel_spacing_mm == 0.6 and scan.clinical["pixel_spacing_mm"] == "0.6"


def test_frames_of_another_size_are_fitted_to_the_line_with_their_spacing_and_regions():
    import numpy as np
    from rhd.imaging.video import DecodedVideo
    from rhd.split.ops import Acquisition, video_frames

    upload = pb.StudyUpload(study_id="P1")
    region = pb.UltrasoundRegion(spatial_format="spectral", x0=100, y0=300, x1=500, y1=460, delta_x=0.01, delta_y=2.0)
    image = np.full((480, 480, 3), 200, np.uint8)  # a square scanner frame
    video = DecodedVideo(frames=[image, image], fps=30.0, declared_frame_count=2)
    scan = Acquisition(pixel_spacing_mm=0.3, nyquist_cm_s=60.0, clinical={})
    frames = video_frames(upload, "P1-V00", video, scan, lambda fs: [{"bgr": f.tobytes()} for f in fs], [region])
    first = frames[0]
    assert (first.height, first.width) == (240, 320) and len(first.bgr) == 240 * 320 * 3
    assert first.pixel_spacing_mm == 0.6  # half the pixels: each covers twice the millimetres
    pixels = np.frombuffer(first.bgr, np.uint8).reshape(240, 320, 3)
    assert pixels[:, :40].max() == 0 and pixels[:, 280:].max() == 0 and pixels[:, 40:280].min() == 200
    r = first.regions[0]
    assert (r.x0, r.y0, r.x1, r.y1) == (90, 150, 290, 230) and (r.delta_x, r.delta_y) == (0.02, 4.0)
    same = video_frames(
        upload, "P1-V00", DecodedVideo([pixels], 30.0, 1), scan, lambda fs: [{"bgr": f.tobytes()} for f in fs]
    )
    assert same[0].bgr == first.bgr and same[0].pixel_spacing_mm == 0.3  # the line's size: left as it is


def test_an_upload_sent_under_another_hospitals_name_is_refused(tmp_path):
    import pytest
    from rhd.runtime.secrets import SENDER_HEADER, SecretError

    stage = _deid(tmp_path)
    upload = pb.StudyUpload(schema="rhd.v1.StudyUpload", study_id="ECHO-1", upload_id="u-1", hospital_id="H001")
    upload.videos.add(video_id="v0", inline_data=b"\x00")
    key, value, headers = sealed_upload(upload, stage.raw)
    assert (SENDER_HEADER, b"H001") in headers  # what rhd publish and the gateway write
    forged = tuple((n, b"H002" if n == SENDER_HEADER else v) for n, v in headers)
    with pytest.raises(SecretError, match="sealed for another hospital"):
        stage.handle(pb.SealedRecord.FromString(value), Position(0, 1, 0.0, key, forged))
    # On an authenticating broker the topic is the sender: only H002's principal may write H002's upload topic, and
    # no header overrides it.
    own = tuple((n, v) for n, v in headers if n != SENDER_HEADER)
    with pytest.raises(SecretError, match="sent on 'H002'"):
        stage.handle(pb.SealedRecord.FromString(value), Position(0, 1, 0.0, key, own, upload_topic("H002")))


def test_each_hospital_has_an_upload_topic_whose_letters_join_the_raw_topics():
    import pytest
    from rhd.runtime.topics import STUDIES_UPLOADED, dlq, hospital_of_upload_topic, upload_topic_for, upload_topics

    assert upload_topic("H-01") == "studies.uploaded.H-01.v1"
    assert hospital_of_upload_topic("studies.uploaded.H-01.v1") == "H-01"
    assert hospital_of_upload_topic(STUDIES_UPLOADED) is None and hospital_of_upload_topic("frames.done.v1") is None
    assert dlq(upload_topic("H-01")) == dlq(STUDIES_UPLOADED) == "studies.uploaded.v1.dlq"
    assert upload_topics(["A", "B"]) == [STUDIES_UPLOADED, "studies.uploaded.A.v1", "studies.uploaded.B.v1"]
    assert upload_topic_for(["A"], "A") == "studies.uploaded.A.v1" and upload_topic_for(["A"], "B") == STUDIES_UPLOADED
    for bad in ("", "H.1", "H/1", "H 1", "x" * 65):
        with pytest.raises(ValueError, match="hospital id"):
            upload_topic(bad)


def test_a_video_that_takes_too_long_to_decode_is_refused_and_the_limits_decode_the_same_frames(tmp_path):
    import numpy as np
    import pytest
    from rhd.imaging.video import VideoDecodeError, VideoLimits, decode_video
    from rhd.synth.generator import SynthConfig, synth_studies

    (study,) = synth_studies(3, 1, tmp_path, SynthConfig(videos_per_study=1, duration_s=(1.0, 1.0)))
    data = next(study.glob("*.mp4")).read_bytes()
    plain = decode_video(data).frames
    bounded = decode_video(data, VideoLimits(max_frames=1800, max_frame_pixels=1920 * 1080, max_seconds=60)).frames
    assert len(plain) == len(bounded) and all(np.array_equal(a, b) for a, b in zip(plain, bounded, strict=True))
    with pytest.raises(VideoDecodeError, match="decoding took longer than"):
        decode_video(data, VideoLimits(max_seconds=1e-6))
