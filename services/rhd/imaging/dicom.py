"""Ultrasound DICOM as echo machines send it (Ultrasound Multi-frame Image Storage, JPEG baseline or explicit VR
little endian), read with pydicom and its pixel handlers: the frames, their calibrated regions, the frame rate."""

import io
import warnings
from collections.abc import Iterable

import numpy as np
import pydicom
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from rhd.imaging.video import NO_LIMITS, DecodedVideo, VideoDecodeError, VideoLimits
from rhd.v1 import rhd_pb2 as pb

ULTRASOUND_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
}
PREAMBLE = 128  # bytes before "DICM" in a Part 10 file

# PS3.3 C.8.5.5.1.1-2: Region Spatial Format and Region Data Type codes, as the line names them.
SPATIAL_FORMATS = {1: "2d", 2: "m_mode", 3: "spectral", 4: "waveform", 5: "graphics"}
DATA_TYPES = {1: "tissue", 2: "colour_flow", 3: "pw_doppler", 4: "cw_doppler", 10: "ecg"}
CODES_OF_FORMATS = {v: k for k, v in SPATIAL_FORMATS.items()}
CODES_OF_TYPES = {v: k for k, v in DATA_TYPES.items()}
UNIT_CM, UNIT_SECONDS, UNIT_CM_S = 3, 4, 7  # Physical Units X/Y Direction


class DicomError(ValueError):
    """Not a DICOM file, not ultrasound, truncated, or unreadable as it declares itself (character set, pixels)."""


def is_dicom(data: bytes) -> bool:
    return data[PREAMBLE : PREAMBLE + 4] == b"DICM"


def read_dicom(data: bytes) -> Dataset:
    """The dataset of a Part 10 ultrasound file, checked: DicomError says what is wrong. Values are not logged."""
    if not is_dicom(data):
        raise DicomError("not a DICOM Part 10 file (no DICM marker)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom warns where a file is malformed; here that is an error
            ds = pydicom.dcmread(io.BytesIO(data))
            sop_class = str(ds.get("SOPClassUID", ""))
            charsets = ds.get("SpecificCharacterSet", "")
            for charset in [charsets] if isinstance(charsets, str) else list(charsets):
                if charset and charset not in python_encoding:
                    raise DicomError(f"unknown SpecificCharacterSet {charset!r}")
            for element in ds.iterall():  # decode every text value under the declared character set, strictly
                element.value  # noqa: B018 - reading it decodes it
    except DicomError:
        raise
    except UserWarning as exc:
        # Only what kind of problem: a warning's text may quote the value it could not read.
        if "encod" in str(exc) or "decod" in str(exc):
            raise DicomError("text not readable under its SpecificCharacterSet (unknown or wrong)") from None
        raise DicomError("unreadable DICOM: malformed values") from None
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise DicomError(f"unreadable DICOM: {type(exc).__name__}") from None
    if sop_class not in ULTRASOUND_SOP_CLASSES:
        raise DicomError(f"not ultrasound: SOP class {sop_class or 'missing'}")
    if "PixelData" not in ds:
        raise DicomError("no pixel data")
    return ds


def frames_per_second(ds: Dataset) -> float:
    if ds.get("FrameTime"):
        return 1000.0 / float(ds.FrameTime)
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        if ds.get(keyword):
            return float(ds.get(keyword))
    return 0.0


def dicom_video(ds: Dataset, limits: VideoLimits = NO_LIMITS) -> DecodedVideo:
    """Every frame as BGR uint8 (as OpenCV decodes an MP4), whatever the transfer syntax and colour space. The
    declared frames and size are checked against `limits` before any pixel is decoded."""
    try:
        declared = int(ds.get("NumberOfFrames", 1) or 1)
        limits.check_count(declared)
        limits.check_size(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    except VideoDecodeError as exc:
        raise DicomError(str(exc)) from None
    except (TypeError, ValueError):
        raise DicomError("NumberOfFrames, Rows or Columns is not a number") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array  # RGB (YBR converted by the handler), frames first when there are several
    except Exception as exc:  # truncated or corrupt pixel data, a missing codec
        raise DicomError(f"pixel data unreadable: {type(exc).__name__}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1 and pixels.ndim in (2, 3) and pixels.shape[-1] != 3:
        pixels = pixels[None]
    elif frames == 1:
        pixels = pixels[None] if pixels.ndim == 3 else pixels
    if pixels.ndim == 3:  # monochrome
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.dtype != np.uint8:
        raise DicomError(f"pixel data of {pixels.dtype}: expected 8 bits")
    bgr = [np.ascontiguousarray(frame[..., ::-1]) for frame in pixels]
    return DecodedVideo(frames=bgr, fps=frames_per_second(ds), declared_frame_count=frames)


def dicom_regions(ds: Dataset) -> list[pb.UltrasoundRegion]:
    """The Sequence of Ultrasound Regions (0018,6011) as the line's UltrasoundRegion messages."""
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", []):
        regions.append(
            pb.UltrasoundRegion(
                spatial_format=SPATIAL_FORMATS.get(int(item.get("RegionSpatialFormat", 0)), ""),
                data_type=DATA_TYPES.get(int(item.get("RegionDataType", 0)), ""),
                x0=int(item.RegionLocationMinX0),
                y0=int(item.RegionLocationMinY0),
                x1=int(item.RegionLocationMaxX1) + 1,
                y1=int(item.RegionLocationMaxY1) + 1,
                reference_y=float(item.get("ReferencePixelY0", 0) or 0),
                delta_x=float(item.get("PhysicalDeltaX", 0) or 0),
                delta_y=float(item.get("PhysicalDeltaY", 0) or 0),
            )
        )
    return regions


def region_items(regions: Iterable[pb.UltrasoundRegion], units: dict[str, tuple[int, int]]) -> list[Dataset]:
    """UltrasoundRegion messages as Sequence of Ultrasound Regions items; `units` gives (X, Y) physical units by
    data type (a spectral trace is seconds by cm/s, an image cm by cm)."""
    items = []
    for r in regions:
        item = Dataset()
        item.RegionSpatialFormat = CODES_OF_FORMATS.get(r.spatial_format, 0)
        item.RegionDataType = CODES_OF_TYPES.get(r.data_type, 0)
        item.RegionFlags = 0
        item.RegionLocationMinX0, item.RegionLocationMinY0 = r.x0, r.y0
        item.RegionLocationMaxX1, item.RegionLocationMaxY1 = r.x1 - 1, r.y1 - 1
        item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units.get(r.data_type, (0, 0))
        item.PhysicalDeltaX, item.PhysicalDeltaY = r.delta_x, r.delta_y
        item.ReferencePixelX0, item.ReferencePixelY0 = 0, round(r.reference_y)
        items.append(item)
    return items
