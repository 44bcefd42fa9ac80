"""deid: studies.uploaded.v1 (sealed uploads, identifiable: the home region only) -> studies.deidentified.v1 (what
the policy's line profile lets leave: pseudonymous ids, generalised quasi-identifiers, clean lossless pixels) +
studies.links.v1 (the re-link map, sealed, home region). A video that cannot be de-identified is dead-lettered
(sealed) and listed as failed, so the study still gets its answer. Raw blobs are deleted past the policy's
retention."""

import time
from typing import Any

from rhd.deid.ops import deidentify_upload, link_bytes, record_key_pseudonym, study_pseudonym
from rhd.deid.policy import load_policy
from rhd.runtime import metrics
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import Output, dead_letter_output
from rhd.runtime.secrets import (
    LINK_KEYRING,
    RAW_KEYRING,
    SEALED_SCHEMA,
    UPLOAD_KIND,
    SecretError,
    is_sealed,
    load_keyring,
    load_pseudonym_key,
    opened_upload,
)
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import STUDIES_DEIDENTIFIED, STUDIES_LINKS, STUDIES_UPLOADED
from rhd.v1 import rhd_pb2 as pb

# Room left in the de-identified upload for everything but the video bytes.
ENVELOPE_BYTES = 65_536


class Deid(
    StageService,
    name="deid",
    input_topic=STUDIES_UPLOADED,
    input_type=pb.SealedRecord,
    identifiable=True,
    tick_seconds=30.0,
):
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
        self.tick(time.time())

    def validate(self, record: pb.SealedRecord) -> str | None:
        if record.schema != SEALED_SCHEMA or record.kind != UPLOAD_KIND or not record.envelope:
            # Its fields are not quoted: an unsealed upload parsed as a SealedRecord puts its study id in `kind`.
            return "not a sealed upload: publish a SealedRecord of kind upload (see docs/hospitals.md)"
        return None

    def _read(self, ref: pb.VideoRef) -> bytes:
        """A video's bytes: inline (inside the sealed upload), or a sealed blob opened with the raw keyring."""
        if ref.HasField("inline_data"):
            return ref.inline_data
        stored = self.blobs.get(ref.blob_uri)
        if not is_sealed(stored):
            raise ValueError("raw blob not sealed: the publisher must seal what it stores")
        return self.raw.open(stored)

    def handle(self, record: pb.SealedRecord, at: Position) -> list[Output]:
        upload = opened_upload(record, at.key, self.raw)
        if not (upload.study_id and upload.videos):
            raise SecretError("sealed upload without study_id or without videos")
        study = deidentify_upload(upload, self._read, self.blobs.put, self.policy, self.profile, self.key, self.budget)
        pseudo = study.upload.study_id
        sealed = pb.SealedRecord(
            schema=SEALED_SCHEMA,
            kind="link",
            key_id=self.links.current,
            envelope=self.links.seal(link_bytes(study.link)),
        )
        outputs = [Output(STUDIES_LINKS, pseudo, sealed)]
        for failure in study.failures:
            video = failure.video
            original = (
                {"original": self.seal(video.inline_data)}
                if video.HasField("inline_data")
                else {"original_blob_uri": video.blob_uri}  # a sealed blob already
            )
            outputs.append(
                dead_letter_output(
                    STUDIES_UPLOADED,
                    self.name,
                    failure.reason,
                    key=pseudo.encode(),
                    error_type="video",
                    study_id=pseudo,
                    video_id=f"{pseudo}-V{failure.index:02d}",
                    **original,
                )
            )
        metrics.DEID_REMOVED.labels(self.profile.name).inc(int(study.upload.metadata.get("removed_fields", "0")))
        # The de-identified study goes last: its link is written before anything downstream can answer for it.
        return [*outputs, Output(STUDIES_DEIDENTIFIED, pseudo, study.upload)]

    def tick(self, now: float) -> list[Output]:
        """The raw data's retention: sealed blobs older than the policy allows are deleted (and counted)."""
        deleted, held, size = self.blobs.sweep_sealed(now - self.policy.raw_retention_s, is_sealed)
        metrics.RAW_BLOBS_DELETED.labels(self.name).inc(deleted)
        metrics.RAW_BLOBS.labels(self.name).set(held)
        metrics.RAW_BLOB_BYTES.labels(self.name).set(size)
        return []

    def seal(self, original: bytes) -> bytes:
        return original if is_sealed(original) else self.raw.seal(original)

    def redact(self, letter: pb.DeadLetter, message: Any) -> None:
        """The letter's plain fields name the study by its pseudonym; a record that did not open, by its key's."""
        pseudo = ""
        if isinstance(message, pb.SealedRecord):
            try:
                upload = opened_upload(message, letter.key, self.raw)
                pseudo = study_pseudonym(self.key, upload.hospital_id, upload.study_id)
            except (SecretError, ValueError):
                pass
        letter.study_id = pseudo
        letter.key = (pseudo or record_key_pseudonym(self.key, letter.key)).encode()


def build() -> StageService:
    return Deid()
