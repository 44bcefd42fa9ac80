"""The synthetic videos also as an echo machine sends them: Ultrasound Multi-frame Image Storage, with the
identifying attributes a real one carries (all invented), a vendor's private block, burned-in text, and the
transfer syntaxes echo machines use (JPEG baseline, explicit VR little endian). Every identifier written is listed
so that a test can look for each."""

import datetime as dt
import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from rhd.imaging.dicom import UNIT_CM, UNIT_CM_S, UNIT_SECONDS, region_items
from rhd.v1 import rhd_pb2 as pb

TRANSFER_SYNTAXES = {"jpeg": JPEGBaseline8Bit, "explicit": ExplicitVRLittleEndian}
CHARACTER_SETS = ("ISO_IR 100", "ISO_IR 192")  # Latin-1 and UTF-8, as Brazilian machines send names with accents
PRIVATE_CREATOR = "RHD SYNTH SCANNER"
PRIVATE_GROUP = 0x0009
JPEG_QUALITY = 95
UID_ROOT = "1.2.826.0.1.3680043.10.1137."  # a root for the generator's own UIDs (invented instances)
PHYSICIANS = ("Dra. Helena Duarte", "Dr. Rafael Moreira", "Dra. Patrícia Lobo", "Dr. Tiago Albuquerque")
STATIONS = ("ECO-UBS-03", "ECHO-PORTATIL-2", "CARDIO-SALA-1")


@dataclass(frozen=True)
class StudyIdentity:
    """The identifiers a study's DICOM files carry besides those of its sidecar (one set for all its videos)."""

    accession_number: str
    study_uid: str
    referring_physician: str
    performing_physician: str
    station_name: str
    device_serial: str
    institution_address: str
    charset: str
    transfer_syntax: str


def study_identity(study_id: str, state: str, city: str) -> StudyIdentity:
    """Drawn from the study id alone, so that writing DICOM changes nothing else the generator draws."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(study_id.encode()).digest()[:8], "big"))
    return StudyIdentity(
        accession_number=f"AC{rng.integers(10**7, 10**8)}",
        study_uid=generate_uid(UID_ROOT, [study_id, "study"]),
        referring_physician=str(rng.choice(PHYSICIANS)),
        performing_physician=str(rng.choice(PHYSICIANS)),
        station_name=str(rng.choice(STATIONS)),
        device_serial=f"SN{rng.integers(10**6, 10**7)}",
        institution_address=f"Rua {rng.integers(1, 999)}, {city} - {state}",
        charset=CHARACTER_SETS[int(rng.integers(len(CHARACTER_SETS)))],
        transfer_syntax=("jpeg", "explicit")[int(rng.random() < 0.3)],
    )


def person_name(full: str) -> str:
    """'Lucas Mendes Carvalho' as a DICOM PN: family names ^ given name."""
    given, _, family = full.partition(" ")
    return f"{family}^{given}" if family else given


def _da(iso: str) -> str:
    return iso.replace("-", "")


def video_dataset(
    metadata: dict,
    identity: StudyIdentity,
    video_id: str,
    index: int,
    frames: list[np.ndarray],
    fps: float,
    regions: list[pb.UltrasoundRegion],
) -> Dataset:
    """One video as a Part 10 dataset (file meta included), pixels in the study's transfer syntax."""
    syntax = TRANSFER_SYNTAXES[identity.transfer_syntax]
    series_uid = generate_uid(UID_ROOT, [video_id, "series"])
    sop_uid = generate_uid(UID_ROOT, [video_id, "instance"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = UID_ROOT + "0"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = identity.charset
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = identity.study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid(UID_ROOT, [video_id, "frame-of-reference"])
    ds.Modality, ds.ImageType = "US", ["ORIGINAL", "PRIMARY", "CARDIAC"]
    ds.PatientName = person_name(metadata["patient_name"])
    ds.PatientID = metadata["patient_id"]
    ds.PatientBirthDate = _da(metadata["birth_date"])
    ds.PatientSex = metadata["sex"]
    study_time = metadata["study_time"].replace(":", "") + "00"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = _da(metadata["study_date"])
    series_time = (dt.datetime.strptime(study_time, "%H%M%S") + dt.timedelta(minutes=index)).strftime("%H%M%S")
    ds.StudyTime, ds.SeriesTime, ds.ContentTime, ds.AcquisitionTime = study_time, series_time, series_time, series_time
    ds.AccessionNumber = identity.accession_number
    ds.StudyID = metadata["study_id"]
    ds.SeriesNumber, ds.InstanceNumber = index + 1, 1
    ds.StudyDescription = f"Ecocardiograma triagem {metadata['patient_name']}"
    ds.InstitutionName = metadata["hospital"]
    ds.InstitutionAddress = identity.institution_address
    ds.ReferringPhysicianName = person_name(identity.referring_physician.split(". ", 1)[1])
    ds.PerformingPhysicianName = person_name(identity.performing_physician.split(". ", 1)[1])
    ds.OperatorsName = person_name(metadata["operator"])
    ds.StationName = identity.station_name
    ds.Manufacturer = metadata["device"].split(" ")[0]
    ds.ManufacturerModelName = metadata["device"]
    ds.DeviceSerialNumber = identity.device_serial
    ds.BurnedInAnnotation = "YES"
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", metadata["patient_name"])  # vendors copy the name into their own block
    block.add_new(0x11, "DS", str(metadata["nyquist_cm_s"]))  # the colour Nyquist limit, cm/s
    block.add_new(0x12, "LO", identity.station_name)
    h, w = frames[0].shape[:2]
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, len(frames)
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 3, 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    ds.FrameTime = f"{1000.0 / fps:.3f}"
    ds.CineRate = round(fps)
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    spacing_cm = float(metadata["pixel_spacing_mm"]) / 10.0
    image = pb.UltrasoundRegion(
        spatial_format="2d", data_type="tissue", x0=0, y0=0, x1=w, y1=h, delta_x=spacing_cm, delta_y=spacing_cm
    )
    units = {"tissue": (UNIT_CM, UNIT_CM), "cw_doppler": (UNIT_SECONDS, UNIT_CM_S)}
    ds.SequenceOfUltrasoundRegions = region_items(regions or [image], units)
    rgb = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
    if syntax == JPEGBaseline8Bit:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        encoded = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes() for f in frames]
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = np.stack(rgb).tobytes()
    return ds


def identifiers(metadata: dict, identity: StudyIdentity) -> dict[str, str]:
    """Every identifying value the study's DICOM files and sidecar carry, by name, for the audit to look for."""
    return {
        "patient_name": metadata["patient_name"],
        "patient_id": metadata["patient_id"],
        "birth_date": metadata["birth_date"],
        "study_date": metadata["study_date"],
        "study_time": metadata["study_time"],
        "study_id": metadata["study_id"],
        "operator": metadata["operator"],
        "hospital": metadata["hospital"],
        "accession_number": identity.accession_number,
        "study_uid": identity.study_uid,
        "referring_physician": identity.referring_physician.split(". ", 1)[1],
        "performing_physician": identity.performing_physician.split(". ", 1)[1],
        "station_name": identity.station_name,
        "device_serial": identity.device_serial,
        "institution_address": identity.institution_address,
    }
