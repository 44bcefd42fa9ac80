"""Videos as the line reads and writes them: decoded with OpenCV (MP4, and the lossless copies de-identification
writes), and encoded losslessly (HuffYUV in AVI) so that cleaned pixels reach the analysis unchanged."""

import os
import tempfile
import time
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
    max_seconds: float = 0.0  # wall time to decode the video (0: no limit); OpenCV's own open/read timeouts too

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
        timeouts = []
        if limits.max_seconds:  # FFmpeg's own limits: a stream that stalls in open or read gives up
            ms = int(limits.max_seconds * 1000)
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, timeouts) if timeouts else cv2.VideoCapture(path)
        started = time.monotonic()
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
                if limits.max_seconds and time.monotonic() - started > limits.max_seconds:
                    raise VideoDecodeError(f"decoding took longer than {limits.max_seconds:g} s: refused")
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


LINE_SHAPE = (240, 320)  # rows x columns of every frame the analysis reads (the networks' input)


@dataclass(frozen=True)
class Fit:
    """How a video's frames are brought to LINE_SHAPE: scaled by `scale` (aspect kept), then placed at (x, y)."""

    scale: float
    x: int
    y: int

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.x == 0 and self.y == 0


def fit_of(height: int, width: int, shape: tuple[int, int] = LINE_SHAPE) -> Fit:
    """The fit of height x width frames into `shape`: the largest scale that keeps the whole frame, centred."""
    if (height, width) == shape:
        return Fit(1.0, 0, 0)
    scale = min(shape[0] / height, shape[1] / width)
    return Fit(scale, (shape[1] - round(width * scale)) // 2, (shape[0] - round(height * scale)) // 2)


def fitted(image: np.ndarray, fit: Fit, shape: tuple[int, int] = LINE_SHAPE) -> np.ndarray:
    """The frame scaled by the fit (area averaging down, linear up) on a black canvas of `shape`."""
    if fit.identity:
        return image
    h, w = image.shape[:2]
    size = (round(w * fit.scale), round(h * fit.scale))
    scaled = cv2.resize(image, size, interpolation=cv2.INTER_AREA if fit.scale < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((*shape, 3), np.uint8)
    canvas[fit.y : fit.y + size[1], fit.x : fit.x + size[0]] = scaled
    return canvas
