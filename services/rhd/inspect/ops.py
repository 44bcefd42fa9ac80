"""Doppler vs anatomical by colour inspection, inside the ultrasound fan only: a frame is Doppler when a few
pixels of its fan are colour (a tiny jet is still Doppler); colour outside the fan (colour bar, ECG, text)
does not count. A frame of a spectral Doppler video (its calibration names a spectral region) is spectral: a trace,
not an image of the heart. The frame's cardiac phase is read from its ECG sweep on the way."""

from dataclasses import dataclass

import cv2
import numpy as np

from rhd.imaging.ecg import EcgReading, read_ecg
from rhd.imaging.sector import checked_frame, colour_pixels, fan_with_flow

DOPPLER_PIXELS_MIN = 12  # colour pixels inside the fan that make a frame colour Doppler
FAN_MIN_FRACTION = 0.05  # a fan smaller than this share of the frame: no ultrasound image
NOT_ECHO_FRACTION = 0.6  # colour over more of the fan than this: not an echo frame at all

DOPPLER, ANATOMICAL, SPECTRAL, NO_IMAGE, NOT_ECHO = "doppler", "anatomical", "spectral", "no_image", "not_echo"


@dataclass(frozen=True)
class Inspection:
    kind: str  # DOPPLER, ANATOMICAL, SPECTRAL, NO_IMAGE or NOT_ECHO
    colour_pixels: int  # saturated colour pixels inside the fan
    fan_pixels: int
    ecg: EcgReading | None = None  # the cardiac phase the frame's ECG sweep shows, when it shows one

    @property
    def doppler(self) -> bool:
        return self.kind == DOPPLER

    @property
    def colour_fraction(self) -> float:
        """Share of the fan that is colour."""
        return self.colour_pixels / self.fan_pixels if self.fan_pixels else 0.0

    @property
    def reason(self) -> str:
        return {
            DOPPLER: f"colour Doppler: {self.colour_pixels} colour pixels in the fan",
            ANATOMICAL: f"anatomical (B-mode): {self.colour_pixels} colour pixels in the fan < {DOPPLER_PIXELS_MIN}",
            SPECTRAL: "spectral Doppler: the video's calibration has a spectral region",
            NO_IMAGE: f"no ultrasound image: the fan covers {self.fan_pixels} pixels",
            NOT_ECHO: f"not an echo frame: colour covers {self.colour_fraction:.0%} of the image",
        }[self.kind]


def inspect(bgr: np.ndarray, spectral: bool = False, fan: np.ndarray | None = None) -> Inspection:
    """What the frame is; `spectral` when its video's calibration names a spectral Doppler region; `fan` its video's
    sector (`rhd.imaging.sector.video_sector`), else the frame's own fan is found."""
    hsv = cv2.cvtColor(checked_frame(bgr), cv2.COLOR_BGR2HSV)
    colour = colour_pixels(hsv)
    if colour.mean() > NOT_ECHO_FRACTION:
        return Inspection(NOT_ECHO, int(colour.sum()), colour.size)
    if spectral:  # no fan: the trace runs in its strip, the ECG below it
        return Inspection(SPECTRAL, 0, 0, read_ecg(bgr, hsv, np.zeros(colour.shape, bool)))
    fan = fan_with_flow(hsv) if fan is None else fan
    fan_pixels, inside = int(fan.sum()), int((colour & fan).sum())
    ecg = read_ecg(bgr, hsv, fan)
    if fan_pixels < FAN_MIN_FRACTION * fan.size:
        return Inspection(NO_IMAGE, inside, fan_pixels, ecg)
    return Inspection(DOPPLER if inside >= DOPPLER_PIXELS_MIN else ANATOMICAL, inside, fan_pixels, ecg)
