"""The view stage as the runner drives it: frames answered through the model server's gRPC API, and while the model
server is away, frames wait out the retry budget and then end dead-lettered and FAILED with the reason."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import rhd
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY
from rhd.local.broker import free_port
from rhd.model_server.server import start_server
from rhd.runtime.records import schema_headers
from rhd.runtime.settings import Settings
from rhd.runtime.stage import StageRunner
from rhd.runtime.topics import FRAMES_DONE, FRAMES_SEGMENTED, FRAMES_VIEWED, dlq
from rhd.synth.render import Scene, render_frame
from rhd.v1 import rhd_pb2 as pb
from rhd.view.service import View

MODELS = Path(__file__).resolve().parents[2] / "models"


def segmented(view: str, index: int, count: int = 8) -> ConsumerRecord:
    image, _ = render_frame(Scene(view=view, colour=True), 0.3, np.random.default_rng(index))
    frame = pb.Frame(
        key=pb.FrameKey(study_id="s1", video_id=f"s1-{view}", frame_index=index, video_frame_count=count),
        png=cv2.imencode(".png", image)[1].tobytes(),
        height=image.shape[0],
        width=image.shape[1],
    )
    value = pb.SegmentedFrame(frame=frame).SerializeToString()
    return ConsumerRecord(
        topic=FRAMES_SEGMENTED,
        partition=0,
        offset=index,
        timestamp=0,
        timestamp_type=0,
        key=frame.key.video_id.encode(),
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=schema_headers(pb.SegmentedFrame()),
    )


async def runner(tmp_path: Path, model_server: str, retry_for_s: float) -> StageRunner:
    settings = Settings(
        model_server=model_server,
        model_retry_for_s=retry_for_s,
        model_timeout_s=1.0,
        blob_dir=tmp_path / "blobs",
        models_dir=MODELS,
    )
    view = View()
    await view.start(settings)
    return StageRunner(view, settings)


async def test_frames_get_their_view_through_the_model_server(tmp_path):
    server, port = await start_server(MODELS, "127.0.0.1", 0, ["view"])
    stage = await runner(tmp_path, f"127.0.0.1:{port}", 5.0)
    calls_before = REGISTRY.get_sample_value("rhd_model_request_seconds_count", {"model": "view", "code": "OK"}) or 0
    try:
        assert await stage.service.ready()
        for index, view in enumerate(("plax", "psax", "a4c", "a5c")):
            [(topic, key, value, _)] = await stage._process(segmented(view, index))
            viewed = pb.ViewedFrame.FromString(value)
            assert (topic, key) == (FRAMES_VIEWED, f"s1-{view}")
            assert viewed.view.label == view, dict(viewed.view.probabilities)
            assert viewed.view.model_name == "view" and viewed.view.model_version == 1
            assert sum(viewed.view.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            assert viewed.segmented.frame.key.frame_index == index  # the frame travels on unchanged
        # A clip shows one view: of a 50-frame video the model reads 8 frames (0, 7, ..., 49); the others pass on
        # without a view and take their video's in assemble.
        for index, read in ((7, True), (8, False), (49, True)):
            [(topic, _, value, _)] = await stage._process(segmented("a4c", index, count=50))
            viewed = pb.ViewedFrame.FromString(value)
            assert topic == FRAMES_VIEWED and viewed.segmented.frame.key.frame_index == index
            assert viewed.view.label == ("a4c" if read else "") and viewed.HasField("view") == read
        # One Predict a frame read here (each waited alone), timed by the client; the model version is in build info.
        assert (
            REGISTRY.get_sample_value("rhd_model_request_seconds_count", {"model": "view", "code": "OK"})
            == calls_before + 6
        )
        assert (
            REGISTRY.get_sample_value(
                "rhd_build_info", {"version": rhd.__version__, "stage": "view", "view_model": "view/1"}
            )
            == 1.0
        )
    finally:
        await stage.service.stop()
        await server.stop(0)


async def test_without_a_model_server_frames_end_dead_lettered_and_failed_with_the_reason(tmp_path):
    stage = await runner(tmp_path, f"127.0.0.1:{free_port()}", 0.5)  # nothing listens there
    try:
        assert not await stage.service.ready()
        record = segmented("plax", 3)
        outputs = {topic: value for topic, _, value, _ in await stage._process(record)}
        assert set(outputs) == {dlq(FRAMES_SEGMENTED), FRAMES_DONE}
        letter = pb.DeadLetter.FromString(outputs[dlq(FRAMES_SEGMENTED)])
        assert letter.stage == "view" and letter.error_type == "ModelUnavailableError"
        assert "gave no answer for 0.5 s" in letter.reason and "UNAVAILABLE" in letter.reason
        assert letter.original_bytes == record.value  # nothing is lost: the frame can be replayed
        done = pb.FrameDone.FromString(outputs[FRAMES_DONE])
        assert done.result.status == pb.FRAME_STATUS_FAILED and done.result.key.frame_index == 3
        assert "gave no answer" in done.result.reason
    finally:
        await stage.service.stop()


async def test_a_frame_waits_for_a_model_server_that_comes_back_and_the_stage_counts_as_alive_meanwhile(tmp_path):
    import asyncio
    import time

    port = free_port()
    stage = await runner(tmp_path, f"127.0.0.1:{port}", 60.0)  # nothing listens there yet
    stage._alive = time.monotonic() - 10 * stage.settings.stuck_after_s  # the loop has not come round for long
    server = None
    try:
        waiting = asyncio.create_task(stage._process(segmented("a4c", 1)))
        await asyncio.sleep(2.0)
        assert not waiting.done() and stage.service.waiting() and stage.alive()  # blocked, not stuck
        server, _ = await start_server(MODELS, "127.0.0.1", port, ["view"])
        [(topic, _, value, _)] = await asyncio.wait_for(waiting, timeout=30)
        assert topic == FRAMES_VIEWED and pb.ViewedFrame.FromString(value).view.label  # answered, not FAILED
        assert not stage.service.waiting()
    finally:
        await stage.service.stop()
        if server is not None:
            await server.stop(0)
