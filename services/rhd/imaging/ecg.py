"""The cardiac phase of a frame, read from the ECG trace the scanner burns in along the bottom of the image.

Scanners draw the ECG as a sweep: a cursor moves left to right, overwriting the oldest trace, with a short gap at
the cursor (now). Left of the cursor is this sweep's trace, right of it the previous sweep's, so distance behind
the cursor is time, unwrapped across the screen's edges. The most recent R wave (the QRS's tall spike, the onset
of systole) and the R-R spacing of the beats on screen give where the frame lies in its cycle: phase 0 at the R
wave, systole until the end of the T wave. No trace (handheld machines often record none): None, and the caller
decides (estimate from the images, or refer).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from rhd.imaging.colour import runs
from rhd.imaging.sector import colour_pixels, fan_mask
from rhd.v1 import rhd_pb2 as pb

BAND_FRACTION = 0.2  # the ECG lies in the bottom fifth of the image
MIN_WIDTH_FRACTION = 0.5  # a trace spans at least half the image width
HUE_TOLERANCE = 12  # OpenCV hue units around the trace's own hue
R_FRACTION = 0.6  # an R wave rises above this share of the trace's largest deflection
MIN_BEATS = 2  # R waves needed to know the R-R spacing
MIN_GAP_PX = 3  # the sweep's gap at the cursor is at least this wide; narrower ones are dropouts of the line
HEART_RATE_BPM = (30.0, 240.0)  # what a heart can beat at: a faster advance between frames is a misreading
INLIER_PHASE = 0.05  # a frame's reading within this share of the cycle of its video's fit agrees with it
R_PEAK_PHASE = 0.02  # where in the cycle the R wave's peak lies (0 = the QRS onset, as the phase is counted)
SYSTOLE_END = 0.42  # the end of the T wave, as a share of the cycle: ventricular systole before it


@dataclass(frozen=True)
class EcgReading:
    phase: float  # 0..1 in the cardiac cycle, 0 at the QRS
    systole: bool
    rr_px: float  # R-R spacing on screen (px): with the sweep speed, the heart rate
    cursor_x: int  # where the sweep is now
    beats: int  # R waves seen on screen


@dataclass(frozen=True)
class _Trace:
    rows: np.ndarray  # per column of the trace's extent: its topmost row, NaN where it shows none
    occluded: np.ndarray  # per column: colour flow of another hue lies there, so the trace cannot be seen
    x0: int  # the extent's first column in the image


def reading_message(reading: EcgReading) -> pb.EcgReading:
    return pb.EcgReading(
        phase=reading.phase,
        systole=reading.systole,
        rr_px=reading.rr_px,
        beats=reading.beats,
        cursor_x=reading.cursor_x,
    )


def _trace(bgr: np.ndarray, hsv: np.ndarray | None, fan: np.ndarray | None) -> _Trace | None:
    """The ECG trace in the bottom band of the frame: colour of one hue spanning most of the width."""
    h, w = bgr.shape[:2]
    top = int(h * (1 - BAND_FRACTION))
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV) if hsv is None else hsv
    fan = fan_mask(bgr) if fan is None else fan
    # Only the band and the row above it are looked at: the trace lies in the band, and colour that crosses into it
    # from above (outside the fan) is the colour bar or text, not the trace.
    colour = colour_pixels(hsv[top - 1 :])
    outside = ~cv2.dilate(fan[top - 2 :].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)[1:]
    _, pieces, stats, _ = cv2.connectedComponentsWithStats((colour & outside).astype(np.uint8), connectivity=8)
    reaching_up = stats[:, cv2.CC_STAT_TOP] == 0
    reaching_up[0] = False
    # The trace may cross the bottom of the fan (grey there, so it still shows).
    band = colour[1:] & ~reaching_up[pieces[1:]]
    outside = outside[1:]
    hsv = hsv[top:]
    # Its hue is that of the colour outside the fan (colour flow inside it has others).
    hue = hsv[..., 0][band & outside].astype(np.int16)
    if hue.size < MIN_WIDTH_FRACTION * w:
        return None
    near = np.abs(((hsv[..., 0].astype(np.int16) - int(np.median(hue)) + 90) % 180) - 90) <= HUE_TOLERANCE
    # Colour flow of other hues in the band hides the trace in its columns (mosaic of the trace's hue with it).
    occluded = (band & ~near & ~outside).any(axis=0)
    trace = band & near
    trace[:, occluded] = False
    # The trace runs along its baseline: pieces of its hue elsewhere (a fleck of mosaic) are not the trace.
    if not trace.any():
        return None
    baseline = int(np.median(trace.shape[0] - 1 - np.argmax(trace[::-1], axis=0)[trace.any(axis=0)]))
    count, pieces, stats, _ = cv2.connectedComponentsWithStats(trace.astype(np.uint8), connectivity=8)
    top_row, bottom_row = stats[:, cv2.CC_STAT_TOP], stats[:, cv2.CC_STAT_TOP] + stats[:, cv2.CC_STAT_HEIGHT]
    on_baseline = (top_row <= baseline + 1) & (bottom_row >= baseline - 1) & (stats[:, cv2.CC_STAT_WIDTH] >= 3)
    on_baseline[0] = False
    trace = on_baseline[pieces]
    present = np.flatnonzero(trace.any(axis=0) | occluded)
    if present.size < MIN_WIDTH_FRACTION * w or present[-1] - present[0] < MIN_WIDTH_FRACTION * w:
        return None
    x0, x1 = int(present[0]), int(present[-1]) + 1
    shown = trace[:, x0:x1]
    rows = np.where(shown.any(axis=0), np.argmax(shown, axis=0).astype(np.float64), np.nan)
    return _Trace(rows, occluded[x0:x1], x0)


def _peaks(height: np.ndarray) -> list[float]:
    """Columns of the R waves, to a fraction of a pixel: the centroid of each run above R_FRACTION of the largest
    deflection, weighted by how far above it rises (a spike is one or two pixels wide)."""
    floor = R_FRACTION * np.nanmax(height)
    lifted = np.nan_to_num(height, nan=0.0) - floor
    return [float(np.average(run, weights=lifted[run] + 0.5)) for run in runs(np.flatnonzero(lifted >= 0))]


def read_ecg(bgr: np.ndarray, hsv: np.ndarray | None = None, fan: np.ndarray | None = None) -> EcgReading | None:
    """The frame's cardiac phase from its burned-in ECG sweep, or None when the frame shows no readable trace.
    `hsv` and `fan` (its ultrasound sector), when the caller has them already, save computing them again."""
    trace = _trace(bgr, hsv, fan)
    if trace is None:
        return None
    height = np.nanmedian(trace.rows) - trace.rows  # up is positive
    if not np.nanmax(height) > 0:
        return None
    # The cursor: the widest gap in the trace where nothing hides it.
    gaps = runs(np.flatnonzero(np.isnan(trace.rows) & ~trace.occluded))
    if not gaps:
        return None  # the cursor is at an end of the trace: this frame alone cannot place it
    gap = max(gaps, key=len)
    if (
        len(gap) < MIN_GAP_PX
        or trace.occluded[max(0, gap[0] - 1)]
        or trace.occluded[min(len(gap) + gap[0], len(trace.rows) - 1)]
    ):
        return None  # too narrow to be the cursor, or it may run on under the colour flow
    cursor = (gap[0] + gap[-1]) / 2
    width = len(trace.rows)
    # Time behind now, in columns: this sweep left of the cursor, the previous one right of it.
    peaks = _peaks(height)
    behind = sorted((cursor - x) if x < cursor else (cursor - x + width) for x in peaks)
    if len(behind) < MIN_BEATS:
        return None
    spacing = np.diff(behind)
    # Beats hidden by the cursor or by colour flow leave spacings of two or three R-R; a wave split by the gap's edge
    # leaves a tiny one. The R-R spacing: the shortest real one, refined over all as whole multiples of it.
    real = spacing[spacing >= 0.4 * spacing.max()]
    multiples = np.maximum(1, np.round(real / real.min()))
    rr_px = float(real.sum() / multiples.sum())
    phase = float((R_PEAK_PHASE + behind[0] / rr_px) % 1.0)
    return EcgReading(phase, phase < SYSTOLE_END, rr_px, int(round(trace.x0 + cursor)), len(behind))


@dataclass(frozen=True)
class VideoPhases:
    phases: np.ndarray  # per frame, 0..1, 0 at the QRS
    systole: np.ndarray  # per frame
    heart_rate_bpm: float
    frames_read: int  # frames whose own reading agreed with the fit


def _wrap(x: np.ndarray) -> np.ndarray:
    """Phase differences to -0.5..0.5."""
    return (np.asarray(x) + 0.5) % 1.0 - 0.5


class Phased(Protocol):
    """A reading as read (EcgReading) or as it travelled (pb.EcgReading): its phase is what the fit needs."""

    @property
    def phase(self) -> float: ...


def video_phases(readings: Sequence[Phased | None], fps: float) -> VideoPhases | None:
    """Every frame's phase from its video's readings: the heart beats at one rate over a clip of seconds, so the
    phase advances linearly with time. The rate comes from the median advance between consecutive frames read, the
    offset from the readings that agree with it; frames not read, or misread (a wave hidden by the cursor), take
    the fitted phase. None when fewer than a third of the frames (and fewer than 3) could be read."""
    read = np.array([k for k, r in enumerate(readings) if r is not None])
    if not fps > 0 or read.size < max(3, len(readings) / 3):
        return None
    phase = np.array([readings[k].phase for k in read])  # type: ignore[union-attr]
    times = read / fps
    consecutive = np.diff(read) == 1
    if not consecutive.any():
        return None
    steps = np.mod(np.diff(phase)[consecutive], 1.0)  # advance per frame
    steps = steps[(steps >= HEART_RATE_BPM[0] / 60 / fps) & (steps <= HEART_RATE_BPM[1] / 60 / fps)]
    if steps.size == 0:
        return None
    step = np.median(steps)
    rate = step * fps  # cycles per second
    # The offset most readings agree with (a run of misread frames must not pull it).
    implied = phase - rate * times
    agreeing = (np.abs(_wrap(implied[:, None] - implied[None, :])) <= INLIER_PHASE).sum(axis=1)
    offset = float(implied[int(np.argmax(agreeing))])
    inliers = np.abs(_wrap(phase - (offset + rate * times))) <= INLIER_PHASE
    if inliers.sum() >= 3:  # refit on the frames that agree: unwrapped phase against time, least squares
        unwrapped = offset + rate * times[inliers] + _wrap(phase[inliers] - (offset + rate * times[inliers]))
        rate, offset = np.polyfit(times[inliers], unwrapped, 1)
    all_times = np.arange(len(readings)) / fps
    fitted = np.mod(offset + rate * all_times, 1.0)
    return VideoPhases(fitted, fitted < SYSTOLE_END, float(rate * 60.0), int(inliers.sum()))


def cycle_message(video_id: str, readings: Sequence[Phased | None], fps: float) -> pb.CardiacCycle:
    """A video's cardiac cycle as it travels with the study: fitted, or why not."""
    fit = video_phases(readings, fps)
    if fit is None:
        read = sum(r is not None for r in readings)
        why = "frame rate unknown" if not fps > 0 else f"a readable ECG on {read} of {len(readings)} frames"
        return pb.CardiacCycle(video_id=video_id, known=False, reason=f"no cardiac phase: {why}")
    return pb.CardiacCycle(
        video_id=video_id,
        known=True,
        heart_rate_bpm=fit.heart_rate_bpm,
        phases=fit.phases.tolist(),
        frames_read=fit.frames_read,
    )
