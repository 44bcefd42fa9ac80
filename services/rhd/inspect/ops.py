"""Doppler vs anatomical by colour inspection, inside the ultrasound fan only.

Grey B-mode pixels have B = G = R (saturation 0); colour Doppler flow is saturated. The colour bar, a
coloured ECG trace and burned-in text sit outside the fan on B-mode frames too, so only colour inside the
fan counts: a frame is Doppler when a few pixels of its fan are colour (a tiny jet is still Doppler).
"""

from dataclasses import dataclass

import cv2
import numpy as np

SATURATION_MIN = 60   # HSV saturation (0-255) above which a pixel counts as colour
# Stricter for the flow mask: MP4's half-resolution chroma bleeds faint colour around the flow.
FLOW_SATURATION_MIN = 120
VALUE_MIN = 40        # and bright enough that the hue means something
DOPPLER_PIXELS_MIN = 12  # colour pixels inside the fan that make a frame colour Doppler
NON_BLACK_MIN = 8     # mean grey level (5 x 5) above which a pixel is image rather than the black surround
FAN_OPEN_PX = 7       # opening with this kernel removes thin strokes (text, ECG, depth marks) but keeps the fan
FAN_MIN_FRACTION = 0.05  # a fan smaller than this share of the frame: no ultrasound image
NOT_ECHO_FRACTION = 0.6  # colour over more of the fan than this: not an echo frame at all

DOPPLER, ANATOMICAL, NO_IMAGE, NOT_ECHO = "doppler", "anatomical", "no_image", "not_echo"


@dataclass(frozen=True)
class Inspection:
    kind: str  # DOPPLER, ANATOMICAL, NO_IMAGE or NOT_ECHO
    colour_pixels: int  # saturated colour pixels inside the fan
    fan_pixels: int

    @property
    def doppler(self) -> bool:
        return self.kind == DOPPLER

    @property
    def colour_fraction(self) -> float:
        """Share of the fan that is colour."""
        return self.colour_pixels / self.fan_pixels if self.fan_pixels else 0.0

    @property
    def reason(self) -> str:
        return {
            DOPPLER: f"colour Doppler: {self.colour_pixels} colour pixels in the fan",
            ANATOMICAL: f"anatomical (B-mode): {self.colour_pixels} colour pixels in the fan < {DOPPLER_PIXELS_MIN}",
            NO_IMAGE: f"no ultrasound image: the fan covers {self.fan_pixels} pixels",
            NOT_ECHO: f"not an echo frame: colour covers {self.colour_fraction:.0%} of the image",
        }[self.kind]


def colour_pixels(hsv: np.ndarray, saturation_min: int = SATURATION_MIN) -> np.ndarray:
    """Saturated colour bright enough for its hue to mean something (the whole frame)."""
    return (hsv[..., 1] >= saturation_min) & (hsv[..., 2] >= VALUE_MIN)


def _hull(region: np.ndarray) -> np.ndarray:
    """Convex hull of a region's pixels, from its outer contour: the same hull as from every pixel (the extreme
    points lie on the boundary) at a thirtieth of the cost."""
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.convexHull(np.concatenate(contours))


def _fan(hsv: np.ndarray) -> np.ndarray:
    colour = colour_pixels(hsv)
    # Grey evidence, blurred to fill the speckle and opened to drop thin white overlays (text, depth marks).
    grey = np.where(colour, 0, hsv[..., 2]).astype(np.uint8)
    solid = (cv2.blur(grey, (5, 5)) > NON_BLACK_MIN).astype(np.uint8)
    solid = cv2.morphologyEx(solid, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (FAN_OPEN_PX,) * 2))
    # Colour flow can cut the grey fan in two (a blood pool full of colour): solid colour joins the pieces,
    # thin coloured overlays (ECG trace, text) do not survive a small opening.
    flow = cv2.morphologyEx(colour.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, components = cv2.connectedComponents(solid | flow, connectivity=4)
    fan = np.zeros(solid.shape, np.uint8)
    if count > 1:
        grey_area = np.bincount(components[solid.astype(bool)], minlength=count)
        largest = 1 + int(np.argmax(grey_area[1:]))
        cv2.fillConvexPoly(fan, _hull((components == largest).astype(np.uint8)), 1)
    return fan.astype(bool)


def fan_mask(bgr: np.ndarray) -> np.ndarray:
    """The ultrasound fan: the convex hull of the largest solid region of grey image (joined by solid colour
    flow). Thin overlays are opened away, coloured ones are not grey, and the hull fills the blood pools."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    solid = (cv2.blur(hsv[..., 2], (5, 5)) > NON_BLACK_MIN).astype(np.uint8)
    solid = cv2.morphologyEx(solid, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (FAN_OPEN_PX,) * 2))
    count, components, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=4)
    fan = np.zeros(solid.shape, np.uint8)
    if count > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        cv2.fillConvexPoly(fan, _hull((components == largest).astype(np.uint8)), 1)
    return fan.astype(bool)


def _checked(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected a colour frame H x W x 3 uint8, got shape {bgr.shape} {bgr.dtype}")
    return bgr


def flow_mask(bgr: np.ndarray, hsv: np.ndarray | None = None) -> np.ndarray:
    """The colour flow a Doppler frame shows: strongly saturated pixels inside the fan."""
    hsv = cv2.cvtColor(_checked(bgr), cv2.COLOR_BGR2HSV) if hsv is None else hsv
    return colour_pixels(hsv, FLOW_SATURATION_MIN) & _fan(hsv)


def inspect(bgr: np.ndarray) -> Inspection:
    hsv = cv2.cvtColor(_checked(bgr), cv2.COLOR_BGR2HSV)
    colour = colour_pixels(hsv)
    if colour.mean() > NOT_ECHO_FRACTION:
        return Inspection(NOT_ECHO, int(colour.sum()), colour.size)
    fan = _fan(hsv)
    fan_pixels, inside = int(fan.sum()), int((colour & fan).sum())
    if fan_pixels < FAN_MIN_FRACTION * fan.size:
        return Inspection(NO_IMAGE, inside, fan_pixels)
    return Inspection(DOPPLER if inside >= DOPPLER_PIXELS_MIN else ANATOMICAL, inside, fan_pixels)
