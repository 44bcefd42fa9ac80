"""Colour segmentation: k-means (OpenCV) on the colour pixels only, clusters named by their hue.

Labels: 0 background, 1 laminar flow towards the probe (red), 2 laminar flow away (blue),
3 turbulent mosaic (green / yellow / cyan, the signature of a regurgitant jet's variance).
"""

from dataclasses import dataclass

import cv2
import numpy as np

from rhd.inspect.ops import colour_mask

BACKGROUND, TOWARD, AWAY, MOSAIC = 0, 1, 2, 3
CLUSTERS = 4
KMEANS_SEED = 1234
# Mosaic is a texture, not a colour: isolated red or blue pixels inside it belong to it too.
MOSAIC_CLOSE_PX = 5


@dataclass(frozen=True)
class Segmentation:
    labels: np.ndarray  # uint8 H x W, values BACKGROUND..MOSAIC
    flow_pixels: int
    mosaic_pixels: int


def _name_cluster(hue: float) -> int:
    """OpenCV hue is 0-179: red wraps round 0, blue sits near 120. The laminar velocity map brightens towards
    orange (hue ~18) and light blue (~100) near the Nyquist limit; variance green moves turbulence in between."""
    if hue < 22 or hue > 165:
        return TOWARD
    if 97 <= hue <= 135:
        return AWAY
    return MOSAIC


def segment(bgr: np.ndarray) -> Segmentation:
    colour = colour_mask(bgr)
    labels = np.zeros(colour.shape, np.uint8)
    n = int(colour.sum())
    if n == 0:
        return Segmentation(labels, 0, 0)
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[colour].astype(np.float32)
    angle = hsv[:, 0] * (np.pi / 90.0)
    # Hue is circular: cluster on its cosine and sine so red at 179 and red at 1 are neighbours.
    samples = np.stack([np.cos(angle), np.sin(angle), hsv[:, 1] / 255.0], axis=1).astype(np.float32)
    k = min(CLUSTERS, n)
    cv2.setRNGSeed(KMEANS_SEED)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    _, assignment, centres = cv2.kmeans(samples, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    centre_hue = (np.degrees(np.arctan2(centres[:, 1], centres[:, 0])) % 360.0) / 2.0
    names = np.array([_name_cluster(h) for h in centre_hue], np.uint8)
    labels[colour] = names[assignment.ravel()]
    mosaic = (labels == MOSAIC).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (MOSAIC_CLOSE_PX, MOSAIC_CLOSE_PX))
    mosaic = cv2.morphologyEx(mosaic, cv2.MORPH_CLOSE, kernel).astype(bool) & colour
    labels[mosaic] = MOSAIC
    return Segmentation(labels, n, int(mosaic.sum()))
