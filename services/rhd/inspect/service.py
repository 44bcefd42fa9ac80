"""inspect: frames.decoded.v1 -> frames.doppler.v1 (colour Doppler), frames.bmode.v1 (anatomical, B-mode) or
frames.spectral.v1 (spectral Doppler); a frame with no ultrasound image ends as skipped, one that is not an echo
frame as failed."""

from rhd.imaging.ecg import reading_message
from rhd.imaging.sector import frame_sector
from rhd.inspect.ops import ANATOMICAL, NOT_ECHO, SPECTRAL, inspect
from rhd.runtime.records import Output, frame_result
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_BMODE, FRAMES_DECODED, FRAMES_DOPPLER, FRAMES_SPECTRAL
from rhd.v1 import rhd_pb2 as pb


class Inspect(StageService, name="inspect", input_topic=FRAMES_DECODED, input_type=pb.Frame):
    def handle(self, frame: pb.Frame, at: Position) -> list[Output]:
        spectral = any(r.spatial_format == "spectral" for r in frame.regions)
        result = inspect(self.image(frame), spectral=spectral, fan=frame_sector(frame))
        if result.ecg is not None:
            frame.ecg.CopyFrom(reading_message(result.ecg))
        if result.kind == SPECTRAL:
            return [Output(FRAMES_SPECTRAL, frame.key.video_id, frame)]
        if result.doppler:
            doppler = pb.DopplerFrame(frame=frame, colour_fraction=result.colour_fraction)
            return [Output(FRAMES_DOPPLER, frame.key.video_id, doppler)]
        if result.kind == ANATOMICAL:
            return [Output(FRAMES_BMODE, frame.key.video_id, frame)]
        # Frames with no image are skipped (nothing to analyse); a frame that is all colour is not an echo frame
        # at all: failed.
        status = pb.FRAME_STATUS_FAILED if result.kind == NOT_ECHO else pb.FRAME_STATUS_SKIPPED
        return [frame_result(frame.key, status, self.name, result.reason, ecg=frame.ecg)]


def build() -> StageService:
    return Inspect()
