"""split: studies.uploaded.v1 -> frames.decoded.v1 (one lossless record per frame, raw or PNG) + the study's
manifest; a video that cannot be decoded is dead-lettered and listed as failed in the manifest."""

from rhd.imaging.codec import frame_pixels
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import Output, dead_letter_output, now
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_DECODED, FRAMES_DONE, STUDIES_UPLOADED
from rhd.split.ops import VideoDecodeError, acquisition, decode_video
from rhd.v1 import rhd_pb2 as pb


class Split(StageService):
    name = "split"
    input_topic = STUDIES_UPLOADED
    input_type = pb.StudyUpload

    async def start(self, settings: Settings) -> None:
        self.blobs = BlobStore(settings.blob_dir)
        self.codec, self.max_message_bytes = settings.frame_codec, settings.max_message_bytes

    def validate(self, upload: pb.StudyUpload) -> str | None:
        return None if upload.study_id and upload.videos else "upload without study_id or without videos"

    def handle(self, upload: pb.StudyUpload, at: Position) -> list[Output]:
        scan = acquisition(upload.metadata)
        manifest = pb.StudyManifest(study_id=upload.study_id, upload_id=upload.upload_id,
                                    uploaded_at=upload.uploaded_at, metadata=scan.clinical)
        outputs: list[Output] = []
        for video in upload.videos:
            inline = video.HasField("inline_data")
            try:
                decoded = decode_video(video.inline_data if inline else self.blobs.get(video.blob_uri))
            except (VideoDecodeError, ValueError, FileNotFoundError) as exc:
                reason = f"video {video.video_id or video.filename!r}: {exc}"
                manifest.videos.add(video_id=video.video_id, status=pb.VIDEO_STATUS_FAILED, error=reason)
                original = {"original": video.inline_data} if inline else {"original_blob_uri": video.blob_uri}
                outputs.append(dead_letter_output(STUDIES_UPLOADED, self.name, reason, key=upload.study_id,
                                                  error_type=type(exc).__name__, study_id=upload.study_id,
                                                  video_id=video.video_id, **original))
                continue
            count = len(decoded.frames)
            for index, image in enumerate(decoded.frames):
                key = pb.FrameKey(study_id=upload.study_id, video_id=video.video_id, frame_index=index,
                                  video_frame_count=count, uploaded_at=upload.uploaded_at)
                frame = pb.Frame(key=key, height=image.shape[0], width=image.shape[1], fps=decoded.fps,
                                 pixel_spacing_mm=scan.pixel_spacing_mm, nyquist_cm_s=scan.nyquist_cm_s,
                                 decoded_at=now(), **frame_pixels(image, self.codec, self.max_message_bytes))
                outputs.append(Output(FRAMES_DECODED, video.video_id, frame))
            manifest.videos.add(video_id=video.video_id, status=pb.VIDEO_STATUS_DECODED, frame_count=count)
        # The manifest goes last: assemble waits for it and for every frame it lists.
        return [*outputs, Output(FRAMES_DONE, upload.study_id, pb.FrameDone(manifest=manifest))]


def build() -> StageService:
    return Split()
