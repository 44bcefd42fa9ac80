"""Reading a continuous-wave spectral Doppler trace: per column of the calibrated strip, how fast the blood moves
towards the probe (above the baseline) and away from it (below), as the outer edge of the spectrum (the envelope a
cardiologist traces); from them the peak velocities, the mean gradient of the flow towards the probe (4 v^2, the
simplified Bernoulli equation, averaged over the traced columns) and, when the frame's ECG gives each column its
cardiac phase, for what share of systole and of diastole each flow lasts.

The strip's place and calibration come with the video (DICOM's Sequence of Ultrasound Regions: baseline row,
cm/s and seconds per pixel), not from text on the screen.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from rhd.imaging.ecg import SYSTOLE_END
from rhd.v1 import rhd_pb2 as pb

FEATURE_SET = "spectral-v1"
FEATURE_NAMES: tuple[str, ...] = (
    "toward_peak_cm_s",  # fastest flow towards the probe on screen
    "away_peak_cm_s",
    "toward_mean_gradient_mmhg",  # mean of 4 v^2 over the diastolic columns (all columns with flow without an ECG)
    "toward_fraction",  # share of the visible columns with flow towards the probe
    "away_fraction",
    "systolic_away_cover",  # share of the systolic columns with flow away from the probe (-1: phase unknown)
    "diastolic_toward_cover",  # share of the diastolic columns with flow towards it (-1: phase unknown)
    "phase_known",  # 1 when the ECG placed every column in the cycle
)
SIGNAL_GREY = 30.0  # the spectrum, averaged over a few pixels, is brighter than this; the noise floor is not
FLOW_CM_S = 40.0  # a column shows flow when its envelope reaches this far from the baseline
BASELINE_ROWS = 2  # rows either side of the baseline: its line and the wall filter's clutter
DARK_GREY = 3.0  # a column darker than this on average is the sweep's erase gap: not seen
MIN_VISIBLE_FRACTION = 0.5
CLOSE_ROWS = 5  # holes in the speckled spectrum up to this many rows are bridged
EDGE_PX = 1.5  # how far past the envelope the smoothing carries the signal, pixels (measured on generated traces)
OPENING_SHARE = 0.05  # of diastole before the mitral valve opens: not part of the traced inflow


class SpectralError(ValueError):
    """A frame whose trace cannot be read, with the reason."""


@dataclass(frozen=True)
class Envelope:
    toward_cm_s: np.ndarray  # per column of the strip, >= 0
    away_cm_s: np.ndarray  # per column, >= 0
    visible: np.ndarray  # per column: not the sweep's gap


def spectral_region(regions: Iterable[pb.UltrasoundRegion]) -> pb.UltrasoundRegion | None:
    """The frame's spectral Doppler region, if its video has one."""
    return next((r for r in regions if r.spatial_format == "spectral"), None)


def _checked(bgr: np.ndarray, region: pb.UltrasoundRegion) -> tuple[np.ndarray, float]:
    h, w = bgr.shape[:2]
    if not (0 <= region.x0 < region.x1 <= w and 0 <= region.y0 < region.y1 <= h):
        raise SpectralError(f"spectral region {region.x0},{region.y0}-{region.x1},{region.y1} outside a {w}x{h} frame")
    if not (region.y0 <= region.reference_y < region.y1) or not np.isfinite(region.delta_y) or region.delta_y == 0:
        raise SpectralError(
            f"spectral region without a usable calibration (baseline {region.reference_y}, "
            f"{region.delta_y} cm/s per pixel)"
        )
    grey = cv2.cvtColor(bgr[region.y0 : region.y1, region.x0 : region.x1], cv2.COLOR_BGR2GRAY).astype(np.float32)
    return grey, region.reference_y - region.y0


def _reach(outward: np.ndarray) -> np.ndarray:
    """Per column of rows ordered outwards from the baseline: how many rows the signal runs unbroken from it."""
    if outward.shape[0] == 0:
        return np.zeros(outward.shape[1])
    first_gap = np.argmin(outward, axis=0).astype(np.float64)
    return np.where(outward.all(axis=0), outward.shape[0], first_gap)


def envelope(bgr: np.ndarray, region: pb.UltrasoundRegion) -> Envelope:
    """Per column, how far from the baseline the spectrum reaches, either side: the signal (smoothed over a few
    pixels, holes of a few rows closed) followed outwards from the baseline until it ends, so a speck of noise
    beyond the envelope does not count."""
    grey, baseline = _checked(bgr, region)
    visible = grey.mean(axis=0) > DARK_GREY
    if visible.mean() < MIN_VISIBLE_FRACTION:
        raise SpectralError(f"the spectral strip is dark over {1 - visible.mean():.0%} of its width")
    signal = (cv2.blur(grey, (3, 3)) >= SIGNAL_GREY).astype(np.uint8)
    signal = cv2.morphologyEx(signal, cv2.MORPH_CLOSE, np.ones((CLOSE_ROWS, 1), np.uint8)).astype(bool)
    b = int(round(baseline))
    cm_per_px = abs(region.delta_y)
    up = _reach(signal[: max(0, b - BASELINE_ROWS)][::-1])
    down = _reach(signal[b + BASELINE_ROWS + 1 :])
    # The outermost signal row's distance from the baseline, less the smoothing's reach beyond the true edge.
    toward = np.where(up > 0, (up + BASELINE_ROWS - EDGE_PX) * cm_per_px, 0.0)
    away = np.where(down > 0, (down + BASELINE_ROWS - EDGE_PX) * cm_per_px, 0.0)
    toward[~visible] = 0.0
    away[~visible] = 0.0
    return Envelope(np.maximum(toward, 0.0), np.maximum(away, 0.0), visible)


def column_phases(region: pb.UltrasoundRegion, ecg: pb.EcgReading | None) -> np.ndarray | None:
    """Each strip column's cardiac phase from the frame's ECG reading, the trace sweeping in step with the ECG: time
    behind the cursor is distance to its left, unwrapped across the screen's edge. None without a reading."""
    if ecg is None or not ecg.rr_px > 0 or not region.x0 <= ecg.cursor_x < region.x1:
        return None
    xs = np.arange(region.x0, region.x1, dtype=np.float64)
    width = region.x1 - region.x0
    behind = np.where(xs < ecg.cursor_x, ecg.cursor_x - xs, ecg.cursor_x - xs + width)
    return np.mod(ecg.phase - behind / ecg.rr_px, 1.0)


def _cover(flow: np.ndarray, where: np.ndarray) -> float:
    return float(flow[where].mean()) if where.any() else 0.0


def spectral_features(bgr: np.ndarray, region: pb.UltrasoundRegion, ecg: pb.EcgReading | None) -> list[float]:
    """The frame's trace in FEATURE_NAMES order."""
    env = envelope(bgr, region)
    seen = env.visible
    toward, away = env.toward_cm_s, env.away_cm_s
    toward_flow, away_flow = (toward >= FLOW_CM_S) & seen, (away >= FLOW_CM_S) & seen
    phases = column_phases(region, ecg)
    if phases is None:
        traced = toward_flow
        systolic_cover = diastolic_cover = -1.0
    else:
        systole = (phases < SYSTOLE_END) & seen
        diastole = ~(phases < SYSTOLE_END) & seen
        # The inflow is traced from the valve's opening to the end of diastole, diastasis included.
        traced = diastole & (phases >= SYSTOLE_END + OPENING_SHARE * (1 - SYSTOLE_END))
        systolic_cover, diastolic_cover = _cover(away_flow, systole), _cover(toward_flow, diastole)
    gradient = float(np.mean(4.0 * (toward[traced] / 100.0) ** 2)) if traced.any() else 0.0
    values = {
        "toward_peak_cm_s": float(toward[seen].max(initial=0.0)),
        "away_peak_cm_s": float(away[seen].max(initial=0.0)),
        "toward_mean_gradient_mmhg": gradient,
        "toward_fraction": _cover(toward_flow, seen),
        "away_fraction": _cover(away_flow, seen),
        "systolic_away_cover": systolic_cover,
        "diastolic_toward_cover": diastolic_cover,
        "phase_known": 0.0 if phases is None else 1.0,
    }
    return [values[name] for name in FEATURE_NAMES]
