"""Frame splitting: decode a video's bytes into frames (OpenCV) and encode frames losslessly (PNG)."""

import os
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np


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
    fd, path = tempfile.mkstemp(suffix=".mp4")
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


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError(f"not a PNG image ({len(data)} bytes)")
    return image
