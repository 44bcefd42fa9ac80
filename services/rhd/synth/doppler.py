"""Colour Doppler as a scanner shows it: the velocity colour map (BART: red towards the probe, blue away),
aliasing beyond the Nyquist limit, the green variance of turbulent flow, and the colour bar drawn beside
the image with the Nyquist limit written at both ends."""

from functools import lru_cache

import cv2
import numpy as np

LUT_SIZE = 512  # colour map entries from -Nyquist (index 0) to +Nyquist (index LUT_SIZE - 1)
GREEN_KNEE = 0.55  # fraction of Nyquist above which the map brightens towards yellow / cyan


def _ramp(t: np.ndarray) -> np.ndarray:
    """Main channel brightness for |v| / Nyquist = t in [0, 1]: dark at rest, saturated at Nyquist."""
    return 40.0 + 215.0 * np.power(t, 0.75)


def _knee(t: np.ndarray, top: float) -> np.ndarray:
    return top * np.clip((t - GREEN_KNEE) / (1 - GREEN_KNEE), 0, 1)


@lru_cache(maxsize=1)
def colour_map() -> np.ndarray:
    """LUT_SIZE x 3 uint8 BGR, monotone in each half so a laminar colour decodes to one velocity."""
    v = np.linspace(-1.0, 1.0, LUT_SIZE)
    t = np.abs(v)
    lut = np.zeros((LUT_SIZE, 3), np.float64)
    toward, away = v > 0, v < 0
    lut[toward, 2] = _ramp(t[toward])  # red ...
    lut[toward, 1] = _knee(t[toward], 150.0)  # ... to orange near +Nyquist
    lut[away, 0] = _ramp(t[away])  # blue ...
    lut[away, 1] = _knee(t[away], 170.0)  # ... to light blue near -Nyquist
    out = np.round(lut).astype(np.uint8)
    out.flags.writeable = False
    return out


def wrap(v: np.ndarray, nyquist: float) -> np.ndarray:
    """The velocity a pulsed Doppler estimator reports: true velocity folded into [-Nyquist, Nyquist)."""
    return (v + nyquist) % (2 * nyquist) - nyquist


def colourise(v_cm_s: np.ndarray, nyquist: float) -> np.ndarray:
    """BGR colours of velocities along the beam (cm/s, positive towards the probe), aliased as measured."""
    fraction = wrap(np.asarray(v_cm_s, np.float64), nyquist) / nyquist
    index = np.clip(np.round((fraction + 1.0) / 2.0 * (LUT_SIZE - 1)), 0, LUT_SIZE - 1).astype(np.intp)
    return colour_map()[index]


def add_variance(colours: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """The velocity-variance map: turbulence (0..1 per pixel) adds green, so turbulent red turns yellow,
    turbulent blue cyan and turbulent slow flow green: the mosaic of a regurgitant jet."""
    out = colours.astype(np.int16)
    out[..., 1] += np.round(230 * np.clip(variance, 0, 1)).astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def bar_layout(height: int, width: int) -> tuple[int, int, int, int]:
    """Rows [top, bottom) and columns [x0, x1) of the colour bar, right of the fan."""
    s = height / 240.0
    return int(0.2 * height), int(0.58 * height), width - round(13 * s), width - round(5 * s)


def draw_colour_bar(image: np.ndarray, nyquist_cm_s: float) -> list[dict]:
    """Paint the bar (+Nyquist at the top row, -Nyquist at the bottom) and the Nyquist limit in cm/s written
    beside both ends. Returns the drawn elements with their boxes [x0, y0, x1, y1)."""
    h, w = image.shape[:2]
    top, bottom, x0, x1 = bar_layout(h, w)
    v = np.linspace(1.0, -1.0, bottom - top) * nyquist_cm_s
    image[top:bottom, x0:x1] = colourise(v, nyquist_cm_s)[:, None, :]
    elements = [{"kind": "colour_bar", "text": "", "box": [x0, top, x1, bottom]}]
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.3 * h / 240.0
    for text, baseline in ((f"{nyquist_cm_s:.0f}", top + round(7 * h / 240)), (f"-{nyquist_cm_s:.0f}", bottom)):
        (tw, th), descent = cv2.getTextSize(text, font, scale, 1)
        org = (x0 - 3 - tw, baseline)
        cv2.putText(image, text, org, font, scale, (255, 255, 255), 1, cv2.LINE_AA)
        elements.append(
            {
                "kind": "nyquist",
                "text": text,
                "box": [org[0], baseline - th - 1, org[0] + tw + 1, baseline + descent + 1],
            }
        )
    return elements
