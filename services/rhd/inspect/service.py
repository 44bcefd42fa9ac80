"""inspect: frames.decoded.v1 -> frames.doppler.v1 (colour Doppler); anatomical frames end as skipped."""

import cv2

from rhd.inspect.ops import DOPPLER_FRACTION_MIN, colour_fraction, is_doppler
from rhd.runtime.records import Output, frame_result
from rhd.runtime.stage import StageService
from rhd.runtime.topics import FRAMES_DECODED, FRAMES_DOPPLER
from rhd.split.ops import decode_png
from rhd.v1 import rhd_pb2 as pb


class Inspect(StageService):
    name = "inspect"
    input_topic = FRAMES_DECODED
    input_type = pb.Frame

    def handle(self, frame: pb.Frame) -> list[Output]:
        fraction = colour_fraction(decode_png(frame.png, cv2.IMREAD_COLOR))
        if is_doppler(fraction):
            return [Output(FRAMES_DOPPLER, frame.key.video_id, pb.DopplerFrame(frame=frame, colour_fraction=fraction))]
        reason = f"anatomical (B-mode): colour fraction {fraction:.4f} < {DOPPLER_FRACTION_MIN}"
        return [frame_result(frame.key, pb.FRAME_STATUS_SKIPPED, self.name, reason)]


def build() -> StageService:
    return Inspect()
