"""features: frames.viewed.v1 -> frames.done.v1 (the analysed frame's terminal record with its features)."""

from rhd.features.ops import FEATURE_NAMES, FEATURE_SET, FeatureError, frame_features
from rhd.imaging.sector import frame_sector
from rhd.runtime.codec import decode_png
from rhd.runtime.records import Output, frame_result
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_VIEWED
from rhd.v1 import rhd_pb2 as pb


class Features(StageService, name="features", input_topic=FRAMES_VIEWED, input_type=pb.ViewedFrame):
    def handle(self, viewed: pb.ViewedFrame, at: Position) -> list[Output]:
        frame = viewed.segmented.frame
        try:
            values = frame_features(
                self.image(frame),
                decode_png(viewed.segmented.mask.png),
                frame.pixel_spacing_mm,
                frame.nyquist_cm_s,
                frame_sector(frame),
            )
        except FeatureError as exc:  # e.g. no colour bar: the frame is accounted for, as failed, with why
            return [
                frame_result(frame.key, pb.FRAME_STATUS_FAILED, self.name, str(exc), view=viewed.view, ecg=frame.ecg)
            ]
        vector = pb.FeatureVector(feature_set=FEATURE_SET, names=FEATURE_NAMES, values=values)
        return [
            frame_result(
                frame.key, pb.FRAME_STATUS_ANALYSED, self.name, view=viewed.view, features=vector, ecg=frame.ecg
            )
        ]


def build() -> StageService:
    return Features()
