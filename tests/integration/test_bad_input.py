"""The catalogue of bad input, end to end on the real embedded broker with every stage a separate process: each
kind is dead-lettered with a reason a person can read, its study (where it names one) still gets exactly one answer
saying why, and the line goes on. The catalogue and its outcomes are in docs/faults.md."""

import asyncio
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from aiokafka import AIOKafkaProducer
from rhd.imaging.video import decode_video, encode_lossless
from rhd.local.publish import publish_uploads, raw_keyring, upload_from_dir
from rhd.local.stack import EmbeddedStack
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import SCHEMA_HEADER, schema_headers
from rhd.runtime.secrets import KEY_ID_HEADER, SEALED_SCHEMA, SENDER_HEADER, UPLOAD_KIND, sealed_upload
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DONE, STUDIES_FEATURES, STUDIES_UPLOADED
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import Progress, follow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 45.0
MAX_VIDEO_FRAMES = 60  # the good videos have 24


@dataclass
class Kind:
    name: str
    letter: str | None  # a dead letter's reason holds this, or one of these "|"-separated (None: none expected)
    study: str | None  # the study id its answer is filed under (None: nothing names a study)
    answer: str = "failed"  # failed: FAILED saying why; answered: a diagnosis that is not FAILED
    reason: str = ""  # the answer's reason holds this (or one of its "|"-separated forms)

    def in_letter(self, text: str) -> bool:
        return bool(self.letter) and any(part in text for part in str(self.letter).split("|"))

    def in_reason(self, text: str) -> bool:
        return any(part in text for part in self.reason.split("|"))


def _mp4(frames: list[np.ndarray], path: Path) -> bytes:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 24.0, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def _dicom(path: Path, change: Callable[[pydicom.Dataset], None]) -> bytes:
    ds = pydicom.dcmread(path)
    change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Catalogue:
    """Builds each kind's upload (or raw record) from one good generated study."""

    def __init__(self, workdir: Path, live: Settings) -> None:
        (self.good,) = synth_studies(31, 1, workdir / "good", SynthConfig(videos_per_study=2, duration_s=(1.0, 1.0)))
        (self.scan,) = synth_studies(
            32, 1, workdir / "scan", SynthConfig(videos_per_study=2, duration_s=(1.0, 1.0)), dicom=True
        )
        self.work, self.live = workdir, live
        self.blobs = BlobStore(live.blob_dir)
        self.raw = raw_keyring(live)
        self.kinds: list[Kind] = []
        self.uploads: list[pb.StudyUpload] = []
        self.records: list[tuple[str, bytes, bytes, list]] = []  # topic, key, value, headers

    def upload(self, study_id: str, hospital: str = "H001", dicom: bool = False, videos: int = 1) -> pb.StudyUpload:
        folder = self.scan / "dicom" if dicom else self.good
        upload = upload_from_dir(folder, self.blobs, self.live.max_message_bytes, hospital, self.raw.seal)
        upload.study_id, upload.upload_id = study_id, f"upload-{hospital}-{study_id}"
        del upload.videos[videos:]
        return upload

    def bad_video(self, name: str, study: str, data: bytes, letter: str, filename: str = "", dicom: bool = False):
        upload = self.upload(study, dicom=dicom)
        video = upload.videos[0]
        video.ClearField("content")
        video.inline_data, video.size_bytes = data, len(data)
        video.sha256 = hashlib.sha256(data).hexdigest()
        if filename:
            video.filename = filename
        self.uploads.append(upload)
        self.kinds.append(Kind(name, letter, study, "failed", letter))

    def build(self) -> None:
        good_mp4 = sorted(self.good.glob("*.mp4"))[0].read_bytes()
        frames = decode_video(good_mp4).frames
        one_dicom = sorted((self.scan / "dicom").glob("*.dcm"))[0]
        # -- videos that cannot be read (their study: FAILED, saying why) --------------------------------------
        self.bad_video("truncated MP4", "BAD-TRUNC", good_mp4[: len(good_mp4) // 2], "truncated|decodable")
        self.bad_video("a container with no frames", "BAD-NOFRAMES", good_mp4[:48], "decodable")
        self.bad_video("0-byte file", "BAD-EMPTY", b"", "empty video: 0 bytes")
        self.bad_video("not a video", "BAD-PDF", b"%PDF-1.4 a report, not a video" * 20, "not a decodable video")
        unknown_codec = encode_lossless(frames[:4], 24.0).replace(b"HFYU", b"ZZZZ")
        self.bad_video("an unknown codec", "BAD-CODEC", unknown_codec, "decodable")
        self.bad_video(
            "truncated DICOM", "BAD-DCMTRUNC", one_dicom.read_bytes()[:5000], "unreadable", "IM1.dcm", dicom=True
        )
        ct = _dicom(one_dicom, lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"))
        self.bad_video("DICOM that is not ultrasound", "BAD-CT", ct, "not ultrasound", "IM1.dcm", dicom=True)
        charset = _dicom(one_dicom, lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 999"))
        self.bad_video("wrong character set", "BAD-CHARSET", charset, "SpecificCharacterSet", "IM1.dcm", dicom=True)
        self.bad_video("claims DICOM, is not", "BAD-NOTDCM", b"%PDF-1.4" * 50, "not a DICOM", "IM1.dcm", dicom=True)
        bomb = _mp4([np.zeros((240, 320, 3), np.uint8)] * (3 * MAX_VIDEO_FRAMES), self.work / "bomb.mp4")
        self.bad_video("too many frames (a bomb)", "BAD-BOMB", bomb, f"more than {MAX_VIDEO_FRAMES} frames")
        huge = _mp4([np.zeros((1200, 1808, 3), np.uint8)] * 2, self.work / "huge.mp4")
        self.bad_video("frames too large", "BAD-HUGE", huge, "over the 2073600-pixel limit")
        # -- references and checksums ------------------------------------------------------------------------
        for name, study, uri, letter in (
            ("blob reference outside the store", "BAD-BLOBURL", "file:///etc/passwd", "unreadable"),
            ("blob reference with a path trick", "BAD-BLOBPATH", "blob:sha256:../../../etc/passwd", "unreadable"),
            ("blob reference to a missing blob", "BAD-BLOBGONE", "blob:sha256:" + "0" * 64, "unreadable"),
        ):
            upload = self.upload(study)
            upload.videos[0].ClearField("content")
            upload.videos[0].blob_uri = uri
            self.uploads.append(upload)
            self.kinds.append(Kind(name, letter, study, "failed", letter))
        upload = self.upload("BAD-CHECKSUM")
        upload.videos[0].sha256 = "f" * 64
        self.uploads.append(upload)
        self.kinds.append(Kind("checksum mismatch", "checksum mismatch", "BAD-CHECKSUM", "failed", "checksum"))
        upload = self.upload("BAD-NOPATIENT")
        del upload.metadata["patient_id"]
        self.uploads.append(upload)
        self.kinds.append(Kind("no patient ID", "no patient ID", "BAD-NOPATIENT", "failed", "no patient ID"))
        upload = self.upload("BAD-NOVIDEOS")
        del upload.videos[:]
        self.uploads.append(upload)
        self.kinds.append(Kind("an upload without videos", "without videos", "BAD-NOVIDEOS", "failed", "without"))
        # -- input that is odd but readable: answered, not refused --------------------------------------------
        upload = self.upload("ODD-PATH")
        upload.videos[0].filename = "../../../../etc/passwd.mp4"
        self.uploads.append(upload)
        self.kinds.append(Kind("path tricks in a file name", None, "ODD-PATH", "answered"))
        upload = self.upload("ODD-NYQUIST")
        upload.metadata["nyquist_cm_s"] = "nan"
        self.uploads.append(upload)
        # Without a Nyquist limit no velocity can be read off a colour Doppler frame: its study (one colour video)
        # ends FAILED, saying so, instead of measuring velocities on a scale of NaN.
        self.kinds.append(Kind("a NaN Nyquist limit", None, "ODD-NYQUIST", "failed", "Nyquist limit unknown"))
        large = _mp4([cv2.resize(f, (640, 480)) for f in frames], self.work / "large.mp4")
        upload = self.upload("ODD-SIZE")
        upload.videos[0].ClearField("content")
        upload.videos[0].inline_data, upload.videos[0].sha256 = large, hashlib.sha256(large).hexdigest()
        self.uploads.append(upload)
        self.kinds.append(Kind("frames of another size (480 x 640)", None, "ODD-SIZE", "answered"))
        for hospital in ("H001", "H002"):
            self.uploads.append(self.upload("TWIN", hospital))
        self.kinds.append(Kind("the same study id from two hospitals", None, "H001/TWIN", "answered"))
        self.kinds.append(Kind("the same study id from two hospitals", None, "H002/TWIN", "answered"))
        self.uploads += [self.upload("DUP"), self.upload("DUP")]
        self.kinds.append(Kind("an upload published twice", None, "DUP", "answered"))
        # Latin-1 text, as an older system writes it: the StudyUpload wire format with non-UTF-8 strings.
        latin = self.upload("ODD-LATIN1")
        latin.upload_id = "L1"
        loose = pb.StudyUploadBytes.FromString(latin.SerializeToString())
        for entry in loose.metadata:
            if entry.key == b"patient_name":
                entry.value = "Conceição Araújo".encode("latin-1")
        latin_bytes = loose.SerializeToString()
        record = pb.SealedRecord(
            schema=SEALED_SCHEMA, kind=UPLOAD_KIND, key_id=self.raw.current, envelope=self.raw.seal(latin_bytes, b"L1")
        )
        self.records.append(
            (STUDIES_UPLOADED, b"L1", record.SerializeToString(), [(KEY_ID_HEADER, self.raw.current.encode())])
        )
        self.kinds.append(Kind("metadata in Latin-1, not UTF-8", None, "ODD-LATIN1", "answered"))
        # -- records that name no study: a dead letter is all there can be ---------------------------------------
        key, value, headers = sealed_upload(self.upload("BAD-NOID"), self.raw)
        tampered = pb.SealedRecord.FromString(value)
        tampered.envelope = tampered.envelope[:-1] + bytes([tampered.envelope[-1] ^ 1])
        no_id = self.upload("")
        no_id.upload_id = "NOID"
        for record_key, record_value, letter in (
            (b"garbage", b"\xff\xfe garbage", "undecodable"),
            (b"oversized", b"\x00" * 1_500_000, "over the 1000000-byte message limit"),
            (b"plain", self.upload("BAD-PLAIN").SerializeToString(), "not a sealed upload"),
            (key, tampered.SerializeToString(), "does not open"),
            (b"NOID", sealed_upload(no_id, self.raw)[1], "without study_id"),
        ):
            self.records.append((STUDIES_UPLOADED, record_key, record_value, headers))
            self.kinds.append(Kind(f"raw upload record: {letter}", letter, None))
        # An upload sealed for one hospital, sent under another's name: refused, never filed under either.
        key, value, headers = sealed_upload(self.upload("BAD-SENDER", "H001"), self.raw)
        headers = [(name, b"H002" if name == SENDER_HEADER else v) for name, v in headers]
        self.records.append((STUDIES_UPLOADED, key, value, headers))
        self.kinds.append(Kind("sent under another hospital's name", "sealed for another hospital", None))
        diagnosis = pb.Diagnosis(study_id="X", label=pb.LABEL_DEFINITE)
        for name, value, found_headers, letter in (
            ("a record of another type", diagnosis, schema_headers(diagnosis), "a rhd.v1.Diagnosis record where"),
            ("an unknown message version", diagnosis, [(SCHEMA_HEADER, b"rhd.v2.StudyFeatures")], "rhd.v2"),
            ("a record without its schema", diagnosis, [], "no rhd-schema header"),
        ):
            self.records.append((STUDIES_FEATURES, b"X", value.SerializeToString(), found_headers))
            self.kinds.append(Kind(name, letter, None))
        wrong_type = b"\x0d\x00\x00\x80\x3f"  # field 1 (study_id, a string) sent as a 32-bit number
        self.records.append((STUDIES_FEATURES, b"Y", wrong_type, schema_headers(pb.StudyFeatures())))
        self.kinds.append(Kind("a field of the wrong type", "without study_id", None))
        stray = pb.FrameDone(
            result=pb.FrameResult(key=pb.FrameKey(study_id="GHOST", video_id="GHOST-V00"), status=1, stage="view")
        )
        self.records.append((FRAMES_DONE, b"GHOST", stray.SerializeToString(), schema_headers(stray)))
        self.kinds.append(Kind("a frame result for a study never registered", "never registered", None))


def answered(catalogue: Catalogue) -> Callable[[Progress], bool]:
    wanted = {k.study for k in catalogue.kinds if k.study}

    def done(progress: Progress) -> bool:
        ghost = any("never registered" in d.reason for d in progress.dead_letters)
        return wanted <= set(progress.diagnoses) and ghost

    return done


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, broker_kind):
    workdir = tmp_path_factory.mktemp("bad")
    settings = Settings(
        broker=broker_kind,
        blob_dir=workdir / "blobs",
        models_dir=ROOT / "models",
        study_deadline_s=DEADLINE_S,
        max_video_frames=MAX_VIDEO_FRAMES,
    )
    stack = EmbeddedStack(workdir, settings)

    async def run():
        live = await stack.start()
        catalogue = Catalogue(workdir, live)
        catalogue.build()
        await publish_uploads(live, catalogue.uploads)
        producer = AIOKafkaProducer(bootstrap_servers=live.bootstrap_servers, max_request_size=4_000_000)
        await producer.start()
        try:
            for topic, key, value, headers in catalogue.records:
                await producer.send_and_wait(topic, value, key=key, headers=headers)
        finally:
            await producer.stop()
        progress = await follow(live, answered(catalogue), timeout_s=600, settle_s=8.0)
        return catalogue, progress, {s.name: s.alive() for s in stack.services}

    try:
        catalogue, progress, alive = asyncio.run(run())
    finally:
        codes = stack.stop()
    return catalogue, progress, alive, codes


def test_the_catalogue_holds_at_least_25_kinds_of_bad_input(outcome):
    catalogue = outcome[0]
    assert len({k.name for k in catalogue.kinds}) >= 25


def test_each_kind_is_dead_lettered_with_a_readable_reason(outcome):
    catalogue, progress, _, _ = outcome
    reasons = [d.reason for d in progress.dead_letters]
    missing = [k.name for k in catalogue.kinds if k.letter and not any(k.in_letter(r) for r in reasons)]
    assert not missing, (missing, reasons)


def test_every_study_named_gets_exactly_one_answer_saying_why(outcome):
    catalogue, progress, _, _ = outcome
    for kind in (k for k in catalogue.kinds if k.study):
        answers = progress.diagnoses.get(kind.study, [])
        assert len(answers) == 1, (kind.name, len(answers))
        d = answers[0]
        if kind.answer == "failed":
            assert d.completeness == pb.COMPLETENESS_FAILED and d.label == pb.LABEL_UNSPECIFIED, kind.name
            assert kind.in_reason(d.reason), (kind.name, d.reason)
        else:
            assert d.completeness != pb.COMPLETENESS_FAILED, (kind.name, d.reason)
            assert d.label != pb.LABEL_UNSPECIFIED or d.referred, kind.name


def test_the_line_goes_on_every_service_alive_and_stopped_cleanly(outcome):
    _, _, alive, codes = outcome
    assert all(alive.values()), alive
    assert all(code == 0 for code in codes.values()), codes


def test_nothing_is_diagnosed_for_records_that_name_no_study(outcome):
    _, progress, _, _ = outcome
    assert "GHOST" not in progress.diagnoses and "X" not in progress.diagnoses and "Y" not in progress.diagnoses
    assert json.dumps(sorted(progress.diagnoses)).count("BAD-NOID") == 0
    assert not any("BAD-SENDER" in name for name in progress.diagnoses)
