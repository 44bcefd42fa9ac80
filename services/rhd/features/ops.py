"""Per-frame features: first-order grey statistics, GLCM texture, and flow size and velocity indices.

First algorithms: the velocity index reads brightness (laminar colour is brighter the faster the
flow) scaled by the Nyquist limit, and counts a mosaic as aliased flow at or beyond Nyquist; reading
the colour bar properly comes later.
"""

import cv2
import numpy as np
from scipy import stats
from skimage.feature import graycomatrix, graycoprops

from rhd.segment.ops import AWAY, MOSAIC, TOWARD

FEATURE_SET = "frame-v1"
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 3)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation", "dissimilarity")

FEATURE_NAMES: tuple[str, ...] = (
    "grey_mean", "grey_std", "grey_skewness", "grey_kurtosis", "grey_entropy",
    *(f"glcm_{p}" for p in GLCM_PROPS),
    "colour_fraction", "flow_area_mm2", "toward_area_mm2", "away_area_mm2", "mosaic_area_mm2",
    "mosaic_fraction", "jet_length_mm", "velocity_index_cm_s", "aliased",
)


def first_order(grey: np.ndarray) -> dict[str, float]:
    values = grey[grey > 0].astype(np.float64)  # the black surround is not tissue
    if values.size < 2:
        return {"grey_mean": 0.0, "grey_std": 0.0, "grey_skewness": 0.0, "grey_kurtosis": 0.0,
                "grey_entropy": 0.0}
    histogram = np.bincount(values.astype(np.int64), minlength=256) / values.size
    nonzero = histogram[histogram > 0]
    return {
        "grey_mean": float(values.mean()),
        "grey_std": float(values.std()),
        "grey_skewness": float(stats.skew(values)),
        "grey_kurtosis": float(stats.kurtosis(values)),
        "grey_entropy": float(-(nonzero * np.log2(nonzero)).sum()),
    }


def texture(grey: np.ndarray) -> dict[str, float]:
    quantised = (grey.astype(np.uint16) * GLCM_LEVELS // 256).astype(np.uint8)
    glcm = graycomatrix(quantised, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    return {f"glcm_{p}": float(np.nan_to_num(graycoprops(glcm, p).mean())) for p in GLCM_PROPS}


def jet_length_px(mosaic: np.ndarray) -> float:
    """Long side of the rotated bounding box of the largest mosaic region."""
    count, components, box_stats, _ = cv2.connectedComponentsWithStats(mosaic.astype(np.uint8), connectivity=8)
    if count <= 1:
        return 0.0
    largest = 1 + int(np.argmax(box_stats[1:, cv2.CC_STAT_AREA]))
    points = np.column_stack(np.nonzero(components == largest)[::-1]).astype(np.float32)
    (_, _), (w, h), _ = cv2.minAreaRect(points)
    return float(max(w, h))


def flow(bgr: np.ndarray, labels: np.ndarray, spacing_mm: float, nyquist_cm_s: float) -> dict[str, float]:
    if labels.shape != bgr.shape[:2]:
        raise ValueError(f"mask shape {labels.shape} does not match frame shape {bgr.shape[:2]}")
    pixel_mm2 = spacing_mm * spacing_mm
    toward, away, mosaic = labels == TOWARD, labels == AWAY, labels == MOSAIC
    flow_pixels = int((labels > 0).sum())
    laminar = toward | away
    brightness = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[..., 2]
    laminar_velocity = float(brightness[laminar].max()) / 255.0 * nyquist_cm_s if laminar.any() else 0.0
    aliased = bool(mosaic.any())
    return {
        "colour_fraction": flow_pixels / labels.size,
        "flow_area_mm2": flow_pixels * pixel_mm2,
        "toward_area_mm2": int(toward.sum()) * pixel_mm2,
        "away_area_mm2": int(away.sum()) * pixel_mm2,
        "mosaic_area_mm2": int(mosaic.sum()) * pixel_mm2,
        "mosaic_fraction": int(mosaic.sum()) / flow_pixels if flow_pixels else 0.0,
        "jet_length_mm": jet_length_px(mosaic) * spacing_mm,
        "velocity_index_cm_s": max(laminar_velocity, nyquist_cm_s if aliased else 0.0),
        "aliased": float(aliased),
    }


def frame_features(bgr: np.ndarray, labels: np.ndarray, spacing_mm: float, nyquist_cm_s: float) -> list[float]:
    """The frame's feature vector, in FEATURE_NAMES order."""
    if spacing_mm <= 0:
        raise ValueError("pixel spacing unknown: lengths and areas cannot be measured")
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    values = {**first_order(grey), **texture(grey), **flow(bgr, labels, spacing_mm, nyquist_cm_s)}
    return [values[name] for name in FEATURE_NAMES]
