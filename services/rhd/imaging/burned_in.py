"""Burned-in text out of echo frames (DICOM PS3.15's Clean Pixel Data), keeping what the analysis reads.

Scanners burn the patient's name, ID and dates, the hospital and the operator into every frame, outside the image.
The rule is a keep-list, like the policy's: the ultrasound image (the fan, or a calibrated spectral region) stays
whole; outside it, a mark stays only if it lies wholly inside a zone where the analysis's own marks are (the colour
bar with its scale labels, the depth scale along the fan's edge) and is no larger than those marks are, or if it is
the ECG trace (its colour, in the bottom band). Every other pixel outside the image is set to black, except in a band
RIM_PX wide around it where the codec rings (left as it is, so the fan reads the same after cleaning). A text line
that reaches into a zone is removed whole, since a mark is judged by its whole extent.

The layout is found once per video (the fan and the colour bar do not move): the fan is the union of every frame's,
the marks are those of any frame, and the pixels to remove are then the same in every frame.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from rhd.imaging.colour import ColourBarError, find_colour_bar
from rhd.imaging.ecg import BAND_FRACTION, HUE_TOLERANCE
from rhd.imaging.sector import NON_BLACK_MIN, SATURATION_MIN, VALUE_MIN, fan_of_solid, solid_of_value
from rhd.v1 import rhd_pb2 as pb

SAMPLED_FRAMES = 3  # frames the colour bar is looked for in, evenly spread from the first to the last
DEPTH_BAND_PX = 28  # at 240 rows: how far outside the fan's edge the depth scale's dots and numbers reach
DEPTH_MARK_MAX = (22, 10)  # at 240 rows: the largest depth mark (w, h): a dot with a number of one or two digits
BAR_LABEL_PX = 24  # at 240 rows: how far left of the colour bar its scale labels reach
BAR_MARGIN_PX = 10  # at 240 rows: above and below the bar, where its end labels sit
MARK_JOIN = (9, 3)  # at 240 rows: glyphs closer than this (w, h) are one mark, so a word or a line is judged whole
SMALL_DISC_PX = 5  # grown by a dilation up to this radius, by a distance transform beyond
RIM_PX = 3  # the codec rings this far outside the fan's edge; too narrow to hold a readable glyph
KEPT_SPATIAL_FORMATS = ("spectral", "m_mode", "waveform")  # calibrated regions kept whole (a 2D region's rectangle
# also holds the corners outside the fan, where text is burned in, so for it the fan decides)


@dataclass(frozen=True)
class ScreenLayout:
    """Where a video's frames hold what the analysis reads."""

    image: np.ndarray  # bool H x W: the fan and the kept calibrated regions, left untouched
    rim: np.ndarray  # bool H x W: a band RIM_PX wide around the image, left untouched (the codec's ringing at its edge)
    zones: np.ndarray  # bool H x W: where the colour bar, its labels and the depth scale lie
    depth: np.ndarray  # bool H x W: the depth scale's band along the fan, where only small marks are kept
    ecg_top: int  # the first row of the ECG band
    removed: np.ndarray  # bool H x W: the pixels set to black in every frame (marks not kept, with their rims)

    @cached_property
    def kept(self) -> np.ndarray:
        """uint8 H x W: 255 where a frame's pixel stays, 0 where it goes black."""
        return np.where(self.removed, np.uint8(0), np.uint8(255))

    @cached_property
    def kept_bgr(self) -> np.ndarray:
        """kept in each of a frame's three channels (H x W x 3), for a mask without allocation."""
        return cv2.merge([self.kept] * 3)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]


def _px(value: float, height: int) -> int:
    return max(1, round(value * height / 240.0))


def screen_layout(frames: Sequence[np.ndarray], regions: Sequence[pb.UltrasoundRegion] = ()) -> ScreenLayout:
    """The layout of a video's frames (all one size): fan, kept regions, colour bar and depth zones, and the marks
    to remove from every frame."""
    if not len(frames):
        raise ValueError("no frames")
    h, w = frames[0].shape[:2]
    if any(frame.shape[:2] != (h, w) for frame in frames):
        raise ValueError("the frames of a video differ in size")
    # The fan of every frame's solid regions at once: its far edge moves with the speckle, and a shadow can cut a part
    # of it off in some frames only. No pixel that is image in any frame is cleaned in another.
    top = int(h * (1 - BAND_FRACTION))
    solid = np.zeros((h, w), np.uint8)
    values, bands = [], []
    for frame in frames:
        blue, green, red = cv2.split(frame)
        value = cv2.max(cv2.max(blue, green), red)  # HSV's V, at 0.1 ms against 0.24
        solid |= solid_of_value(value)
        values.append(value)
        bands.append(cv2.cvtColor(frame[top:], cv2.COLOR_BGR2HSV))
    fan = fan_of_solid(solid)
    # A calibrated trace (spectral Doppler, M-mode) is the image where the scanner says so; else the fan is.
    kept = [r for r in regions if r.spatial_format in KEPT_SPATIAL_FORMATS and r.data_type != "ecg"]
    image = np.zeros((h, w), bool) if kept else fan.copy()
    for region in kept:
        image[max(0, region.y0) : region.y1, max(0, region.x0) : region.x1] = True
    zones = np.zeros((h, w), bool)
    for i in np.unique(np.linspace(0, len(frames) - 1, SAMPLED_FRAMES).round().astype(int)):
        try:
            bar = find_colour_bar(frames[i], 1.0, fan)
        except ColourBarError:
            continue
        x0, y0, x1, y1 = bar.box
        zones[
            max(0, y0 - _px(BAR_MARGIN_PX, h)) : y1 + _px(BAR_MARGIN_PX, h),
            max(0, x0 - _px(BAR_LABEL_PX, h)) : x1 + _px(BAR_MARGIN_PX, h),
        ] = True
        break
    depth = _grown(fan, _px(DEPTH_BAND_PX, h)) & ~fan
    rim = _grown(image, _px(RIM_PX, h)) & ~image
    zones |= depth
    # The marks of the whole video at once (text stands still; a clock's digits change in place), and the ECG trace
    # wherever its sweep passes.
    outside = ~(image | rim)
    marks, trace = np.zeros((h, w), bool), np.zeros((h, w), bool)
    for value, band in zip(values, bands, strict=True):
        marks |= value > NON_BLACK_MIN
        trace[top:] |= _ecg_trace(band, outside[top:])
    marks &= outside & ~trace
    removed = outside & ~_kept_marks(marks, zones, depth) & ~trace
    return ScreenLayout(image=image, rim=rim, zones=zones, depth=depth, ecg_top=top, removed=removed)


def _kept_marks(marks: np.ndarray, zones: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Where marks are kept, with the black around them: a piece (marks joined into a word or a line) only if none of
    its marks lies outside the zones, and in the depth band only if it is as small as a depth mark."""
    h = marks.shape[0]
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (_px(MARK_JOIN[0], h), _px(MARK_JOIN[1], h)))
    joined = cv2.dilate(marks.astype(np.uint8), kernel)
    count, pieces, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    keep = np.ones(count, bool)
    if count > 1:
        # Every piece holds marks: it is their dilation. A piece's size is its extent less the joining kernel's.
        keep[np.unique(pieces[marks & ~zones])] = False
        in_depth = np.ones(count, bool)
        in_depth[np.unique(pieces[marks & ~depth])] = False
        width = stats[:, cv2.CC_STAT_WIDTH] - (kernel.shape[1] - 1)
        height = stats[:, cv2.CC_STAT_HEIGHT] - (kernel.shape[0] - 1)
        large = (width > _px(DEPTH_MARK_MAX[0], h)) | (height > _px(DEPTH_MARK_MAX[1], h))
        keep &= ~(in_depth & large)
    # A removed mark goes with its anti-aliased rim (the piece's extent), and what is no mark goes black too: the
    # codec leaves faint ghosts of text (grey level 8 or less) that OCR reads once it stretches the contrast.
    keep[0] = False
    return keep[pieces]


def _grown(mask: np.ndarray, px: int) -> np.ndarray:
    """The mask and every pixel within px of it. A small disc dilates; a wide one (the depth band's 57 px disc
    cost 3.5 ms a video) is a threshold on the distance to the mask (0.3 ms)."""
    if px <= SMALL_DISC_PX:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
        return cv2.dilate(mask.astype(np.uint8), disc).astype(bool)
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= px


def _ecg_trace(band_hsv: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """The ECG trace's pixels in the bottom band (HSV rows of the band): saturated colour of the band's dominant hue
    (the median), outside the image. Run on every frame, so written for speed: an OpenCV range check for
    sector.colour_pixels, and the hue looked at only where there is colour."""
    band = cv2.inRange(band_hsv, (0, SATURATION_MIN, VALUE_MIN), (255, 255, 255)).astype(bool) & outside
    hues = band_hsv[..., 0][band].astype(np.int16)
    if not len(hues):
        return band
    dominant = _median(hues)
    near = np.abs(((hues - dominant + 90) % 180) - 90) <= HUE_TOLERANCE  # OpenCV hue runs 0-179, circular
    band[band] = near
    return band


def _median(values: np.ndarray) -> int:
    """int(np.median(values)) of non-negative integers, by partition (np.median costs 5 times as much here)."""
    n = len(values)
    middle = np.partition(values, [(n - 1) // 2, n // 2])
    return (int(middle[(n - 1) // 2]) + int(middle[n // 2])) // 2


def clean_frame(bgr: np.ndarray, layout: ScreenLayout, in_place: bool = False) -> np.ndarray:
    """The frame with every mark outside the image removed except the analysis's own (a new array, or the frame
    itself cleaned when in_place: no allocation, a third of the cost)."""
    if bgr.shape[:2] != layout.shape or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"frame {bgr.shape} does not match its video's layout {layout.shape}")
    if in_place and bgr.flags.writeable and bgr.flags.c_contiguous:
        return cv2.bitwise_and(bgr, layout.kept_bgr, dst=bgr)
    return cv2.bitwise_and(bgr, bgr, mask=layout.kept)  # 0.03 ms; numpy's masked assignment took 0.8


def clean_frames(
    frames: Sequence[np.ndarray], regions: Sequence[pb.UltrasoundRegion] = (), in_place: bool = False
) -> list[np.ndarray]:
    """A video's frames with their burned-in text removed (layout found once for the video); in_place cleans the
    frames given (a caller that has no further use for the originals)."""
    layout = screen_layout(frames, regions)
    return [clean_frame(frame, layout, in_place) for frame in frames]
