"""spectral: frames.spectral.v1 -> frames.done.v1 (a spectral Doppler frame's terminal record: its trace read)."""

from rhd.runtime.records import Output, frame_result
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_SPECTRAL
from rhd.spectral.ops import FEATURE_NAMES, FEATURE_SET, SpectralError, spectral_features, spectral_region
from rhd.v1 import rhd_pb2 as pb


class Spectral(StageService, name="spectral", input_topic=FRAMES_SPECTRAL, input_type=pb.Frame):
    def handle(self, frame: pb.Frame, at: Position) -> list[Output]:
        region = spectral_region(frame.regions)
        try:
            if region is None:
                raise SpectralError("no spectral region in the frame's calibration")
            values = spectral_features(self.image(frame), region, frame.ecg if frame.HasField("ecg") else None)
        except SpectralError as exc:
            return [frame_result(frame.key, pb.FRAME_STATUS_FAILED, self.name, str(exc), ecg=frame.ecg)]
        vector = pb.FeatureVector(feature_set=FEATURE_SET, names=FEATURE_NAMES, values=values)
        return [frame_result(frame.key, pb.FRAME_STATUS_ANALYSED, self.name, features=vector, ecg=frame.ecg)]


def build() -> StageService:
    return Spectral()
