"""Colour Doppler's colour map: which hue means flow towards or away from the probe, the labels of a flow mask,
and the velocity colour bar a scanner draws beside the image (found in the frame itself and read).

Labels of a flow mask: 0 background (grey image, and faint colour bled by video compression), 1 laminar flow
towards the probe (red to orange), 2 laminar flow away (blue to light blue), 3 turbulent mosaic (the green,
yellow and cyan that a jet's velocity variance adds).
"""

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import cKDTree

from rhd.imaging.sector import colour_pixels, fan_mask

BACKGROUND, TOWARD, AWAY, MOSAIC = 0, 1, 2, 3

BAR_MIN_HEIGHT = 0.2  # of the frame height
BAR_MAX_WIDTH = 24  # px
BAR_MIN_ROWS = 20  # distinct colours a readable bar must have


class ColourBarError(ValueError):
    """No readable velocity colour bar in the frame (or no Nyquist limit to scale it): velocities are unknown."""


@dataclass(frozen=True)
class ColourBar:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    colours: np.ndarray  # float32 rows x 3 BGR, from the red end to the blue end
    velocities: np.ndarray  # float32 rows, +Nyquist .. -Nyquist (cm/s)


def name_hue(hue: np.ndarray) -> np.ndarray:
    """OpenCV hue (0-179) -> label. The laminar map runs from red (0) to orange (~18) towards the probe and
    from blue (120) to light blue (~100) away; variance green moves turbulent colours in between."""
    hue = np.asarray(hue, np.float64)
    return np.where((hue < 22) | (hue > 165), TOWARD, np.where((hue >= 97) & (hue <= 135), AWAY, MOSAIC)).astype(
        np.uint8
    )


def runs(columns: np.ndarray) -> list[np.ndarray]:
    """Sorted column (or row) indices split into runs of adjacent ones."""
    return [run for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1) if run.size]


def find_colour_bar(bgr: np.ndarray, nyquist_cm_s: float, fan: np.ndarray | None = None) -> ColourBar:
    """Locate the velocity colour bar outside the fan (a tall narrow strip of saturated colour) and read its
    colours, mapped linearly from +Nyquist at the red end to -Nyquist at the blue end; ColourBarError says why
    there is none."""
    if not nyquist_cm_s > 0:
        raise ColourBarError("Nyquist limit unknown: velocities cannot be read from the colour bar")
    h = bgr.shape[0]
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    fan = fan_mask(bgr) if fan is None else fan
    colour = colour_pixels(hsv) & ~cv2.dilate(fan.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    columns = np.flatnonzero(colour.sum(axis=0) >= BAR_MIN_HEIGHT * h)
    if columns.size == 0:
        raise ColourBarError("no colour bar found beside the image: velocities cannot be read")
    # The widest run of adjacent bar-like columns.
    run = max(runs(columns), key=len)
    if len(run) > BAR_MAX_WIDTH:
        raise ColourBarError(f"colour bar unreadable: a colour strip {len(run)} px wide is not a bar")
    x0, x1 = int(run[0]), int(run[-1]) + 1
    rows = np.flatnonzero(colour[:, x0:x1].any(axis=1))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    if y1 - y0 < BAR_MIN_ROWS:
        raise ColourBarError(f"colour bar unreadable: {y1 - y0} rows")
    inner = slice(x0 + 1, x1 - 1) if x1 - x0 > 2 else slice(x0, x1)  # compression blurs the bar's sides
    colours = bgr[y0:y1, inner].astype(np.float32).mean(axis=1)
    top, bottom = colours[: len(colours) // 4].mean(axis=0), colours[-len(colours) // 4 :].mean(axis=0)
    # Towards the probe is red (BGR index 2); some scanners draw the bar with blue on top.
    sign = 1.0 if top[2] - top[0] >= bottom[2] - bottom[0] else -1.0
    velocities = sign * np.linspace(nyquist_cm_s, -nyquist_cm_s, y1 - y0, dtype=np.float32)
    return ColourBar((x0, y0, x1, y1), colours, velocities)


def decode_velocity(bgr: np.ndarray, pixels: np.ndarray, bar: ColourBar) -> np.ndarray:
    """Velocity along the beam (cm/s) of each selected pixel: that of its nearest colour on the bar (aliased, as
    the scanner shows it). Each distinct colour is looked up once (a frame's flow repeats its colours)."""
    colours = bgr[pixels]
    if colours.size == 0:
        return np.zeros(0, np.float32)
    packed = colours.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32)  # one int per BGR colour
    distinct, where = np.unique(packed, return_inverse=True)
    unpacked = np.stack([distinct >> 16, (distinct >> 8) & 255, distinct & 255], axis=1).astype(np.float32)
    _, nearest = cKDTree(bar.colours).query(unpacked)
    return bar.velocities[nearest][where]
