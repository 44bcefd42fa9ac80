"""deid: studies.uploaded.v1 (sealed uploads, identifiable: the home region only) -> studies.deidentified.v1 (what
the policy's line profile lets leave: pseudonymous ids, generalised quasi-identifiers, clean lossless pixels) +
studies.links.v1 (the re-link map, sealed, home region). A video that cannot be de-identified is dead-lettered
(sealed) and listed as failed, so the study still gets its answer. Raw blobs are deleted past the policy's
retention."""

import datetime as dt
import logging
import time
from typing import Any

from rhd.deid.anonymity import Census, class_of
from rhd.deid.ops import (
    deidentify_upload,
    link_bytes,
    record_key_pseudonym,
    release_as,
    study_pseudonym,
    travelling_pieces,
)
from rhd.deid.policy import load_policy
from rhd.imaging.video import VideoLimits
from rhd.runtime import metrics
from rhd.runtime.blobs import BlobStore, uri_of
from rhd.runtime.frames import FrameStore
from rhd.runtime.links import read_link_map
from rhd.runtime.records import Output, dead_letter_output, header
from rhd.runtime.secrets import (
    LINK_KEYRING,
    RAW_KEYRING,
    SEALED_SCHEMA,
    SENDER_HEADER,
    UPLOAD_KIND,
    SecretError,
    is_sealed,
    load_keyring,
    load_pseudonym_key,
    opened_upload,
)
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import (
    STUDIES_DEIDENTIFIED,
    STUDIES_LINKS,
    STUDIES_UPLOADED,
    hospital_of_upload_topic,
    upload_topics,
)
from rhd.v1 import rhd_pb2 as pb

log = logging.getLogger(__name__)

# Room left in the de-identified upload for everything but the video bytes.
ENVELOPE_BYTES = 65_536


class Deid(
    StageService,
    name="deid",
    input_topic=STUDIES_UPLOADED,
    input_type=pb.SealedRecord,
    identifiable=True,
    tick_seconds=30.0,
    batch_records=1,  # an upload at a time: each is a whole study's videos
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
        self.two_regions = settings.two_regions
        # One region with the frame store: the cleaned frames go there as they are, where split reads them (no
        # lossless encode here, no decode there). Two regions: a lossless copy crosses with the records.
        store = settings.frame_codec == "store" and not settings.two_regions
        self.keep = FrameStore(settings.blob_dir, settings.frame_retention_s).put_video if store else None
        self.limits = VideoLimits(
            max_frames=settings.max_video_frames,
            max_frame_pixels=settings.max_frame_pixels,
            max_seconds=settings.max_decode_s,
        )
        self.max_upload_frames = settings.max_upload_frames
        self.census = Census()
        await self._count_releases(settings)
        self.tick(time.time())

    async def _count_releases(self, settings: Settings) -> None:
        """The anonymity census from the link map (what was released, when), so a restart keeps measuring k over
        every release; an erased study's tombstone takes its release out."""
        links = await read_link_map(settings, self.links, f"{self.name}-census")
        for pseudo, link in links.items():
            if "released" in link:
                released = class_of(link["released"], self.policy.anonymity.released)
                self.census.add(pseudo, str(link.get("day", "")), released)
        log.info("anonymity census: %d releases in the link map", len(self.census.released))

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

    @classmethod
    def input_topics(cls, settings: Settings) -> list[str]:
        return upload_topics(settings.hospitals)

    def handle(self, record: pb.SealedRecord, at: Position) -> list[Output]:
        upload = opened_upload(record, at.key, self.raw)
        # The sender: on a hospital's own upload topic, the hospital the broker let write it (its ACL names that
        # hospital's principal only); on the shared raw topic (an unauthenticated broker), the header the
        # publisher wrote. Either way it must be the hospital the upload was sealed for.
        owner = hospital_of_upload_topic(at.topic)
        if owner is not None and owner != upload.hospital_id:
            raise SecretError(
                f"sent on {owner!r}'s upload topic but sealed for another hospital: refused (one sender, one namespace)"
            )
        sender = header(at.headers, SENDER_HEADER)
        if sender is not None and sender != upload.hospital_id:
            raise SecretError(
                f"sent as {sender!r} but sealed for another hospital: refused (one sender, one namespace)"
            )
        if not upload.study_id:
            raise SecretError("sealed upload without study_id: no study to answer")
        if not upload.videos:
            return self._not_deidentified(upload, record, at, "upload without videos", "rejected")
        # The de-identified videos too large to go inline: into this region's blob store, or (two regions, each
        # with its own store) kept here and sent ahead of the study, in pieces, for split to store where it runs.
        travelling: dict[str, bytes] = {}

        def travel(data: bytes) -> str:
            uri = uri_of(data)  # one hash of a whole video, not two
            travelling[uri] = data
            return uri

        try:
            study = deidentify_upload(
                upload,
                self._read,
                travel if self.two_regions else self.blobs.put,
                self.policy,
                self.profile,
                self.key,
                self.budget,
                self.limits,
                self.max_upload_frames,
                self.keep,
            )
        except Exception as exc:  # the upload as a whole: its study is still answered (FAILED, saying why)
            reason = f"upload not de-identified: {type(exc).__name__} (details withheld: identifiable input)"
            return self._not_deidentified(upload, record, at, reason, type(exc).__name__)
        pseudo = study.upload.study_id
        day = dt.datetime.now(dt.UTC).date().isoformat()
        study.link["day"] = day
        anonymity = self.policy.anonymity
        own = class_of(study.link["released"], anonymity.released)
        first = pseudo not in self.census.released  # a study published again is counted once
        released = self.census.release(pseudo, day, own, anonymity.generalise_positions, anonymity.min_k)
        if first and released != own:
            metrics.ANONYMITY_WITHHELD.labels(self.profile.name).inc()
        release_as(study, released, self.policy)
        self._gauge(day)
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
        pieces = travelling_pieces(pseudo, travelling, self.budget)
        outputs += [Output(STUDIES_DEIDENTIFIED, pseudo, piece) for piece in pieces]
        # The de-identified study goes last: its link (and its videos' pieces) are written before anything
        # downstream can answer for it.
        return [*outputs, Output(STUDIES_DEIDENTIFIED, pseudo, study.upload)]

    def _not_deidentified(
        self, upload: pb.StudyUpload, record: pb.SealedRecord, at: Position, reason: str, error_type: str
    ) -> list[Output]:
        """An upload that opened but cannot be de-identified (or holds no video): dead-lettered sealed (its reason
        names no value of it), and answered: the study goes on with every video failed and the reason (or none),
        and its link, so the hospital reads its FAILED diagnosis under its own ids."""
        pseudo = study_pseudonym(self.key, upload.hospital_id, upload.study_id)
        log.error("deid: study %s: %s", pseudo, reason)
        out = pb.StudyUpload(schema="rhd.v1.StudyUpload", study_id=pseudo, upload_id=upload.upload_id)
        out.uploaded_at.CopyFrom(upload.uploaded_at)
        for index in range(max(1, len(upload.videos))):  # an upload without videos: one entry saying so
            out.videos.add(video_id=f"{pseudo}-V{index:02d}", error=reason)
        link = {
            "pseudonym": pseudo,
            "hospital_id": upload.hospital_id,
            "study_id": upload.study_id,
            "upload_id": upload.upload_id,
            "videos": {v.video_id or v.filename: f"{pseudo}-V{i:02d}" for i, v in enumerate(upload.videos)},
            "day": dt.datetime.now(dt.UTC).date().isoformat(),
        }
        sealed = pb.SealedRecord(
            schema=SEALED_SCHEMA, kind="link", key_id=self.links.current, envelope=self.links.seal(link_bytes(link))
        )
        letter = dead_letter_output(
            STUDIES_UPLOADED,
            self.name,
            reason,
            key=pseudo.encode(),
            error_type=error_type,
            study_id=pseudo,
            partition=at.partition,
            offset=at.offset,
            original=record.SerializeToString(),  # sealed already
        )
        letter.message.sealed_key = self.raw.seal(at.key)  # type: ignore[attr-defined]
        return [letter, Output(STUDIES_LINKS, pseudo, sealed), Output(STUDIES_DEIDENTIFIED, pseudo, out)]

    def _gauge(self, day: str) -> None:
        metrics.ANONYMITY_K.labels("day").set(self.census.k(day))
        metrics.ANONYMITY_K.labels("all").set(self.census.k())

    def tick(self, now: float) -> list[Output]:
        """The raw data's retention: sealed blobs older than the policy allows are deleted (and counted); the
        day's k starts again at midnight UTC."""
        self._gauge(dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat())
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
            except Exception:
                pass
        letter.study_id = pseudo
        letter.sealed_key = self.raw.seal(letter.key)  # the envelope is bound to it: what a replay writes again
        letter.key = (pseudo or record_key_pseudonym(self.key, letter.key)).encode()


def build() -> StageService:
    return Deid()
