"""segment: frames.doppler.v1 -> frames.segmented.v1 (frame + flow mask from k-means colour clustering)."""

from rhd.imaging.sector import frame_sector
from rhd.runtime.codec import encode_png
from rhd.runtime.records import Output
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_DOPPLER, FRAMES_SEGMENTED
from rhd.segment.ops import segment
from rhd.v1 import rhd_pb2 as pb


class Segment(StageService, name="segment", input_topic=FRAMES_DOPPLER, input_type=pb.DopplerFrame):
    def handle(self, doppler: pb.DopplerFrame, at: Position) -> list[Output]:
        result = segment(self.image(doppler.frame), frame_sector(doppler.frame))
        mask = pb.Mask(
            png=encode_png(result.labels), flow_pixels=result.flow_pixels, mosaic_pixels=result.mosaic_pixels
        )
        segmented = pb.SegmentedFrame(frame=doppler.frame, colour_fraction=doppler.colour_fraction, mask=mask)
        return [Output(FRAMES_SEGMENTED, doppler.frame.key.video_id, segmented)]


def build() -> StageService:
    return Segment()
