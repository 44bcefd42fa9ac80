"""Doppler vs anatomical by colour inspection, inside the ultrasound fan only.

Grey B-mode pixels have B = G = R (saturation 0); colour Doppler flow is saturated. The colour bar, a
coloured ECG trace and burned-in text sit outside the fan on B-mode frames too, so only colour inside
the fan counts: a frame is Doppler when enough of its fan is colour.
"""

import cv2
import numpy as np

SATURATION_MIN = 90   # HSV saturation (0-255) above which a pixel counts as colour
VALUE_MIN = 50        # and bright enough that the hue means something
DOPPLER_FRACTION_MIN = 0.002  # of all pixels: ~150 pixels of a 240x320 frame
NON_BLACK_MIN = 12    # grey level above which a pixel is image rather than the black surround
# Opening with this kernel removes thin strokes (text, ECG trace, depth marks) but keeps the fan.
FAN_OPEN_PX = 7


def fan_mask(bgr: np.ndarray) -> np.ndarray:
    """The ultrasound fan: the convex hull of the largest solid non-black region once thin overlays are opened
    away (the hull fills the dark blood pools inside it)."""
    image = (bgr.max(axis=2) > NON_BLACK_MIN).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (FAN_OPEN_PX, FAN_OPEN_PX))
    # Speckle leaves dark holes in tissue: close them before opening.
    solid = cv2.morphologyEx(cv2.morphologyEx(image, cv2.MORPH_CLOSE, kernel), cv2.MORPH_OPEN, kernel)
    count, components, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    fan = np.zeros(image.shape, np.uint8)
    if count > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        cv2.fillConvexPoly(fan, cv2.convexHull(cv2.findNonZero((components == largest).astype(np.uint8))), 1)
    return fan.astype(bool)


def colour_mask(bgr: np.ndarray) -> np.ndarray:
    """Boolean mask of saturated colour pixels inside the fan."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    return (hsv[..., 1] >= SATURATION_MIN) & (hsv[..., 2] >= VALUE_MIN) & fan_mask(bgr)


def colour_fraction(bgr: np.ndarray) -> float:
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected a colour frame H x W x 3, got shape {bgr.shape}")
    return float(colour_mask(bgr).mean())


def is_doppler(fraction: float) -> bool:
    return fraction >= DOPPLER_FRACTION_MIN
