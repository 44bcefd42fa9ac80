"""Videos as the line reads and writes them: decoded with OpenCV (MP4, and the lossless copies de-identification
writes), and encoded losslessly (HuffYUV in AVI) so that cleaned pixels reach the analysis unchanged."""

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# HuffYUV is lossless in BGR: every pixel decodes exactly as written. About 85 kB a 240 x 320 echo frame and 0.5 ms
# to encode on one core; FFV1 makes a third of the bytes at seven times the encoding cost, and deid's cost per frame
# is what the line waits on (the bytes go to the blob store, not through the broker, beyond the first megabyte).
LOSSLESS_FOURCC = "HFYU"
LOSSLESS_SUFFIX = ".avi"


class VideoDecodeError(ValueError):
    """The bytes are not a decodable video, or the video is truncated."""


@dataclass(frozen=True)
class DecodedVideo:
    frames: list[np.ndarray]  # BGR uint8, H x W x 3
    fps: float
    declared_frame_count: int


def decode_video(data: bytes) -> DecodedVideo:
    """Decode every frame; raise VideoDecodeError for empty, non-video or truncated input."""
    if not data:
        raise VideoDecodeError("empty video: 0 bytes")
    # OpenCV's FFmpeg backend reads from a path, so the bytes go through a private temporary file.
    fd, path = tempfile.mkstemp(suffix=".video")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        capture = cv2.VideoCapture(path)
        try:
            if not capture.isOpened():
                raise VideoDecodeError(f"not a decodable video ({len(data)} bytes)")
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            frames = []
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(frame)
        finally:
            capture.release()
    finally:
        os.unlink(path)
    if not frames:
        raise VideoDecodeError(f"no decodable frames ({len(data)} bytes, {declared} declared)")
    if declared and len(frames) < declared:
        raise VideoDecodeError(f"truncated video: decoded {len(frames)} of {declared} declared frames")
    return DecodedVideo(frames=frames, fps=fps, declared_frame_count=declared)


def encode_lossless(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """The frames (BGR uint8, all one size) as a HuffYUV AVI video, which decode_video reads back exactly."""
    if not len(frames):
        raise ValueError("no frames to encode")
    h, w = frames[0].shape[:2]
    fd, path = tempfile.mkstemp(suffix=LOSSLESS_SUFFIX)
    os.close(fd)
    try:
        writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*LOSSLESS_FOURCC), fps or 1.0, (w, h))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {LOSSLESS_FOURCC}{LOSSLESS_SUFFIX}")
        try:
            for frame in frames:
                writer.write(np.ascontiguousarray(frame))
        finally:
            writer.release()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)
