"""How a frame's pixels travel in a `Frame` message (raw BGR or lossless PNG), and the PNG codec of masks."""

import cv2
import numpy as np

from rhd.v1 import rhd_pb2 as pb

FRAME_CODECS = ("raw", "png")
# Room left in a frame message for everything but its pixels (a segmented frame adds its mask PNG).
FRAME_ENVELOPE_BYTES = 65_536


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    if not data:  # OpenCV asserts on an empty buffer (cv2.error): found by the property tests
        raise ValueError("not a PNG image (0 bytes)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None:
        raise ValueError(f"not a PNG image ({len(data)} bytes)")
    return image


def frame_pixels(image: np.ndarray, codec: str, max_message_bytes: int = 1_000_000) -> dict[str, bytes]:
    """The Frame fields that carry an image: {"bgr": raw bytes} or {"png": PNG bytes}. A raw image too large
    for a message (frames bigger than 240 x 320 soon are) goes as PNG instead."""
    if codec not in FRAME_CODECS:
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
