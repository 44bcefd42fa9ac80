"""valve stage's pure functions: the segmentation network's labels of one B-mode frame -> the valve measurements a
cardiologist makes on it.

The network (rhd.valve.model) says, at half resolution, which pixels are mitral leaflet, chord or aortic cusp.
Thickness is then measured on the full-resolution frame, inside a band around what the network found: the
structure's pixels are those brighter than the midpoint between its own brightness and the blood or tissue beside
it, and its thickness is their area over the length of their centre line. Motion is measured on the shapes:

- opening: the shape's short side over its long side (cv2.minAreaRect). Closed leaflets lie along the annulus
  (a thin shape), open ones point into the ventricle (a square one); restricted leaflets open less.
- coaptation: how far the middle of the closed leaflets lies beyond the line through their ends, in mm, signed
  positive away from the probe. In the standard views the left atrium lies deeper than the mitral annulus, so
  positive is the atrial side: leaflet tips that overshoot the annulus in systole (excessive tip motion) or, for
  the aortic cusps, a closure line bowed into the ventricle (prolapse).
- gap: along the closed cusps' line, the longest run in the middle where no cusp echo shows (a coaptation defect).

Which phase a value belongs to (leaflet thickness in diastole, coaptation in systole) is decided per video by
assemble, which knows every frame's phase; this stage measures every frame the same way.
"""

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.morphology import skeletonize

from rhd.imaging.sector import checked_frame

INPUT_NAME = "frames"  # uint8 [batch, 240, 320, 3], BGR as OpenCV decodes
PROBABILITIES = "label_probabilities"  # float32 [batch, 108, 136, 4]: LABELS per half-resolution pixel
LABELS = ("background", "mitral_leaflet", "chord", "aortic_cusp")  # rhd.valve.model.LABELS
MITRAL, CHORD, AORTIC = 1, 2, 3
CROP_TOP, CROP_LEFT, POOL = 6, 24, 2  # where the network's half-resolution grid lies on the frame
MIN_PIXELS = 6  # half-resolution pixels below which a structure is not found in the frame
BAND_PX = 3  # full-resolution pixels around the network's mask in which the structure's edges are sought

FEATURE_SET = "valve-v1"
FEATURE_NAMES = (
    "mitral_found",  # 1 when the network finds the mitral leaflets in the frame
    "mitral_thickness_mm",
    "mitral_opening",  # short over long side of the leaflets' shape: 0 closed flat, about 0.5 wide open
    "mitral_coaptation_mm",  # middle of the leaflets beyond the line through their ends, + away from the probe
    "chord_found",
    "chord_thickness_mm",
    "aortic_found",
    "aortic_thickness_mm",
    "aortic_opening",
    "aortic_coaptation_mm",
    "aortic_gap_mm",
)


class ValveError(ValueError):
    """The frame or the model's answer cannot be measured."""


@dataclass(frozen=True)
class Structure:
    found: bool
    thickness_mm: float = 0.0
    opening: float = 0.0
    coaptation_mm: float = 0.0
    gap_mm: float = 0.0


def labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """The network's answer for one frame [108, 136, 4] -> the label of each half-resolution pixel."""
    p = np.asarray(probabilities)
    if p.ndim != 3 or p.shape[-1] != len(LABELS):
        raise ValueError(f"expected label probabilities [h, w, {len(LABELS)}], got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("label probabilities are not finite")
    return np.argmax(p, axis=-1).astype(np.uint8)


def full_resolution(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Half-resolution labels of the sector crop -> a label per pixel of the whole frame (0 outside the crop)."""
    out = np.zeros(shape, np.uint8)
    up = np.repeat(np.repeat(labels, POOL, axis=0), POOL, axis=1)
    h = min(up.shape[0], shape[0] - CROP_TOP)
    w = min(up.shape[1], shape[1] - CROP_LEFT)
    out[CROP_TOP : CROP_TOP + h, CROP_LEFT : CROP_LEFT + w] = up[:h, :w]
    return out


def _centre_line_length(mask: np.ndarray) -> float:
    """Length in pixels of the mask's centre line (skeleton), diagonal steps counted as sqrt(2)."""
    skeleton = skeletonize(mask)
    ys, xs = np.nonzero(skeleton)
    if ys.size < 2:
        return float(ys.size)
    s = skeleton.astype(np.uint8)
    straight = int((s[:, 1:] & s[:, :-1]).sum() + (s[1:, :] & s[:-1, :]).sum())
    diagonal = int((s[1:, 1:] & s[:-1, :-1]).sum() + (s[1:, :-1] & s[:-1, 1:]).sum())
    # A staircase counts both its straight and diagonal links; a skeleton pixel has at most two neighbours along
    # the line, so the length is bounded by the pixel count.
    return float(min(straight + np.sqrt(2) * diagonal, np.sqrt(2) * (ys.size - 1))) + 1.0


def _refined(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The structure's pixels at full resolution: inside a band around the network's mask, brighter than the
    midpoint between the structure's brightness and its surroundings'."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * BAND_PX + 1, 2 * BAND_PX + 1))
    band = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    ring = cv2.dilate(band.astype(np.uint8), kernel).astype(bool) & ~band
    if not ring.any() or not mask.any():
        return np.zeros_like(mask)
    inside = float(np.percentile(grey[mask], 75))
    outside = float(np.median(grey[ring]))
    if inside <= outside:
        return np.zeros_like(mask)
    return band & (grey > (inside + outside) / 2)


def _axes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y) of the mask, its centroid and its principal direction (unit)."""
    ys, xs = np.nonzero(mask)
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    return points, centre, vt[0]


def _coaptation_px(points: np.ndarray, centre: np.ndarray, axis: np.ndarray, apex: np.ndarray) -> float:
    """How far the middle third of the shape lies beyond the line through its two end thirds, positive away from
    the probe (the apex of the fan)."""
    along = (points - centre) @ axis
    normal = np.array([-axis[1], axis[0]])
    if normal @ (centre - apex) < 0:
        normal = -normal  # away from the probe
    across = (points - centre) @ normal
    lo, hi = along.min(), along.max()
    third = (hi - lo) / 3
    middle = across[np.abs(along - (lo + hi) / 2) <= third / 2]
    ends = across[(along <= lo + third / 2) | (along >= hi - third / 2)]
    if middle.size == 0 or ends.size == 0:
        return 0.0
    return float(middle.mean() - ends.mean())


def _gap_px(grey: np.ndarray, refined: np.ndarray, centre: np.ndarray, axis: np.ndarray) -> float:
    """Along the shape's long axis, the longest run of one-pixel bins in its middle half with no structure pixel."""
    ys, xs = np.nonzero(refined)
    if ys.size == 0:
        return 0.0
    along = np.round((np.stack([xs, ys], axis=1) - centre) @ axis).astype(int)
    lo, hi = along.min(), along.max()
    occupied = np.zeros(hi - lo + 1, bool)
    occupied[along - lo] = True
    quarter = (hi - lo) // 4
    middle = occupied[quarter : len(occupied) - quarter]
    longest = run = 0
    for full in middle:
        run = 0 if full else run + 1
        longest = max(longest, run)
    return float(longest)


def measure(grey: np.ndarray, mask: np.ndarray, spacing_mm: float, apex: np.ndarray, gap: bool = False) -> Structure:
    """One structure (the network's full-resolution mask of it) measured on the grey frame."""
    if mask.sum() < MIN_PIXELS * POOL * POOL:
        return Structure(False)
    refined = _refined(grey, mask)
    if refined.sum() < MIN_PIXELS:
        return Structure(False)
    length = _centre_line_length(refined)
    thickness = float(refined.sum()) / max(length, 1.0)
    points, centre, axis = _axes(mask)
    (_, _), (w, h), _ = cv2.minAreaRect(points.astype(np.float32))
    opening = float(min(w, h) / max(w, h)) if max(w, h) > 0 else 0.0
    coaptation = _coaptation_px(points, centre, axis, apex)
    return Structure(
        True,
        thickness * spacing_mm,
        opening,
        coaptation * spacing_mm,
        _gap_px(grey, refined, centre, axis) * spacing_mm if gap else 0.0,
    )


def fan_apex(bgr: np.ndarray) -> np.ndarray:
    """Where the probe is: the top centre of the image (x, y), as every sector scanner draws its fan."""
    return np.array([bgr.shape[1] / 2.0, 0.0])


def valve_features(bgr: np.ndarray, probabilities: np.ndarray | None, spacing_mm: float) -> list[float]:
    """One B-mode frame and the network's answer for it -> FEATURE_NAMES' values."""
    if probabilities is None:
        raise ValveError(f"the valve model's answer has no {PROBABILITIES!r}")
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise ValveError(f"pixel spacing must be a positive number of mm, got {spacing_mm}")
    image = checked_frame(bgr)
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 0.8)
    try:
        labels = full_resolution(labels_from_probabilities(probabilities), grey.shape)
    except ValueError as exc:
        raise ValveError(f"the valve model's answer cannot be read: {exc}") from exc
    apex = fan_apex(image)
    mitral = measure(grey, labels == MITRAL, spacing_mm, apex)
    chord = measure(grey, labels == CHORD, spacing_mm, apex)
    aortic = measure(grey, labels == AORTIC, spacing_mm, apex, gap=True)
    return [
        float(mitral.found),
        mitral.thickness_mm,
        mitral.opening,
        mitral.coaptation_mm,
        float(chord.found),
        chord.thickness_mm,
        float(aortic.found),
        aortic.thickness_mm,
        aortic.opening,
        aortic.coaptation_mm,
        aortic.gap_mm,
    ]
