"""Hospital side: turn a study folder (MP4 videos with study.json, or the DICOM files of one study) into a
StudyUpload (videos inline while small, else by blob reference) and publish it to studies.uploaded.v1."""

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pydicom
from google.protobuf import json_format
from pydicom.errors import InvalidDicomError

from rhd.runtime import kafka
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import now
from rhd.runtime.secrets import RAW_KEYRING, Keyring, load_keyring, sealed_upload
from rhd.runtime.settings import Settings
from rhd.runtime.topics import upload_topic_for
from rhd.v1 import rhd_pb2 as pb

# Room left in a message for everything but the video bytes (and the envelope's 34 bytes).
ENVELOPE_BYTES = 16_384


Seal = Callable[[bytes], bytes]


def upload_from_dir(
    study_dir: Path, blobs: BlobStore, max_message_bytes: int, hospital_id: str = "", seal: Seal | None = None
) -> pb.StudyUpload:
    """A study folder as one upload: study.json and its MP4 videos, or (without study.json) the DICOM files in it,
    one study. Each video is inline while the upload stays under the limit, else in the blob store, sealed with
    `seal` (the raw keyring's: the blob store holds no identifiable byte in the clear)."""
    study_dir = Path(study_dir)
    seal = seal or (lambda data: data)
    if not (study_dir / "study.json").exists():
        return _dicom_upload(study_dir, blobs, max_message_bytes, hospital_id, seal)
    meta = json.loads((study_dir / "study.json").read_text())
    upload = pb.StudyUpload(
        schema="rhd.v1.StudyUpload",
        study_id=meta["study_id"],
        upload_id=uuid.uuid4().hex,
        hospital_id=hospital_id or str(meta.get("hospital_id", "")),
        uploaded_at=now(),
        metadata={k: str(v) for k, v in meta.items() if k != "videos"},
    )
    budget = max_message_bytes - ENVELOPE_BYTES
    for video in meta["videos"]:
        data = (study_dir / video["filename"]).read_bytes()
        # The scanner's calibrated regions (a spectral trace's baseline and scale), named as the proto names them.
        regions = [json_format.ParseDict(r, pb.UltrasoundRegion()) for r in video.get("regions", [])]
        budget = _add_video(upload, video["video_id"], video["filename"], data, regions, blobs, budget, seal)
    return upload


def _add_video(
    upload: pb.StudyUpload,
    video_id: str,
    filename: str,
    data: bytes,
    regions: list[pb.UltrasoundRegion],
    blobs: BlobStore,
    budget: int,
    seal: Seal,
) -> int:
    ref = upload.videos.add(
        video_id=video_id, filename=filename, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
    )
    ref.regions.extend(regions)
    if len(data) <= budget:
        ref.inline_data = data
        return budget - len(data)
    ref.blob_uri = blobs.put(seal(data))
    return budget


def _dicom_upload(
    study_dir: Path, blobs: BlobStore, max_message_bytes: int, hospital_id: str, seal: Seal
) -> pb.StudyUpload:
    """The DICOM files of a folder as one study, keyed by their Study Instance UID (which deid replaces by a
    pseudonym). Files that are not DICOM, or of another study, are an error: nothing is published."""
    files = sorted(p for p in study_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{study_dir}: neither study.json nor DICOM files")
    study_uids = set()
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            raise ValueError(f"{path.name}: not a DICOM file ({type(exc).__name__})") from None
        study_uids.add(str(header.get("StudyInstanceUID", "")))
    if len(study_uids) != 1 or "" in study_uids:
        raise ValueError(f"{study_dir}: DICOM files of {len(study_uids)} studies (or without Study Instance UID)")
    instances = [(path.name, path.read_bytes()) for path in files]
    return dicom_upload(study_uids.pop(), hospital_id, instances, blobs, max_message_bytes, seal)


def dicom_upload(
    study_uid: str,
    hospital_id: str,
    instances: list[tuple[str, bytes]],
    blobs: BlobStore,
    max_message_bytes: int,
    seal: Seal,
) -> pb.StudyUpload:
    """One study's DICOM instances (file name, Part 10 bytes) as one upload, each instance a video, keyed by the
    Study Instance UID (which deid replaces by a pseudonym); large ones stored sealed."""
    upload = pb.StudyUpload(
        schema="rhd.v1.StudyUpload",
        study_id=study_uid,
        upload_id=uuid.uuid4().hex,
        hospital_id=hospital_id,
        uploaded_at=now(),
    )
    budget = max_message_bytes - ENVELOPE_BYTES
    for index, (name, data) in enumerate(instances):
        budget = _add_video(upload, f"{index:04d}", name, data, [], blobs, budget, seal)
    return upload


def raw_keyring(settings: Settings) -> Keyring:
    """The keyring uploads are sealed with (the home region's; a hospital's publisher holds it)."""
    return load_keyring(settings.secrets_dir / RAW_KEYRING)


async def publish_uploads(settings: Settings, uploads: list[pb.StudyUpload]) -> None:
    raw = raw_keyring(settings)
    by_topic: dict[str, list[pb.StudyUpload]] = {}
    for upload in uploads:
        by_topic.setdefault(upload_topic_for(settings.hospitals, upload.hospital_id), []).append(upload)
    for topic, mine in by_topic.items():
        await kafka.send_all(settings, "publish", topic, (sealed_upload(upload, raw) for upload in mine))
