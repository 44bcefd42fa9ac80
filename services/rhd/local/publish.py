"""Hospital side: turn a study folder into a StudyUpload (videos inline while small, else by blob
reference) and publish it to studies.uploaded.v1."""

import hashlib
import json
import uuid
from pathlib import Path

from google.protobuf import json_format

from rhd.runtime import kafka
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import now
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STUDIES_UPLOADED
from rhd.v1 import rhd_pb2 as pb

# Room left in a message for everything but the video bytes.
ENVELOPE_BYTES = 16_384


def upload_from_dir(study_dir: Path, blobs: BlobStore, max_message_bytes: int) -> pb.StudyUpload:
    """Read study.json and its videos; inline each video while the upload stays under the limit."""
    meta = json.loads((study_dir / "study.json").read_text())
    upload = pb.StudyUpload(
        schema="rhd.v1.StudyUpload",
        study_id=meta["study_id"],
        upload_id=uuid.uuid4().hex,
        hospital_id=str(meta.get("hospital_id", "")),
        uploaded_at=now(),
        metadata={k: str(v) for k, v in meta.items() if k != "videos"},
    )
    budget = max_message_bytes - ENVELOPE_BYTES
    for video in meta["videos"]:
        data = (study_dir / video["filename"]).read_bytes()
        ref = upload.videos.add(
            video_id=video["video_id"],
            filename=video["filename"],
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            # The scanner's calibrated regions (a spectral trace's baseline and scale), named as the proto names them.
            regions=[json_format.ParseDict(r, pb.UltrasoundRegion()) for r in video.get("regions", [])],
        )
        if len(data) <= budget:
            ref.inline_data = data
            budget -= len(data)
        else:
            ref.blob_uri = blobs.put(data)
    return upload


async def publish_uploads(settings: Settings, uploads: list[pb.StudyUpload]) -> None:
    producer = kafka.producer(settings, "publish")
    await producer.start()
    try:
        for upload in uploads:
            await producer.send_and_wait(STUDIES_UPLOADED, upload.SerializeToString(), key=upload.study_id.encode())
    finally:
        await producer.stop()
