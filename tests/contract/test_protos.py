"""The contract: generated code matches protos/, every topic has its message, records round-trip."""

import subprocess
import sys
from pathlib import Path

from google.protobuf.message import DecodeError
from rhd.runtime.topics import TOPICS, all_topic_names, dlq
from rhd.v1 import rhd_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_proto_files(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            str(ROOT / "protos/rhd/v1/rhd.proto"),
        ],
        check=True,
    )
    fresh = (tmp_path / "rhd/v1/rhd_pb2.py").read_text()
    assert fresh == Path(pb.__file__).read_text(), "generated code is stale: run `make setup`"


def test_every_topic_is_versioned_and_has_a_dead_letter_topic():
    names = all_topic_names()
    assert len(names) == 2 * len(TOPICS) == len(set(names))
    for topic in TOPICS:
        entity, state, version = topic.name.split(".")
        assert version.startswith("v") and version[1:].isdigit()
        assert dlq(topic.name) in names


def test_frame_round_trip_keeps_identity_and_pixels():
    key = pb.FrameKey(study_id="S1", video_id="S1-V00", frame_index=7, video_frame_count=24)
    frame = pb.Frame(key=key, png=b"\x89PNG...", height=240, width=320, fps=24.0, pixel_spacing_mm=0.6)
    viewed = pb.ViewedFrame(
        segmented=pb.SegmentedFrame(frame=frame, mask=pb.Mask(flow_pixels=3)),
        view=pb.ViewPrediction(label="plax", probabilities={"plax": 0.9}),
    )
    back = pb.ViewedFrame.FromString(viewed.SerializeToString())
    assert back == viewed
    assert back.segmented.frame.key.frame_index == 7


def test_frame_done_carries_exactly_one_of_result_or_manifest():
    done = pb.FrameDone(manifest=pb.StudyManifest(study_id="S1"))
    done.result.key.study_id = "S1"
    assert done.WhichOneof("record") == "result"


def test_garbage_is_not_silently_a_study_upload():
    try:
        pb.StudyUpload.FromString(b"\xff\xff\xff\xff not protobuf")
    except DecodeError:
        return
    raise AssertionError("garbage decoded as a StudyUpload")
