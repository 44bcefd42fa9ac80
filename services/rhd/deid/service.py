"""deid: studies.uploaded.v1 (identifiable, home region) -> studies.deidentified.v1 (what the policy's line profile
lets leave: pseudonymous ids, generalised quasi-identifiers, clean lossless pixels) + studies.links.v1 (the re-link
map, sealed, home region). A video that cannot be de-identified is dead-lettered (sealed) and listed as failed, so
the study still gets its answer."""

from typing import Any

from rhd.deid.ops import deidentify_upload, link_bytes, record_key_pseudonym, study_pseudonym
from rhd.deid.policy import load_policy
from rhd.runtime import metrics
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import Output, dead_letter_output
from rhd.runtime.secrets import (
    LINK_KEYRING,
    RAW_KEYRING,
    load_keyring,
    load_pseudonym_key,
)
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import STUDIES_DEIDENTIFIED, STUDIES_LINKS, STUDIES_UPLOADED
from rhd.v1 import rhd_pb2 as pb

# Room left in the de-identified upload for everything but the video bytes.
ENVELOPE_BYTES = 65_536


class Deid(StageService, name="deid", input_topic=STUDIES_UPLOADED, input_type=pb.StudyUpload, identifiable=True):
    async def start(self, settings: Settings) -> None:
        self.policy = load_policy(settings.deid_policy)
        self.profile = self.policy.profile(settings.deid_profile)
        if self.profile.region != "gpu":
            raise ValueError(f"profile {self.profile.name!r} is for the {self.profile.region} region, not for the line")
        self.key = load_pseudonym_key(settings.secrets_dir)
        self.raw = load_keyring(settings.secrets_dir / RAW_KEYRING)
        self.links = load_keyring(settings.secrets_dir / LINK_KEYRING)
        self.blobs = BlobStore(settings.blob_dir)
        self.budget = settings.max_message_bytes - ENVELOPE_BYTES

    def validate(self, upload: pb.StudyUpload) -> str | None:
        return None if upload.study_id and upload.videos else "upload without study_id or without videos"

    def _read(self, ref: pb.VideoRef) -> bytes:
        return ref.inline_data if ref.HasField("inline_data") else self.blobs.get(ref.blob_uri)

    def handle(self, upload: pb.StudyUpload, at: Position) -> list[Output]:
        study = deidentify_upload(upload, self._read, self.blobs.put, self.policy, self.profile, self.key, self.budget)
        pseudo = study.upload.study_id
        sealed = pb.SealedRecord(
            schema="rhd.v1.SealedRecord",
            kind="link",
            key_id=self.links.current,
            envelope=self.links.seal(link_bytes(study.link)),
        )
        outputs = [Output(STUDIES_LINKS, pseudo, sealed)]
        for failure in study.failures:
            video = failure.video
            original = video.inline_data if video.HasField("inline_data") else video.blob_uri.encode()
            outputs.append(
                dead_letter_output(
                    STUDIES_UPLOADED,
                    self.name,
                    failure.reason,
                    key=pseudo.encode(),
                    error_type="video",
                    study_id=pseudo,
                    video_id=f"{pseudo}-V{failure.index:02d}",
                    original=self.seal(original),
                )
            )
        metrics.DEID_REMOVED.labels(self.profile.name).inc(int(study.upload.metadata.get("removed_fields", "0")))
        # The de-identified study goes last: its link is written before anything downstream can answer for it.
        return [*outputs, Output(STUDIES_DEIDENTIFIED, pseudo, study.upload)]

    def seal(self, original: bytes) -> bytes:
        return self.raw.seal(original)

    def redact(self, letter: pb.DeadLetter, message: Any) -> None:
        """The letter's plain fields name the study by its pseudonym; a record that did not parse, by its key's."""
        if isinstance(message, pb.StudyUpload) and message.study_id:
            pseudo = study_pseudonym(self.key, message.hospital_id, message.study_id)
        else:
            pseudo = record_key_pseudonym(self.key, letter.key)
        letter.study_id = pseudo if isinstance(message, pb.StudyUpload) else ""
        letter.key = pseudo.encode()


def build() -> StageService:
    return Deid()
