"""Doppler vs anatomical by colour inspection: the share of strongly saturated colour pixels.

First algorithm, deliberately simple: grey B-mode pixels have B = G = R (saturation 0); colour
Doppler flow is saturated. A frame is Doppler when enough of its pixels are colour.
"""

import cv2
import numpy as np

SATURATION_MIN = 90   # HSV saturation (0-255) above which a pixel counts as colour
VALUE_MIN = 50        # and bright enough that the hue means something
DOPPLER_FRACTION_MIN = 0.002  # of all pixels: ~150 pixels of a 240x320 frame


def colour_mask(bgr: np.ndarray) -> np.ndarray:
    """Boolean mask of saturated colour pixels."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    return (hsv[..., 1] >= SATURATION_MIN) & (hsv[..., 2] >= VALUE_MIN)


def colour_fraction(bgr: np.ndarray) -> float:
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected a colour frame H x W x 3, got shape {bgr.shape}")
    return float(colour_mask(bgr).mean())


def is_doppler(fraction: float) -> bool:
    return fraction >= DOPPLER_FRACTION_MIN
