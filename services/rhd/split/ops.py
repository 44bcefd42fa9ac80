"""Frame splitting: decode a video's bytes into frames (OpenCV), one Frame message each, and what of an upload's
metadata the analysis may use (the rest, identifying, stays behind)."""

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rhd.imaging.sector import sector_message, video_sector
from rhd.imaging.video import LINE_SHAPE, DecodedVideo, Fit, fit_of, fitted
from rhd.v1 import rhd_pb2 as pb

# Metadata the analysis may use (after deid: the age as a band, the sex); identifying fields never reach split.
CLINICAL_FIELDS = frozenset({"pixel_spacing_mm", "nyquist_cm_s", "fps", "device", "sex", "age_band"})


@dataclass(frozen=True)
class Acquisition:
    """What the scanner says of how the study was recorded, as the analysis needs it (0 = unknown)."""

    pixel_spacing_mm: float
    nyquist_cm_s: float
    clinical: dict[str, str]  # the metadata that travels on with the study


NUMERIC_FIELDS = frozenset({"pixel_spacing_mm", "nyquist_cm_s", "fps"})


def _number(metadata: Mapping[str, str], name: str) -> float:
    """A positive finite number, or 0.0 (unknown): "nan", "inf", "-3" or "fast" are not a scanner's setting."""
    try:
        value = float(metadata.get(name, 0.0))
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def age_years(metadata: Mapping[str, str]) -> float | None:
    """The patient's age at the study, in years, from the birth and study dates (which stay behind), or None when
    either is missing or not a date, or the birth date is after the study."""
    try:
        born = dt.date.fromisoformat(str(metadata["birth_date"]))
        studied = dt.date.fromisoformat(str(metadata["study_date"]))
    except (KeyError, ValueError):
        return None
    days = (studied - born).days
    return round(days / 365.25, 1) if days >= 0 else None


def acquisition(metadata: Mapping[str, str]) -> Acquisition:
    """The upload's metadata reduced to what the analysis may use: CLINICAL_FIELDS and no other, and the age in
    years (the WHF 2012 criteria depend on it) instead of the dates it comes from."""
    clinical = {
        k: v for k, v in metadata.items() if k in CLINICAL_FIELDS and (k not in NUMERIC_FIELDS or _number(metadata, k))
    }
    age = age_years(metadata)
    if age is not None:
        clinical["age_years"] = f"{age:.1f}"
    return Acquisition(_number(metadata, "pixel_spacing_mm"), _number(metadata, "nyquist_cm_s"), clinical)


def fitted_region(region: pb.UltrasoundRegion, fit: Fit) -> pb.UltrasoundRegion:
    """A calibrated region where it lies after the fit: its corners moved, its physical units per pixel scaled."""
    if fit.identity:
        return region
    out = pb.UltrasoundRegion()
    out.CopyFrom(region)
    out.x0, out.x1 = round(region.x0 * fit.scale) + fit.x, round(region.x1 * fit.scale) + fit.x
    out.y0, out.y1 = round(region.y0 * fit.scale) + fit.y, round(region.y1 * fit.scale) + fit.y
    out.reference_y = region.reference_y * fit.scale
    out.delta_x, out.delta_y = region.delta_x / fit.scale, region.delta_y / fit.scale
    return out


# How a video's frames are packed into their records: one dict of Frame fields per image (the pixels or their
# reference), made for the whole video at once (the frame store writes it as one file).
Packer = Callable[[list[np.ndarray]], list[dict[str, Any]]]


def video_frames(
    upload: pb.StudyUpload,
    video_id: str,
    decoded: DecodedVideo,
    scan: Acquisition,
    pixels: Packer,
    regions: Sequence[pb.UltrasoundRegion] = (),
) -> list[pb.Frame]:
    """One Frame per decoded frame, keyed for frame accounting, its pixels packed by `pixels` (stored, raw or PNG),
    with the video's calibrated regions. Frames of another size than the line reads (a scanner's 600 x 800, say) are
    scaled to it, aspect kept, on black; the pixel spacing and the regions are scaled with them."""
    fit = fit_of(*decoded.frames[0].shape[:2]) if decoded.frames else fit_of(*LINE_SHAPE)
    spacing = scan.pixel_spacing_mm / fit.scale if scan.pixel_spacing_mm else 0.0
    regions = [fitted_region(r, fit) for r in regions]
    images = []
    for index, original in enumerate(decoded.frames):
        if original.shape[:2] != decoded.frames[0].shape[:2]:
            raise ValueError(
                f"frame {index} is {original.shape[1]} x {original.shape[0]}: a video's frames are one size"
            )
        images.append(fitted(original, fit))
    sector = sector_message(video_sector(images))  # found once: every stage fills it in for each frame
    frames = []
    for index, (image, packed) in enumerate(zip(images, pixels(images) if images else [], strict=True)):
        key = pb.FrameKey(
            study_id=upload.study_id,
            video_id=video_id,
            frame_index=index,
            video_frame_count=len(decoded.frames),
            uploaded_at=upload.uploaded_at,
        )
        frame = pb.Frame(
            key=key,
            height=image.shape[0],
            width=image.shape[1],
            fps=decoded.fps,
            pixel_spacing_mm=spacing,
            nyquist_cm_s=scan.nyquist_cm_s,
            regions=regions,
            sector=sector,
            **packed,
        )
        frame.decoded_at.GetCurrentTime()
        frames.append(frame)
    return frames
