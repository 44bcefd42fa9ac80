"""segment: frames.doppler.v1 -> frames.segmented.v1 (frame + flow mask from k-means colour clustering), for the view
stage; the frames of a video the view model does not read (`rhd.runtime.views.view_sampled`: it reads 8 of each
video's) go straight on to frames.viewed.v1 without a view, one hop fewer; they take their video's view in
assemble."""

from rhd.imaging.sector import frame_sector
from rhd.runtime.codec import encode_png
from rhd.runtime.records import Output
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_DOPPLER, FRAMES_SEGMENTED, FRAMES_VIEWED
from rhd.runtime.views import view_sampled
from rhd.segment.ops import segment
from rhd.v1 import rhd_pb2 as pb


class Segment(StageService, name="segment", input_topic=FRAMES_DOPPLER, input_type=pb.DopplerFrame):
    def handle(self, doppler: pb.DopplerFrame, at: Position) -> list[Output]:
        result = segment(self.image(doppler.frame), frame_sector(doppler.frame))
        mask = pb.Mask(
            png=encode_png(result.labels), flow_pixels=result.flow_pixels, mosaic_pixels=result.mosaic_pixels
        )
        segmented = pb.SegmentedFrame(frame=doppler.frame, colour_fraction=doppler.colour_fraction, mask=mask)
        key = doppler.frame.key
        if view_sampled(key.frame_index, key.video_frame_count):
            return [Output(FRAMES_SEGMENTED, key.video_id, segmented)]
        return [Output(FRAMES_VIEWED, key.video_id, pb.ViewedFrame(segmented=segmented))]


def build() -> StageService:
    return Segment()
