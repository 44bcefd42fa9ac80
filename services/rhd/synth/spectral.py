"""Continuous-wave spectral Doppler as a scanner shows it: the cursor through the mitral valve (apical four
chamber) or the aortic valve (apical five chamber), the velocity spectrum scrolling as a sweep in step with the
ECG below it, flow towards the probe above the baseline and away below it.

What each valve shows, over the cardiac phase (0 = QRS, systole until SYSTOLE_END):
- mitral: diastolic inflow towards the probe (E wave, diastasis, A wave; with stenosis a high E and a slow decline,
  scaled so the mean of 4 v^2 over diastole is the stenosis's mean gradient), and in systole any mitral regurgitation
  away from it, at the jet's peak velocity for its share of systole;
- aortic: systolic ejection away from the probe, and in diastole any aortic regurgitation towards it, starting at its
  peak and decaying.

The region is calibrated as DICOM's Sequence of Ultrasound Regions gives it (baseline row, cm/s per pixel, seconds
per pixel), so a reader needs no text on the screen.
"""

from dataclasses import dataclass

import numpy as np

SWEEP_S = 2.5  # seconds across the screen, as the ECG
RANGE_CM_S = 900.0  # velocity span of the strip, toward + away
TOWARD_SHARE = {"mitral": 1 / 3, "aortic": 2 / 3}  # share of the span above the baseline, by valve
STRIP_TOP, STRIP_BOTTOM, MARGIN = 50.0, 186.0, 24.0  # on the 240-row reference frame; margins as the ECG's
IVRT = 0.05  # share of diastole before the mitral valve opens (isovolumic relaxation)
VALVES = ("mitral", "aortic")


@dataclass(frozen=True)
class SpectralRegion:
    """The strip, in pixels, and its calibration (DICOM: region location, ReferencePixelY0, PhysicalDeltaX/Y)."""

    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive
    baseline_y: float  # the row of zero velocity
    delta_x_s: float  # seconds per pixel, left to right
    delta_y_cm_s: float  # cm/s per pixel downwards (negative: velocity grows upwards)

    def as_dict(self) -> dict:
        return {
            "spatial_format": "spectral",
            "data_type": "cw_doppler",
            "x0": self.x0,
            "y0": self.y0,
            "x1": self.x1,
            "y1": self.y1,
            "reference_y": self.baseline_y,
            "delta_x": self.delta_x_s,
            "delta_y": self.delta_y_cm_s,
        }


def region(height: int, width: int, valve: str) -> SpectralRegion:
    s = height / 240.0
    x0, x1 = round(MARGIN * s), width - round(MARGIN * s)
    y0, y1 = round(STRIP_TOP * s), round(STRIP_BOTTOM * s)
    baseline = y0 + TOWARD_SHARE[valve] * (y1 - y0)
    return SpectralRegion(x0, y0, x1, y1, round(baseline, 2), SWEEP_S / (x1 - x0), -RANGE_CM_S / (y1 - y0))


def _within(phase: np.ndarray, start: float, span: float, duration: float, late: bool) -> np.ndarray:
    """Position 0..1 within a jet lasting `duration` of its phase (NaN outside it)."""
    tau = (phase - start) / span
    lo = 1.0 - duration if late else 0.0
    inside = (tau >= 0) & (tau < 1) & (tau >= lo) & (tau <= lo + duration)
    return np.where(inside, (tau - lo) / max(duration, 1e-6), np.nan)


def _inflow_shape(tau: np.ndarray, stenosis: bool) -> np.ndarray:
    """Mitral inflow over diastole (tau 0..1), peak 1: E and A waves; with stenosis a slow decline after E."""
    opening = np.clip((tau - IVRT) / 0.06, 0, 1)
    if stenosis:
        e = opening * np.clip(1.0 - 0.45 * (tau - IVRT - 0.06) / (1 - IVRT), 0.5, 1.0)
        a = 0.25 * np.exp(-(((tau - 0.88) / 0.05) ** 2))
        return np.clip(e + a, 0, 1.0) * (tau >= IVRT)
    e = np.exp(-(((tau - 0.17) / 0.08) ** 2)) * (tau >= IVRT)
    a = 0.65 * np.exp(-(((tau - 0.87) / 0.06) ** 2))
    return np.maximum(e, a)


def mean_gradient_mmhg(peak_cm_s: float, stenosis: bool) -> float:
    """The mean of 4 v^2 (v in m/s) over the diastolic inflow, from valve opening to the end of diastole."""
    tau = np.linspace(IVRT, 1.0, 2001)
    return float(np.mean(4.0 * (peak_cm_s / 100.0 * _inflow_shape(tau, stenosis)) ** 2))


def inflow_peak_for_gradient(gradient_mmhg: float) -> float:
    """The stenotic inflow's peak (cm/s) whose mean gradient is `gradient_mmhg`."""
    return 100.0 * float(np.sqrt(gradient_mmhg / mean_gradient_mmhg(100.0, stenosis=True)))


def velocities(
    phase: np.ndarray,
    valve: str,
    systole_end: float,
    inflow_cm_s: float,
    stenosis: bool,
    outflow_cm_s: float,
    mr: tuple[float, float, bool] | None,
    ar: tuple[float, float, bool] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Envelope velocities (cm/s, >= 0) towards and away from the probe at each cardiac phase. `mr` and `ar` are
    (peak cm/s, duration as a share of systole / diastole, late) or None."""
    p = np.mod(phase, 1.0)
    toward = np.zeros_like(p, dtype=np.float64)
    away = np.zeros_like(p, dtype=np.float64)
    systole = p < systole_end
    tau_d = (p - systole_end) / (1.0 - systole_end)
    if valve == "mitral":
        toward = np.where(systole, 0.0, inflow_cm_s * _inflow_shape(tau_d, stenosis))
        if mr is not None:
            within = _within(p, 0.0, systole_end, mr[1], mr[2])
            away = np.where(np.isnan(within), 0.0, mr[0] * np.sin(np.pi * np.nan_to_num(within)) ** 0.25)
    else:
        ejection = np.clip((p - 0.03) / (systole_end - 0.06), 0, 1)
        away = np.where(systole, outflow_cm_s * np.sin(np.pi * ejection) ** 1.2, 0.0)
        if ar is not None:
            within = _within(p, systole_end, 1.0 - systole_end, ar[1], ar[2])
            w = np.nan_to_num(within)
            shape = np.clip(w / 0.04, 0, 1) * (1.0 - 0.45 * w)
            toward = np.where(np.isnan(within), 0.0, ar[0] * shape)
    return toward, away


def draw_spectrum(
    image: np.ndarray,
    strip: SpectralRegion,
    visible: np.ndarray,
    toward: np.ndarray,
    away: np.ndarray,
    gain: float,
    rng: np.random.Generator,
) -> None:
    """Grey spectrum in the strip: each visible column filled from the baseline to its envelopes (brightest near
    the envelope, as the modal velocity of a CW signal), speckled, over a faint noise floor; the baseline drawn."""
    rows = np.arange(strip.y0, strip.y1, dtype=np.float64)[:, None]
    v = (rows - strip.baseline_y) * strip.delta_y_cm_s  # velocity of each row, + toward
    up = np.clip(v / np.maximum(toward[None, :], 1e-6), 0, None)
    down = np.clip(-v / np.maximum(away[None, :], 1e-6), 0, None)
    # Inside the envelope: 0 < share <= 1; a soft edge of a pixel or two beyond it.
    soft = 1.5 * abs(strip.delta_y_cm_s)
    edge_up = np.clip(1.0 - (v - toward[None, :]) / soft, 0, 1) * (v > 0) * (toward[None, :] > 0)
    edge_down = np.clip(1.0 + (v + away[None, :]) / soft, 0, 1) * (v < 0) * (away[None, :] > 0)
    share = np.where(v > 0, np.minimum(up, 1.0), np.minimum(down, 1.0))
    strength = np.where(v > 0, edge_up, edge_down) * (60.0 + 150.0 * share**2)
    speckle = rng.rayleigh(np.sqrt(2 / np.pi), strength.shape)
    floor = rng.uniform(0, 22, strength.shape)
    grey = np.clip(gain * strength * speckle + floor, 0, 255)
    grey[:, ~visible] = 0
    patch = image[strip.y0 : strip.y1, strip.x0 : strip.x1]
    patch[:] = grey.astype(np.uint8)[:, :, None]
    baseline = int(round(strip.baseline_y))
    patch[baseline - strip.y0, visible] = 150
    # Velocity ticks every metre per second on the right edge, as scanners mark the scale.
    per_m_s = 100.0 / abs(strip.delta_y_cm_s)
    for k in range(-9, 10):
        y = int(round(strip.baseline_y - k * per_m_s))
        if strip.y0 <= y < strip.y1:
            image[y, strip.x1 + 1 : strip.x1 + 4] = 200
