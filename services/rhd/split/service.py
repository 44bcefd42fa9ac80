"""split: studies.uploaded.v1 -> frames.decoded.v1 (one lossless record per frame, raw or PNG) + the study's
manifest."""

from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import Output, dead_letter, frame_pixels, now
from rhd.runtime.settings import Settings
from rhd.runtime.stage import StageService
from rhd.runtime.topics import FRAMES_DECODED, FRAMES_DONE, STUDIES_UPLOADED, dlq
from rhd.split.ops import VideoDecodeError, decode_video
from rhd.v1 import rhd_pb2 as pb


def _float(metadata: dict[str, str], name: str) -> float:
    try:
        return float(metadata.get(name, 0.0))
    except ValueError:
        return 0.0


class Split(StageService):
    name = "split"
    input_topic = STUDIES_UPLOADED
    input_type = pb.StudyUpload

    codec, max_message_bytes = "raw", 1_000_000

    async def start(self, settings: Settings) -> None:
        self.blobs = BlobStore(settings.blob_dir)
        self.codec, self.max_message_bytes = settings.frame_codec, settings.max_message_bytes

    def validate(self, upload: pb.StudyUpload) -> str | None:
        if not upload.study_id:
            return "upload without study_id"
        if not upload.videos:
            return "upload without videos"
        return None

    def handle(self, upload: pb.StudyUpload) -> list[Output]:
        outputs: list[Output] = []
        manifest = pb.StudyManifest(
            study_id=upload.study_id, upload_id=upload.upload_id, uploaded_at=upload.uploaded_at,
            metadata={k: v for k, v in upload.metadata.items() if k in CLINICAL_FIELDS},
        )
        spacing = _float(dict(upload.metadata), "pixel_spacing_mm")
        nyquist = _float(dict(upload.metadata), "nyquist_cm_s")
        for video in upload.videos:
            try:
                data = video.inline_data if video.HasField("inline_data") else self.blobs.get(video.blob_uri)
                decoded = decode_video(data)
            except (VideoDecodeError, ValueError, FileNotFoundError) as exc:
                reason = f"video {video.video_id or video.filename!r}: {exc}"
                manifest.videos.add(video_id=video.video_id, status=pb.VIDEO_STATUS_FAILED, error=reason)
                letter = dead_letter(
                    STUDIES_UPLOADED, self.name, reason, error_type=type(exc).__name__,
                    key=upload.study_id.encode(), study_id=upload.study_id, video_id=video.video_id,
                    **({"original_blob_uri": video.blob_uri} if video.HasField("blob_uri")
                       else {"original": video.inline_data}),
                )
                outputs.append(Output(dlq(STUDIES_UPLOADED), upload.study_id, letter))
                continue
            count = len(decoded.frames)
            for index, image in enumerate(decoded.frames):
                key = pb.FrameKey(study_id=upload.study_id, video_id=video.video_id, frame_index=index,
                                  video_frame_count=count, uploaded_at=upload.uploaded_at)
                frame = pb.Frame(key=key, height=image.shape[0], width=image.shape[1], fps=decoded.fps,
                                 pixel_spacing_mm=spacing, nyquist_cm_s=nyquist, decoded_at=now(),
                                 **frame_pixels(image, self.codec, self.max_message_bytes))
                outputs.append(Output(FRAMES_DECODED, video.video_id, frame))
            manifest.videos.add(video_id=video.video_id, status=pb.VIDEO_STATUS_DECODED, frame_count=count)
        # The manifest goes last: assemble waits for it and for every frame it lists.
        outputs.append(Output(FRAMES_DONE, upload.study_id, pb.FrameDone(manifest=manifest)))
        return outputs


# Metadata the analysis may use; identifying fields stay behind.
CLINICAL_FIELDS = frozenset({"pixel_spacing_mm", "nyquist_cm_s", "fps", "device"})


def build() -> StageService:
    return Split()
