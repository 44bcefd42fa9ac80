"""valve: frames.bmode.v1 -> frames.done.v1 (a B-mode frame's terminal record: its view and valve measurements).

Each frame goes to the model server twice, concurrently: the view model (the same one the view stage asks about
colour Doppler frames) and the valve segmentation model; both micro-batch across concurrent messages. While the
model server is down, frames wait and retry; after `RHD_MODEL_RETRY_FOR_S` they are dead-lettered.
"""

import asyncio

from rhd.imaging.sector import frame_sector, image_only
from rhd.runtime import metrics
from rhd.runtime.model_client import ModelClient
from rhd.runtime.records import Output, frame_result
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_BMODE
from rhd.runtime.views import prediction_from_outputs, view_sampled
from rhd.v1 import rhd_pb2 as pb
from rhd.valve.ops import FEATURE_NAMES, FEATURE_SET, PROBABILITIES, ValveError, valve_features


class Valve(StageService, name="valve", input_topic=FRAMES_BMODE, input_type=pb.Frame):
    async def start(self, settings: Settings) -> None:
        self.view_name, self.valve_name = settings.view_model_name, settings.valve_model_name
        self.views = ModelClient.from_settings(settings, settings.view_model_name, settings.view_model_version)
        self.valves = ModelClient.from_settings(settings, settings.valve_model_name, settings.valve_model_version)
        self.view_version = self.valve_version = 0

    async def stop(self) -> None:
        await asyncio.gather(self.views.close(), self.valves.close())

    def waiting(self) -> bool:
        return self.views.waiting or self.valves.waiting

    async def ready(self) -> bool:
        return all(await asyncio.gather(self.views.ready(), self.valves.ready()))

    async def handle(self, frame: pb.Frame, at: Position) -> list[Output]:
        image = self.image(frame)
        seen = image_only(image, frame_sector(frame))
        # The view of VIEW_FRAMES of the video's frames (its video's view is voted by them); every frame's valves.
        sampled = view_sampled(frame.key.frame_index, frame.key.video_frame_count)
        view_outputs, valve_outputs = await asyncio.gather(
            self.views.predict(seen) if sampled else _nothing(), self.valves.predict(seen)
        )
        if not self.view_version:
            self.view_version, self.valve_version = await asyncio.gather(self.views.metadata(), self.valves.metadata())
            metrics.set_build_info(
                self.name,
                view_model=f"{self.view_name}/{self.view_version}",
                valve_model=f"{self.valve_name}/{self.valve_version}",
            )
        view = (
            prediction_from_outputs(view_outputs, self.view_version).message(self.view_name)
            if sampled
            else pb.ViewPrediction()
        )
        try:
            values = valve_features(image, valve_outputs.get(PROBABILITIES), frame.pixel_spacing_mm, seen)
        except ValveError as exc:
            return [frame_result(frame.key, pb.FRAME_STATUS_FAILED, self.name, str(exc), view=view, ecg=frame.ecg)]
        vector = pb.FeatureVector(feature_set=FEATURE_SET, names=FEATURE_NAMES, values=values)
        return [frame_result(frame.key, pb.FRAME_STATUS_ANALYSED, self.name, view=view, features=vector, ecg=frame.ecg)]


async def _nothing() -> dict:
    return {}


def build() -> StageService:
    return Valve()
