"""The ultrasound sector (the fan) of an echo frame, and the colour pixels inside it.

Grey B-mode pixels have B = G = R (saturation 0); colour Doppler flow is saturated. The colour bar, a coloured
ECG trace and burned-in text sit outside the fan, so what is measured of the image is measured inside it.
"""

from collections.abc import Sequence

import cv2
import numpy as np

from rhd.v1 import rhd_pb2 as pb

SATURATION_MIN = 60  # HSV saturation (0-255) above which a pixel counts as colour
# Stricter for the flow mask: MP4's half-resolution chroma bleeds faint colour around the flow.
FLOW_SATURATION_MIN = 120
VALUE_MIN = 40  # and bright enough that the hue means something
NON_BLACK_MIN = 8  # mean grey level (5 x 5) above which a pixel is image rather than the black surround
FAN_OPEN_PX = 7  # opening with this kernel removes thin strokes (text, ECG, depth marks) but keeps the fan
SECTOR_FRAMES = 8  # frames of a video, evenly spread, whose fans vote for the video's sector


def checked_frame(bgr: np.ndarray) -> np.ndarray:
    """The frame itself, or ValueError when it is not a colour frame H x W x 3 uint8."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected a colour frame H x W x 3 uint8, got shape {bgr.shape} {bgr.dtype}")
    return bgr


def colour_pixels(hsv: np.ndarray, saturation_min: int = SATURATION_MIN) -> np.ndarray:
    """Saturated colour bright enough for its hue to mean something (the whole frame)."""
    return (hsv[..., 1] >= saturation_min) & (hsv[..., 2] >= VALUE_MIN)


def _hull(region: np.ndarray) -> np.ndarray:
    """Convex hull of a region's pixels, from its outer contour: the same hull as from every pixel (the extreme
    points lie on the boundary) at a thirtieth of the cost."""
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.convexHull(np.concatenate(contours))


def _opened(solid: np.ndarray) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (FAN_OPEN_PX, FAN_OPEN_PX))
    return cv2.morphologyEx(solid, cv2.MORPH_OPEN, kernel)


def fan_with_flow(hsv: np.ndarray) -> np.ndarray:
    """The fan of a frame that may carry colour flow: the convex hull of the largest solid grey region, joined by
    solid colour flow (a blood pool full of colour can cut the grey fan in two)."""
    colour = colour_pixels(hsv)
    # Grey evidence, blurred to fill the speckle and opened to drop thin white overlays (text, depth marks).
    grey = np.where(colour, 0, hsv[..., 2]).astype(np.uint8)
    solid = _opened((cv2.blur(grey, (5, 5)) > NON_BLACK_MIN).astype(np.uint8))
    # Thin coloured overlays (ECG trace, text) do not survive a small opening; solid flow does.
    flow = cv2.morphologyEx(colour.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, components = cv2.connectedComponents(solid | flow, connectivity=4)
    fan = np.zeros(solid.shape, np.uint8)
    if count > 1:
        grey_area = np.bincount(components[solid.astype(bool)], minlength=count)
        largest = 1 + int(np.argmax(grey_area[1:]))
        cv2.fillConvexPoly(fan, _hull((components == largest).astype(np.uint8)), 1)
    return fan.astype(bool)


def fan_mask(bgr: np.ndarray) -> np.ndarray:
    """The ultrasound fan: the convex hull of the largest solid region of the image. Thin overlays are opened
    away and the hull fills the blood pools."""
    return fan_of_value(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[..., 2])


def solid_of_value(value: np.ndarray) -> np.ndarray:
    """The solid regions of a frame's HSV value channel (uint8 0/1): blurred, thresholded, thin strokes opened away."""
    return _opened((cv2.blur(value, (5, 5)) > NON_BLACK_MIN).astype(np.uint8))


def fan_of_value(value: np.ndarray) -> np.ndarray:
    """fan_mask from the frame's HSV value channel (when the caller has it already)."""
    return fan_of_solid(solid_of_value(value))


def fan_of_solid(solid: np.ndarray) -> np.ndarray:
    """The convex hull of the largest of the solid regions (uint8 0/1). The regions' areas by counting their labels:
    OpenCV's labelling with statistics took five times as long as the labelling alone."""
    count, components = cv2.connectedComponents(solid, connectivity=4)
    fan = np.zeros(solid.shape, np.uint8)
    if count > 1:
        largest = 1 + int(np.argmax(np.bincount(components.ravel(), minlength=count)[1:]))
        cv2.fillConvexPoly(fan, _hull((components == largest).astype(np.uint8)), 1)
    return fan.astype(bool)


def video_sector(frames: Sequence[np.ndarray]) -> np.ndarray:
    """The ultrasound sector of a video (its frames all one size), once for all its frames: the convex hull (int32
    N x 2, x and y; empty when the frames show no image) of where at least half of SECTOR_FRAMES of its frames,
    evenly spread, have their fan (`fan_with_flow`). A scanner's sector stands still through a clip (a change of
    depth or zoom starts a new one); one frame's own fan moves with the speckle at its far edge and loses what a
    shadow hides in that frame only, and the vote leaves out what one frame alone joins to it."""
    if not len(frames):
        return np.zeros((0, 2), np.int32)
    picks = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), SECTOR_FRAMES)).round().astype(int))
    votes = np.zeros(frames[0].shape[:2], np.uint16)
    for i in picks:
        votes += fan_with_flow(cv2.cvtColor(frames[i], cv2.COLOR_BGR2HSV))
    agreed = (2 * votes >= len(picks)).astype(np.uint8)
    return _hull(agreed).reshape(-1, 2).astype(np.int32) if agreed.any() else np.zeros((0, 2), np.int32)


def sector_mask(hull: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """bool H x W: the pixels inside a video's sector (`video_sector`)."""
    fan = np.zeros(shape[:2], np.uint8)
    if len(hull):
        cv2.fillConvexPoly(fan, np.asarray(hull, np.int32).reshape(-1, 1, 2), 1)
    return fan.astype(bool)


def sector_message(hull: np.ndarray) -> pb.Sector:
    return pb.Sector(hull_xy=np.asarray(hull, np.int32).ravel().tolist())


def frame_sector(frame: pb.Frame) -> np.ndarray | None:
    """bool H x W: the sector split found for the frame's video, or None when its record carries none (the stage then
    finds the frame's own fan)."""
    if not frame.HasField("sector"):
        return None
    return sector_mask(np.array(frame.sector.hull_xy, np.int32).reshape(-1, 2), (frame.height, frame.width))


def image_only(bgr: np.ndarray, fan: np.ndarray | None = None) -> np.ndarray:
    """The frame with everything outside its fan (its video's sector when given, else the frame's own) black: what
    the networks read. Whatever a scanner writes around the image (text, marks) cannot then sway a prediction, and a
    frame deid cleaned reads as the frame it came from."""
    fan = fan_mask(bgr) if fan is None else fan
    return cv2.bitwise_and(bgr, bgr, mask=fan.view(np.uint8))  # np.where's result, a third of the time


def images_only(frames: np.ndarray, fans: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """image_only of each frame of a stack (N x H x W x 3), each with its fan when given."""
    if not len(frames):
        return frames
    fans = [None] * len(frames) if fans is None else fans
    return np.stack([image_only(frame, fan) for frame, fan in zip(frames, fans, strict=True)])


def flow_mask(bgr: np.ndarray, hsv: np.ndarray | None = None, fan: np.ndarray | None = None) -> np.ndarray:
    """The colour flow a Doppler frame shows: strongly saturated pixels inside the fan (its video's sector when
    given, else the frame's own)."""
    hsv = cv2.cvtColor(checked_frame(bgr), cv2.COLOR_BGR2HSV) if hsv is None else hsv
    return colour_pixels(hsv, FLOW_SATURATION_MIN) & (fan_with_flow(hsv) if fan is None else fan)
