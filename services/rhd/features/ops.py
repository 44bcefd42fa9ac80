"""Per-frame features: first-order statistics of the image and of the flow region, grey-level co-occurrence
texture, and blood-flow velocity read through the colour bar of the frame itself.

Velocity: the colour bar is found in the frame (a tall narrow strip of saturated colour outside the fan),
its colours are mapped linearly from +Nyquist at the red end to -Nyquist at the blue end (the limit comes
from the study metadata), every laminar flow pixel takes the velocity of its nearest bar colour, and one
level of aliasing is undone where red meets blue through the bright ends of the bar (a wrap, not a pass
through zero). Mosaic pixels carry variance, not a readable velocity: they count as aliased flow.
"""

import cv2
import numpy as np
from skimage.feature import graycomatrix

from rhd.imaging.colour import AWAY, MOSAIC, TOWARD, ColourBarError, decode_velocity, find_colour_bar
from rhd.imaging.sector import fan_mask

FEATURE_SET = "frame-v2"
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 3, 5)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation", "dissimilarity")
PERCENTILES = (10, 50, 90)
ALIAS_EDGE = 0.6  # share of Nyquist both sides of a red-blue seam must reach for it to be aliasing

FIRST_ORDER = ("mean", "var", "skewness", "kurtosis", "entropy", *(f"p{p}" for p in PERCENTILES))
FEATURE_NAMES: tuple[str, ...] = (
    *(f"grey_{s}" for s in FIRST_ORDER),
    *(f"flow_grey_{s}" for s in FIRST_ORDER),
    *(f"glcm_{p}_d{d}" for p in GLCM_PROPS for d in GLCM_DISTANCES),
    "flow_area_mm2",
    "toward_area_mm2",
    "away_area_mm2",
    "mosaic_area_mm2",
    "mosaic_fraction",
    "jet_length_mm",
    "velocity_peak_cm_s",
    "velocity_mean_cm_s",
    "toward_peak_cm_s",
    "away_peak_cm_s",
    "aliased_fraction",
    "unwrapped_fraction",
    "nyquist_cm_s",
)


class FeatureError(ValueError):
    """A frame whose features cannot be measured, with the reason (the frame ends FAILED, never silently 0)."""


LEVELS = np.arange(256, dtype=np.float64)


def first_order(values: np.ndarray, prefix: str) -> dict[str, float]:
    """Histogram statistics of 8-bit values; all zero for fewer than two values (an empty region). All of them from
    the 256-bin histogram, which is exact for 8-bit values: the moments (skewness and kurtosis as scipy.stats gives
    them, biased, Fisher's kurtosis) and the percentiles (numpy's linear interpolation between order statistics)."""
    values = np.asarray(values).ravel()
    n = values.size
    if n < 2:
        return {f"{prefix}_{s}": 0.0 for s in FIRST_ORDER}
    counts = np.bincount(values.astype(np.uint8, copy=False), minlength=256).astype(np.float64)
    histogram = counts / n
    mean = float(histogram @ LEVELS)
    deviation = LEVELS - mean
    m2, m3, m4 = (float(histogram @ deviation**k) for k in (2, 3, 4))
    flat = m2 <= 1e-12 * max(mean * mean, 1.0)  # one value only: no shape to describe
    nonzero = histogram[histogram > 0]
    out = {
        f"{prefix}_mean": mean,
        f"{prefix}_var": m2,
        f"{prefix}_skewness": 0.0 if flat else m3 / m2**1.5,
        f"{prefix}_kurtosis": 0.0 if flat else m4 / m2**2 - 3.0,
        f"{prefix}_entropy": float(-(nonzero * np.log2(nonzero)).sum()),
    }
    # The k-th smallest value is the first level whose cumulative count passes k.
    cumulative = np.cumsum(counts)
    for p in PERCENTILES:
        rank = (n - 1) * p / 100
        below = int(np.floor(rank))
        lo, hi = np.searchsorted(cumulative, [below, min(below + 1, n - 1)], side="right")
        out[f"{prefix}_p{p}"] = float(lo + (rank - below) * (hi - lo))
    return out


def texture(grey: np.ndarray, region: np.ndarray | None = None) -> dict[str, float]:
    """GLCM properties per distance, averaged over the four angles (rotation-tolerant), of the pixel pairs that lie
    wholly inside `region` (the fan; default the whole image): what lies around the image (text, marks, the black
    surround) takes no part. Outside pixels get a level of their own, whose row and column are then dropped."""
    region = np.ones(grey.shape, bool) if region is None else region
    rows, cols = np.nonzero(region)
    if not rows.size:
        return {f"glcm_{p}_d{d}": 0.0 for p in GLCM_PROPS for d in GLCM_DISTANCES}
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    quantised = np.where(region[box], 1 + grey[box].astype(np.uint16) * GLCM_LEVELS // 256, 0).astype(np.uint8)
    counts = graycomatrix(quantised, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS + 1, symmetric=True)
    properties = glcm_properties(counts[1:, 1:])
    return {
        f"glcm_{prop}_d{d}": float(value)
        for prop in GLCM_PROPS
        for d, value in zip(GLCM_DISTANCES, np.nan_to_num(properties[prop]).mean(axis=1), strict=True)
    }


_I, _J = np.ogrid[0:GLCM_LEVELS, 0:GLCM_LEVELS]
_WEIGHTS = np.stack([(_I - _J) ** 2, 1.0 / (1.0 + (_I - _J) ** 2), np.abs(_I - _J)]).reshape(3, -1).astype(np.float64)


def glcm_properties(glcm: np.ndarray) -> dict[str, np.ndarray]:
    """GLCM_PROPS of co-occurrence counts (levels x levels x distances x angles), each [distances, angles], as
    skimage's graycoprops gives them (its formulas: each matrix normalised, 1 for the correlation of a constant),
    computed in one pass: graycoprops normalises the matrices again for each property, five times the work."""
    levels, _, distances, angles = glcm.shape
    p = glcm.astype(np.float64).reshape(levels * levels, distances * angles)
    sums = p.sum(axis=0)
    p /= np.where(sums == 0, 1.0, sums)
    contrast, homogeneity, dissimilarity = _WEIGHTS @ p
    i, j = np.repeat(np.arange(levels), levels), np.tile(np.arange(levels), levels)
    diff_i, diff_j = i[:, None] - i @ p, j[:, None] - j @ p
    std_i, std_j = np.sqrt((p * diff_i**2).sum(axis=0)), np.sqrt((p * diff_j**2).sum(axis=0))
    constant = (std_i < 1e-15) | (std_j < 1e-15)
    correlation = np.where(constant, 1.0, (p * diff_i * diff_j).sum(axis=0) / np.where(constant, 1.0, std_i * std_j))
    shape = (distances, angles)
    return {
        "contrast": contrast.reshape(shape),
        "homogeneity": homogeneity.reshape(shape),
        "energy": np.sqrt((p * p).sum(axis=0)).reshape(shape),
        "correlation": correlation.reshape(shape),
        "dissimilarity": dissimilarity.reshape(shape),
    }


def unalias(aliased_cm_s: np.ndarray, laminar: np.ndarray, nyquist_cm_s: float) -> np.ndarray:
    """Undo one level of aliasing. Where red meets blue through bright colours (both sides near the Nyquist
    limit) the velocity wrapped; where they meet through dark ones it passed through zero and is real. Of two
    regions that meet by wrapping, the smaller (the fast core) is shifted by 2 x Nyquist to the larger's sign.
    Worked out within the box around the laminar pixels: the same regions and seams, a fraction of the pixels."""
    x, y, w, h = cv2.boundingRect(laminar.astype(np.uint8))
    if not w:
        return np.zeros(0, np.float32)
    laminar = laminar[y : y + h, x : x + w]
    full = np.zeros(laminar.shape, np.float32)
    full[laminar] = aliased_cm_s
    fast = np.abs(full) >= ALIAS_EDGE * nyquist_cm_s
    kernel = np.ones((3, 3), np.uint8)
    positive, negative = laminar & (full > 0), laminar & (full < 0)
    n_pos, pos_regions = cv2.connectedComponents(positive.astype(np.uint8), connectivity=8)
    n_neg, neg_regions = cv2.connectedComponents(negative.astype(np.uint8), connectivity=8)
    sizes_pos = np.bincount(pos_regions.ravel(), minlength=n_pos)
    sizes_neg = np.bincount(neg_regions.ravel(), minlength=n_neg)
    # Fast positive pixels next to fast negative ones: the seams, and the pairs of regions they join.
    near_fast_neg = cv2.dilate((negative & fast).astype(np.uint8), kernel).astype(bool)
    seam = positive & fast & near_fast_neg
    pairs: set[tuple[int, int]] = set()
    if seam.any():
        grown_neg = cv2.dilate(neg_regions.astype(np.float32), kernel).astype(np.int64)
        pairs = {(int(p), int(q)) for p, q in np.unique(np.stack([pos_regions[seam], grown_neg[seam]], 1), axis=0)}
    out = full.copy()
    for p, q in sorted(pairs):
        if not q:
            continue
        if sizes_pos[p] < sizes_neg[q]:
            out[pos_regions == p] = full[pos_regions == p] - 2 * nyquist_cm_s
        else:
            out[neg_regions == q] = full[neg_regions == q] + 2 * nyquist_cm_s
    return out[laminar]


def jet_length_px(mosaic: np.ndarray) -> float:
    """Long side of the rotated bounding box of the largest mosaic region (labelled within the box around the mosaic:
    the same regions, a fraction of the pixels)."""
    mask = mosaic.astype(np.uint8)
    x, y, w, h = cv2.boundingRect(mask)
    if not w:
        return 0.0
    count, components = cv2.connectedComponents(mask[y : y + h, x : x + w], connectivity=8)
    largest = 1 + int(np.argmax(np.bincount(components.ravel(), minlength=count)[1:]))
    points = np.column_stack(np.nonzero(components == largest)[::-1]).astype(np.float32)
    (_, _), (w, h), _ = cv2.minAreaRect(points)
    return float(max(w, h))


def flow(
    bgr: np.ndarray, labels: np.ndarray, spacing_mm: float, nyquist_cm_s: float, fan: np.ndarray | None = None
) -> dict[str, float]:
    """Flow size and velocity of a segmented frame."""
    pixel_mm2 = spacing_mm * spacing_mm
    toward, away, mosaic = labels == TOWARD, labels == AWAY, labels == MOSAIC
    laminar = toward | away
    flow_pixels = int((labels > 0).sum())
    try:
        bar = find_colour_bar(bgr, nyquist_cm_s, fan)
    except ColourBarError as exc:
        raise FeatureError(str(exc)) from exc
    velocity = unalias(decode_velocity(bgr, laminar, bar), laminar, nyquist_cm_s) if laminar.any() else np.zeros(0)
    speed = np.abs(velocity)
    full = np.zeros(labels.shape, np.float32)
    full[laminar] = velocity
    beyond = int((speed >= nyquist_cm_s).sum())
    peak = max(float(speed.max()) if speed.size else 0.0, nyquist_cm_s if mosaic.any() else 0.0)
    return {
        "flow_area_mm2": flow_pixels * pixel_mm2,
        "toward_area_mm2": int(toward.sum()) * pixel_mm2,
        "away_area_mm2": int(away.sum()) * pixel_mm2,
        "mosaic_area_mm2": int(mosaic.sum()) * pixel_mm2,
        "mosaic_fraction": int(mosaic.sum()) / flow_pixels if flow_pixels else 0.0,
        "jet_length_mm": jet_length_px(mosaic) * spacing_mm,
        "velocity_peak_cm_s": peak,
        "velocity_mean_cm_s": float(speed.mean()) if speed.size else 0.0,
        "toward_peak_cm_s": float(max(full.max(), 0.0)),
        "away_peak_cm_s": float(max(-full.min(), 0.0)),
        "aliased_fraction": (beyond + int(mosaic.sum())) / flow_pixels if flow_pixels else 0.0,
        "unwrapped_fraction": beyond / max(int(laminar.sum()), 1),
        "nyquist_cm_s": nyquist_cm_s,
    }


def frame_features(
    bgr: np.ndarray, labels: np.ndarray, spacing_mm: float, nyquist_cm_s: float, fan: np.ndarray | None = None
) -> list[float]:
    """The frame's feature vector, in FEATURE_NAMES order; FeatureError says why a frame cannot be measured. `fan`: its
    video's sector, else the frame's own fan is found."""
    if spacing_mm <= 0:
        raise FeatureError("pixel spacing unknown: lengths and areas cannot be measured")
    if labels.shape != bgr.shape[:2]:
        raise FeatureError(f"mask shape {labels.shape} does not match frame shape {bgr.shape[:2]}")
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    fan = fan_mask(bgr) if fan is None else fan
    values = {
        **first_order(grey[fan], "grey"),
        **first_order(grey[labels > 0], "flow_grey"),
        **texture(grey, fan),
        **flow(bgr, labels, spacing_mm, nyquist_cm_s, fan),
    }
    return [values[name] for name in FEATURE_NAMES]
