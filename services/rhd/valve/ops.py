"""valve stage's pure functions: the segmentation network's labels of one B-mode frame -> the valve measurements a
cardiologist makes on it.

The network (rhd.valve.model) says, at half resolution, which pixels are mitral leaflet, chord or aortic cusp.
Thickness is then measured on the full-resolution frame: per straight part of a structure (a connected part of
the network's mask, along its principal axis), the frame's brightness across it, averaged along it so that speckle
averages out, gives the leaflet's width at half maximum, each side's half level taken against that side's own
surroundings (tissue on one side, blood on the other, say). Chords and cusps are thinner than the scanner
resolves, so their width at half maximum is mostly the scanner's blur: they are given their echo above the
surroundings summed across them, in mm of tissue brightness, which a thicker or brighter structure raises. Motion
is measured on the shapes:

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

from rhd.imaging.sector import checked_frame, image_only

INPUT_NAME = "frames"  # uint8 [batch, 240, 320, 3], BGR as OpenCV decodes
PROBABILITIES = "label_probabilities"  # float32 [batch, 108, 136, 4]: LABELS per half-resolution pixel
LABELS = ("background", "mitral_leaflet", "chord", "aortic_cusp")  # rhd.valve.model.LABELS
MITRAL, CHORD, AORTIC = 1, 2, 3
CROP_TOP, CROP_LEFT, POOL = 6, 24, 2  # where the network's half-resolution grid lies on the frame
CROP_SHAPE = (108, 136)  # the grid's size (rhd.valve.model.INPUT_SHAPE)
MIN_PIXELS = 6  # half-resolution pixels below which a structure is not found in the frame
BAND_PX = 2  # full-resolution pixels around the network's mask in which a gap's echo is sought
PROFILE_BIN_PX = 1.0  # the profile across a structure, in bins of a pixel...
PROFILE_REACH_PX = 8.0  # ... out to this far either side of its axis (further for thicker ones)
PROFILE_EDGE_BINS = 3  # its outermost bins each side: the surroundings' brightness
MIN_PART_LENGTH_PX = 6.0  # a straight part shorter than this is not profiled

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


def half_resolution(mask: np.ndarray) -> np.ndarray:
    """A full-resolution label mask (H x W) as the network answers it: cropped to the sector and halved, a
    half-resolution pixel taking any structure one of its four pixels shows (leaflet over cusp over chord), so a
    one-pixel chord is not lost. Training's targets are made this way."""
    crop = mask[CROP_TOP : CROP_TOP + CROP_SHAPE[0] * POOL, CROP_LEFT : CROP_LEFT + CROP_SHAPE[1] * POOL]
    blocks = crop.reshape(CROP_SHAPE[0], POOL, CROP_SHAPE[1], POOL)
    out = np.zeros(CROP_SHAPE, np.uint8)
    for label in (CHORD, AORTIC, MITRAL):  # later wins
        out[(blocks == label).any(axis=(1, 3))] = label
    return out


def _components(mask: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    """The mask's connected parts (8-connected) of at least min_pixels, largest first (labelled within the box around
    the mask: the same parts, a fraction of the pixels)."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    if not w:
        return []
    count, labels = cv2.connectedComponents(mask[y : y + h, x : x + w].astype(np.uint8), connectivity=8)
    area = np.bincount(labels.ravel(), minlength=count)
    parts = []
    for k in sorted(range(1, count), key=lambda k: -area[k]):
        if area[k] >= min_pixels:
            part = np.zeros(mask.shape, bool)
            part[y : y + h, x : x + w] = labels == k
            parts.append(part)
    return parts


@dataclass(frozen=True)
class Profile:
    """The frame's brightness across one straight part of a structure, averaged along it (speckle averages out)."""

    offsets: np.ndarray  # px from the part's axis, bin centres
    mean: np.ndarray  # mean grey per bin

    def width_px(self, half_width: float) -> float:
        """Full width at half maximum, each side's half level taken against that side's own surroundings (a leaflet
        may lie against tissue on one side and blood on the other); NaN when an edge is not found within reach."""
        p, d = self.mean, self.offsets
        near = np.abs(d) <= half_width + 1.0
        if not near.any():
            return float("nan")
        peak_at = int(np.flatnonzero(near)[np.argmax(p[near])])
        edges = []
        for step, outer in ((-1, p[:PROFILE_EDGE_BINS]), (1, p[-PROFILE_EDGE_BINS:])):
            level = (p[peak_at] + float(np.median(outer))) / 2
            k = peak_at
            while 0 <= k + step < len(p) and p[k + step] > level:
                k += step
            if not 0 <= k + step < len(p):
                return float("nan")  # no edge on this side within reach: not measurable here
            # interpolate where the profile crosses the level between bin k and the next one out
            a, b = p[k], p[k + step]
            t = (a - level) / (a - b) if a != b else 0.5
            edges.append(d[k] + step * t * PROFILE_BIN_PX)
        return float(edges[1] - edges[0])

    def excess_px(self, half_width: float, reference: float) -> float:
        """The structure's echo above its surroundings, summed across it, in pixels of `reference` brightness: for
        structures thinner than the scanner's resolution, a thickness that brightness and width both add to."""
        p, d = self.mean, self.offsets
        left, right = float(np.median(p[:PROFILE_EDGE_BINS])), float(np.median(p[-PROFILE_EDGE_BINS:]))
        base = left + (right - left) * (d - d[0]) / (d[-1] - d[0])
        near = np.abs(d) <= half_width + 2.0
        return float(np.clip(p[near] - base[near], 0, None).sum() * PROFILE_BIN_PX / max(reference, 1.0))


def _profile(grey: np.ndarray, part: np.ndarray, reach: float) -> tuple[Profile, float] | None:
    """The profile across a straight part (its principal axis), over its length less a pixel at each end; and the
    part's half width as the network drew it."""
    points, centre, axis = _axes(part)
    normal = np.array([-axis[1], axis[0]])
    along = (points - centre) @ axis
    lo, hi = along.min() + 1.0, along.max() - 1.0
    if hi - lo < MIN_PART_LENGTH_PX:
        return None
    half_width = float(np.percentile(np.abs((points - centre) @ normal), 95)) + 0.5
    reach = max(reach, half_width + 7.0)
    y0, x0 = (np.maximum(np.floor(centre[::-1] - (hi - lo) / 2 - reach - 2), 0)).astype(int)
    y1, x1 = np.minimum(np.ceil(centre[::-1] + (hi - lo) / 2 + reach + 2), grey.shape).astype(int)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64) - centre
    a, n = xy @ axis, xy @ normal
    keep = (a >= lo) & (a <= hi) & (np.abs(n) <= reach)
    bins = np.arange(-reach, reach + PROFILE_BIN_PX, PROFILE_BIN_PX)
    which = np.digitize(n[keep], bins) - 1
    values = grey[y0:y1, x0:x1].ravel()[keep]
    sums = np.bincount(which, weights=values, minlength=len(bins) - 1)[: len(bins) - 1]
    counts = np.bincount(which, minlength=len(bins) - 1)[: len(bins) - 1]
    centres = (bins[:-1] + bins[1:]) / 2
    filled = counts > 0
    if filled.sum() < len(counts) // 2:
        return None
    mean = np.interp(centres, centres[filled], sums[filled] / counts[filled])  # a bin no pixel fell in: its neighbours
    return Profile(centres, mean), half_width


def tissue_level(grey: np.ndarray) -> float:
    """The brightness of tissue in the frame: the median of the pixels above Otsu's threshold (blood and the
    black outside the fan fall below it)."""
    lit = grey[grey > 2]
    if lit.size == 0:
        return 0.0
    threshold, _ = cv2.threshold(np.clip(lit, 0, 255).astype(np.uint8).reshape(1, -1), 0, 255, cv2.THRESH_OTSU)
    return float(np.median(lit[lit > threshold])) if (lit > threshold).any() else float(np.median(lit))


def _axes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y) of the mask, its centroid and its principal direction (unit). The pixels are found
    within the box around them, in the same order: a fifth of the frame's pixels searched."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    ys, xs = np.nonzero(mask[y : y + h, x : x + w])
    points = np.stack([xs + x, ys + y], axis=1).astype(np.float64)
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


def _gap_px(grey: np.ndarray, mask: np.ndarray, centre: np.ndarray, axis: np.ndarray, tissue: float) -> float:
    """Along the shape's long axis, the longest run of one-pixel bins in its middle half where the echo within it
    stays under half the tissue's: where the closed cusps do not meet."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * BAND_PX + 1, 2 * BAND_PX + 1))
    band = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    ys, xs = np.nonzero(band)
    along = np.round((np.stack([xs, ys], axis=1) - centre) @ axis).astype(int)
    lo, hi = int(along.min()), int(along.max())
    brightest = np.zeros(hi - lo + 1)
    np.maximum.at(brightest, along - lo, grey[ys, xs])
    quarter = (hi - lo) // 4
    middle = brightest[quarter : len(brightest) - quarter] < tissue / 2
    longest = run = 0
    for dark in middle:
        run = run + 1 if dark else 0
        longest = max(longest, run)
    return float(longest)


def measure(
    grey: np.ndarray,
    mask: np.ndarray,
    spacing_mm: float,
    apex: np.ndarray,
    tissue: float,
    thin: bool,
    gap: bool = False,
) -> Structure:
    """One structure (the network's full-resolution mask of it) measured on the grey frame: its thickness (the
    median over its straight parts of their width at half maximum, or for `thin` structures their echo across them
    in mm of tissue), how far it opens, where its middle lies, and any gap along it."""
    if mask.sum() < MIN_PIXELS * POOL * POOL:
        return Structure(False)
    widths = []
    for part in _components(mask, MIN_PIXELS * POOL * POOL):
        profiled = _profile(grey, part, PROFILE_REACH_PX)
        if profiled is not None:
            profile, half_width = profiled
            width = profile.excess_px(half_width, tissue) if thin else profile.width_px(half_width)
            if np.isfinite(width):
                widths.append(width)
    points, centre, axis = _axes(mask)
    (_, _), (w, h), _ = cv2.minAreaRect(points.astype(np.float32))
    opening = float(min(w, h) / max(w, h)) if max(w, h) > 0 else 0.0
    return Structure(
        True,
        float(np.median(widths)) * spacing_mm if widths else 0.0,
        opening,
        _coaptation_px(points, centre, axis, apex) * spacing_mm,
        _gap_px(grey, mask, centre, axis, tissue) * spacing_mm if gap else 0.0,
    )


def fan_apex(bgr: np.ndarray) -> np.ndarray:
    """Where the probe is: the top centre of the image (x, y), as every sector scanner draws its fan."""
    return np.array([bgr.shape[1] / 2.0, 0.0])


def valve_features(
    bgr: np.ndarray, probabilities: np.ndarray | None, spacing_mm: float, seen: np.ndarray | None = None
) -> list[float]:
    """One B-mode frame and the network's answer for it -> FEATURE_NAMES' values. `seen`: the frame as the network
    read it (image_only of it), when the caller has it already."""
    if probabilities is None:
        raise ValveError(f"the valve model's answer has no {PROBABILITIES!r}")
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise ValveError(f"pixel spacing must be a positive number of mm, got {spacing_mm}")
    # Measured on the image alone, as the network reads it: text around the fan must not move the tissue level.
    image = image_only(checked_frame(bgr)) if seen is None else checked_frame(seen)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    try:
        labels = full_resolution(labels_from_probabilities(probabilities), grey.shape)
    except ValueError as exc:
        raise ValveError(f"the valve model's answer cannot be read: {exc}") from exc
    apex, tissue = fan_apex(image), tissue_level(grey)
    mitral = measure(grey, labels == MITRAL, spacing_mm, apex, tissue, thin=False)
    chord = measure(grey, labels == CHORD, spacing_mm, apex, tissue, thin=True)
    aortic = measure(grey, labels == AORTIC, spacing_mm, apex, tissue, thin=True, gap=True)
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
