"""Builders for the records every stage writes alike (frames, terminal frame results, dead letters), and the
frame codec."""

import cv2
import numpy as np
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from rhd.runtime.topics import FRAMES_DONE
from rhd.split.ops import decode_png, encode_png
from rhd.v1 import rhd_pb2 as pb

# Room left in a frame message for everything but its pixels (a segmented frame adds its mask PNG).
FRAME_ENVELOPE_BYTES = 65_536


def frame_pixels(image: np.ndarray, codec: str, max_message_bytes: int = 1_000_000) -> dict[str, bytes]:
    """The Frame fields that carry an image: {"bgr": raw bytes} or {"png": PNG bytes}. A raw image too large
    for a message (frames bigger than 240 x 320 soon are) goes as PNG instead."""
    if codec not in ("raw", "png"):
        raise ValueError(f"unknown frame codec {codec!r} (raw or png)")
    if codec == "raw" and image.nbytes <= max_message_bytes - FRAME_ENVELOPE_BYTES:
        return {"bgr": np.ascontiguousarray(image, np.uint8).tobytes()}
    return {"png": encode_png(image)}


def frame_image(frame: pb.Frame) -> np.ndarray:
    """The frame's BGR image, whichever way it travels; a malformed one raises ValueError (the frame fails)."""
    which = frame.WhichOneof("pixels")
    if which == "bgr":
        expected = frame.height * frame.width * 3
        if frame.height <= 0 or frame.width <= 0 or len(frame.bgr) != expected:
            raise ValueError(f"raw frame of {len(frame.bgr)} bytes is not {frame.height} x {frame.width} x 3")
        # A copy: the buffer is the message's, read-only, and the stage functions may work in place.
        return np.frombuffer(frame.bgr, np.uint8).reshape(frame.height, frame.width, 3).copy()
    if which == "png":
        return decode_png(frame.png, cv2.IMREAD_COLOR)
    raise ValueError("frame without pixels")


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class Output:
    """One record to produce: topic, key and message."""

    __slots__ = ("topic", "key", "message")

    def __init__(self, topic: str, key: str, message: Message) -> None:
        self.topic, self.key, self.message = topic, key, message

    def __repr__(self) -> str:
        return f"Output({self.topic!r}, {self.key!r}, {type(self.message).__name__})"


def frame_result(
    key: pb.FrameKey,
    status: "pb.FrameStatus",
    stage: str,
    reason: str = "",
    **fields: Message,
) -> Output:
    """The terminal record of one frame, keyed by study so a study's records meet on one partition."""
    result = pb.FrameResult(key=key, status=status, stage=stage, reason=reason, finished_at=now(), **fields)
    return Output(FRAMES_DONE, key.study_id, pb.FrameDone(result=result))


def frame_key_of(message: Message) -> pb.FrameKey | None:
    """The FrameKey inside any frame-carrying message, or None for study-level messages."""
    if isinstance(message, pb.Frame):
        return message.key
    for field in ("frame", "segmented"):
        if hasattr(message, field):
            return frame_key_of(getattr(message, field))
    return None


def dead_letter(
    source_topic: str,
    stage: str,
    reason: str,
    original: bytes = b"",
    *,
    original_blob_uri: str = "",
    error_type: str = "",
    key: bytes = b"",
    partition: int = -1,
    offset: int = -1,
    study_id: str = "",
    video_id: str = "",
    frame_index: int = -1,
) -> pb.DeadLetter:
    letter = pb.DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=key,
        stage=stage,
        reason=reason,
        error_type=error_type,
        study_id=study_id,
        video_id=video_id,
        frame_index=frame_index,
        failed_at=now(),
    )
    if original_blob_uri:
        letter.original_blob_uri = original_blob_uri
    else:
        letter.original_bytes = original
    return letter
