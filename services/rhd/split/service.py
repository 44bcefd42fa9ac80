"""split: studies.deidentified.v1 -> frames.decoded.v1 (one record per frame, its pixels written once to the frame
store, or raw or PNG in the record) + the study's manifest; a video that cannot be decoded is dead-lettered and listed
as failed in the manifest. Split also prunes the frame store of frames past their retention."""

from functools import partial
from typing import Any

import numpy as np

from rhd.imaging.video import LINE_SHAPE, DecodedVideo, VideoDecodeError, VideoLimits, decode_video, fit_of
from rhd.runtime.blobs import BlobStore
from rhd.runtime.codec import frame_pixels
from rhd.runtime.frames import SCHEME as FRAMES_SCHEME
from rhd.runtime.frames import FrameStore
from rhd.runtime.records import Output, dead_letter_output
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_DECODED, FRAMES_DONE, STUDIES_DEIDENTIFIED
from rhd.split.ops import acquisition, video_frames
from rhd.v1 import rhd_pb2 as pb


class Split(
    StageService,
    name="split",
    input_topic=STUDIES_DEIDENTIFIED,
    input_type=pb.StudyUpload,
    batch_records=1,
    tick_seconds=60.0,
):
    async def start(self, settings: Settings) -> None:
        self.blobs = BlobStore(settings.blob_dir)
        self.limits = VideoLimits(
            max_frames=settings.max_video_frames,
            max_frame_pixels=settings.max_frame_pixels,
            max_seconds=settings.max_decode_s,
        )
        self.codec, self.max_message_bytes = settings.frame_codec, settings.max_message_bytes
        self.frames = FrameStore(settings.blob_dir, settings.frame_retention_s)

    def tick(self, now: float) -> list[Output]:
        """Frames past their retention leave the store (every replica prunes; a file gone already is skipped)."""
        self.frames.prune(now)
        return []

    def pixels(self, video_id: str, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """The video's frames into the frame store, once, and a reference per record; or the pixels in the records."""
        if self.codec == "store":
            return self.refer(self.frames.put_video(video_id, images), images)
        return [frame_pixels(image, self.codec, self.max_message_bytes) for image in images]

    def refer(self, uri: str, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """References to frames in the frame store already (deid's), one per image."""
        return [{"stored": pb.StoredFrame(uri=uri, index=index)} for index in range(len(images))]

    def validate(self, upload: pb.StudyUpload) -> str | None:
        if upload.HasField("blob_part"):
            return None if upload.blob_part.blob_uri and upload.blob_part.count > 0 else "blob piece without its blob"
        return None if upload.study_id and upload.videos else "upload without study_id or without videos"

    def handle(self, upload: pb.StudyUpload, at: Position) -> list[Output]:
        if upload.HasField("blob_part"):  # a video crossing the regions ahead of its study: into this region's store
            part = upload.blob_part
            self.blobs.put_part(part.blob_uri, part.index, part.count, part.data)
            return []
        scan = acquisition(upload.metadata)
        manifest = pb.StudyManifest(study_id=upload.study_id, upload_id=upload.upload_id, metadata=scan.clinical)
        manifest.uploaded_at.CopyFrom(upload.uploaded_at)
        outputs: list[Output] = []
        for video in upload.videos:
            if video.error:  # deid could not de-identify it (and dead-lettered it, sealed): listed failed, no bytes
                manifest.videos.add(video_id=video.video_id, status=pb.VIDEO_STATUS_FAILED, error=video.error)
                continue
            try:
                if video.blob_uri.startswith(FRAMES_SCHEME):  # deid kept the cleaned frames in the frame store
                    decoded = DecodedVideo(self.frames.video(video.blob_uri), video.fps, 0)
                    # Already the line's size: the records point into deid's file, nothing is written again.
                    shape = decoded.frames[0].shape[:2] if decoded.frames else LINE_SHAPE
                    same = fit_of(*shape).identity and self.codec == "store"
                    pixels = partial(self.refer, video.blob_uri) if same else partial(self.pixels, video.video_id)
                else:
                    data = video.inline_data if video.HasField("inline_data") else self.blobs.get(video.blob_uri)
                    decoded = decode_video(data, self.limits)
                    pixels = partial(self.pixels, video.video_id)
                frames = video_frames(upload, video.video_id, decoded, scan, pixels, video.regions)
            except (VideoDecodeError, ValueError, FileNotFoundError) as exc:
                outputs.append(self._failed(upload, video, exc, manifest))
                continue
            outputs += [Output(FRAMES_DECODED, video.video_id, frame) for frame in frames]
            manifest.videos.add(
                video_id=video.video_id, status=pb.VIDEO_STATUS_DECODED, frame_count=len(frames), fps=decoded.fps
            )
        # The manifest goes last: assemble waits for it and for every frame it lists.
        return [*outputs, Output(FRAMES_DONE, upload.study_id, pb.FrameDone(manifest=manifest))]

    def failed(self, upload: pb.StudyUpload, reason: str) -> list[Output]:
        """The upload could not be split at all (the runner dead-letters it whole): its study still gets an answer,
        a manifest listing every video failed with the reason, which assemble closes FAILED at once."""
        if not upload.study_id or upload.HasField("blob_part"):
            # Nothing names the study, or a piece of a video: the dead letter is all there can be (the study's own
            # record, next, lists the video failed when its blob is not whole).
            return []
        manifest = pb.StudyManifest(study_id=upload.study_id, upload_id=upload.upload_id)
        manifest.uploaded_at.CopyFrom(upload.uploaded_at)
        for index, video in enumerate(upload.videos or [pb.VideoRef()]):
            video_id = video.video_id or f"{upload.study_id}-V{index:02d}"
            manifest.videos.add(video_id=video_id, status=pb.VIDEO_STATUS_FAILED, error=f"upload not split: {reason}")
        return [Output(FRAMES_DONE, upload.study_id, pb.FrameDone(manifest=manifest))]

    def _failed(self, upload: pb.StudyUpload, video: pb.VideoRef, exc: Exception, manifest: pb.StudyManifest) -> Output:
        """The video is listed as failed in the manifest and dead-lettered with its bytes (or their reference)."""
        reason = f"video {video.video_id or video.filename!r}: {exc}"
        manifest.videos.add(video_id=video.video_id, status=pb.VIDEO_STATUS_FAILED, error=reason)
        inline = video.HasField("inline_data")
        original = {"original": video.inline_data} if inline else {"original_blob_uri": video.blob_uri}
        ids = {"study_id": upload.study_id, "video_id": video.video_id, "error_type": type(exc).__name__}
        return dead_letter_output(
            STUDIES_DEIDENTIFIED, self.name, reason, key=upload.study_id.encode(), **ids, **original
        )


def build() -> StageService:
    return Split()
