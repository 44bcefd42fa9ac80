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
class VideoLimits:
    """What one video may hold, checked before and while it is decoded: a file that declares (or turns out) larger
    is refused, so a small file that decodes to gigabytes (a decompression bomb) cannot take a service down."""

    max_frames: int = 0  # 0: no limit
    max_frame_pixels: int = 0  # height x width
    scope: str = "per video"  # what max_frames is, as the refusal says it

    def check_size(self, height: int, width: int) -> None:
        if self.max_frame_pixels and height * width > self.max_frame_pixels:
            raise VideoDecodeError(
                f"frames of {height} x {width} pixels: over the {self.max_frame_pixels}-pixel limit per frame"
            )

    def check_count(self, frames: int) -> None:
        if self.max_frames and frames > self.max_frames:
            raise VideoDecodeError(f"more than {self.max_frames} frames: over the limit ({self.scope})")


NO_LIMITS = VideoLimits()


@dataclass(frozen=True)
class DecodedVideo:
    frames: list[np.ndarray]  # BGR uint8, H x W x 3
    fps: float
    declared_frame_count: int


def decode_video(data: bytes, limits: VideoLimits = NO_LIMITS) -> DecodedVideo:
    """Decode every frame; raise VideoDecodeError for empty, non-video, truncated or over-limit input (the declared
    size and frame count are checked before decoding, the frames as they come)."""
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
            limits.check_size(int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
            limits.check_count(declared)
            frames = []
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(frame)
                limits.check_count(len(frames))  # a container may understate its frames
                limits.check_size(*frame.shape[:2])
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
