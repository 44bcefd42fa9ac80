"""The ultrasound sector (the fan) of an echo frame, and the colour pixels inside it.

Grey B-mode pixels have B = G = R (saturation 0); colour Doppler flow is saturated. The colour bar, a coloured
ECG trace and burned-in text sit outside the fan, so what is measured of the image is measured inside it.
"""

import cv2
import numpy as np

SATURATION_MIN = 60  # HSV saturation (0-255) above which a pixel counts as colour
# Stricter for the flow mask: MP4's half-resolution chroma bleeds faint colour around the flow.
FLOW_SATURATION_MIN = 120
VALUE_MIN = 40  # and bright enough that the hue means something
NON_BLACK_MIN = 8  # mean grey level (5 x 5) above which a pixel is image rather than the black surround
FAN_OPEN_PX = 7  # opening with this kernel removes thin strokes (text, ECG, depth marks) but keeps the fan


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


def image_only(bgr: np.ndarray) -> np.ndarray:
    """The frame with everything outside its fan black: what the networks read. Whatever a scanner writes around the
    image (text, marks) cannot then sway a prediction, and a frame deid cleaned reads as the frame it came from."""
    return cv2.bitwise_and(bgr, bgr, mask=fan_mask(bgr).view(np.uint8))  # np.where's result, a third of the time


def images_only(frames: np.ndarray) -> np.ndarray:
    """image_only of each frame of a stack (N x H x W x 3)."""
    return np.stack([image_only(frame) for frame in frames]) if len(frames) else frames


def flow_mask(bgr: np.ndarray, hsv: np.ndarray | None = None) -> np.ndarray:
    """The colour flow a Doppler frame shows: strongly saturated pixels inside the fan."""
    hsv = cv2.cvtColor(checked_frame(bgr), cv2.COLOR_BGR2HSV) if hsv is None else hsv
    return colour_pixels(hsv, FLOW_SATURATION_MIN) & fan_with_flow(hsv)
