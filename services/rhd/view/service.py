"""view: frames.segmented.v1 -> frames.viewed.v1, asking the model server (TensorFlow Serving gRPC API) about
VIEW_FRAMES of each video's frames (`rhd.runtime.views.view_sampled`); the others pass on without a view, and take
the one their video's read frames vote for in assemble.

Frames from concurrent messages are micro-batched by the client into one Predict request. While the
model server is down, frames wait and retry; after `RHD_MODEL_RETRY_FOR_S` they are dead-lettered.
"""

from rhd.imaging.sector import frame_sector, image_only
from rhd.runtime import metrics
from rhd.runtime.model_client import ModelClient
from rhd.runtime.records import Output
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position, StageService
from rhd.runtime.topics import FRAMES_SEGMENTED, FRAMES_VIEWED
from rhd.runtime.views import view_sampled
from rhd.v1 import rhd_pb2 as pb
from rhd.view.ops import prediction_from_outputs


class View(StageService, name="view", input_topic=FRAMES_SEGMENTED, input_type=pb.SegmentedFrame):
    async def start(self, settings: Settings) -> None:
        self.model_name = settings.view_model_name
        self.client = ModelClient.from_settings(settings, settings.view_model_name, settings.view_model_version)
        self.model_version = 0

    async def stop(self) -> None:
        await self.client.close()

    def waiting(self) -> bool:
        return self.client.waiting

    async def ready(self) -> bool:
        return await self.client.ready()

    async def handle(self, segmented: pb.SegmentedFrame, at: Position) -> list[Output]:
        key = segmented.frame.key
        if not view_sampled(key.frame_index, key.video_frame_count):  # its video's view is voted by other frames
            return [Output(FRAMES_VIEWED, key.video_id, pb.ViewedFrame(segmented=segmented))]
        image = self.image(segmented.frame)
        outputs = await self.client.predict(image_only(image, frame_sector(segmented.frame)))
        if not self.model_version:
            self.model_version = await self.client.metadata()
            metrics.set_build_info(self.name, view_model=f"{self.model_name}/{self.model_version}")
        view = prediction_from_outputs(outputs, self.model_version).message(self.model_name)
        return [Output(FRAMES_VIEWED, segmented.frame.key.video_id, pb.ViewedFrame(segmented=segmented, view=view))]


def build() -> StageService:
    return View()
