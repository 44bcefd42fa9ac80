"""De-identification: a study as a hospital sent it (MP4 with a JSON sidecar, or DICOM) -> the same study as a
profile of the policy lets it leave: attributes by PS3.15 Annex E actions, keyed pseudonyms, shifted dates, age
bands, burned-in text cleaned out of the pixels (kept lossless from there on), and a record of what was done."""

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from rhd.deid.policy import OPTION_MEANINGS, Action, Policy, Profile
from rhd.imaging.burned_in import clean_frames
from rhd.imaging.dicom import DicomError, dicom_regions, dicom_video, frames_per_second, is_dicom, read_dicom
from rhd.imaging.video import (
    LOSSLESS_SUFFIX,
    NO_LIMITS,
    DecodedVideo,
    VideoDecodeError,
    VideoLimits,
    decode_video,
    encode_lossless,
)
from rhd.runtime.blobs import pieces
from rhd.runtime.secrets import keyed_digest
from rhd.v1 import rhd_pb2 as pb

CNS_LENGTH = 15  # the national health card number (Cartão Nacional de Saúde): 15 digits
SHIFT_DAYS = (30, 730)  # a patient's dates move back by this many days (research profile), the same for all studies
DUMMY = "ANONYMOUS"


class DeidError(ValueError):
    """A video that cannot be de-identified; the reason names no identifying value."""


# -- keyed values ------------------------------------------------------------------------------------------------
def patient_key(hospital_id: str, patient_id: str) -> str:
    """Who the patient is across studies and hospitals: the CNS when the ID is one, else the hospital's own ID."""
    digits = patient_id.strip()
    if len(digits) == CNS_LENGTH and digits.isdigit():
        return f"cns:{digits}"
    return f"hospital:{hospital_id}:{digits}"


def pseudonym(key: bytes, kind: str, value: str, prefix: str = "P", length: int = 20) -> str:
    """A stable pseudonym: nothing outside the home region (which holds the key) can reverse or recompute it."""
    return prefix + keyed_digest(key, kind, value).hex()[:length]


def study_pseudonym(key: bytes, hospital_id: str, study_id: str) -> str:
    return pseudonym(key, "study", f"{hospital_id}/{study_id}")


def record_key_pseudonym(key: bytes, record_key: bytes) -> str:
    """What a raw record that did not parse is known by outside its sealed dead letter: its key's pseudonym."""
    return pseudonym(key, "record-key", record_key.decode(errors="replace"), prefix="R")


def new_uid(key: bytes, uid: str) -> str:
    """A UID replaced the same way every time (PS3.15 action U), under the 2.25 root (a UUID-derived UID)."""
    return "2.25." + str(int.from_bytes(keyed_digest(key, "uid", uid)[:16], "big"))


def shift_days(key: bytes, patient: str) -> int:
    low, high = SHIFT_DAYS
    return -(low + int.from_bytes(keyed_digest(key, "shift", patient)[:4], "big") % (high - low + 1))


def parse_date(text: str) -> dt.date | None:
    text = str(text).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def age_years(birth: str, study: str) -> float | None:
    born, studied = parse_date(birth), parse_date(study)
    if born is None or studied is None or studied < born:
        return None
    return (studied - born).days / 365.25


def dicom_age_years(text: str) -> float | None:
    """A DICOM Age String (AS: 012Y, 006M, 010W, 030D) in years."""
    text = str(text).strip()
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
    if len(text) == 4 and text[:3].isdigit() and text[3] in per_year:
        return int(text[:3]) / per_year[text[3]]
    try:
        return float(text)
    except ValueError:
        return None


def age_band(years: float, edges: Sequence[int]) -> str:
    """The band an age falls in: edges (5, 10, 15, 21) give 0-4, 5-9, 10-14, 15-20, 21+ (whole years)."""
    whole = int(years)
    low = 0
    for edge in edges:
        if whole < edge:
            return f"{low}-{edge - 1}"
        low = edge
    return f"{low}+"


# -- one study's identity and the actions ---------------------------------------------------------------------------
@dataclass
class StudyContext:
    """What the actions of one study need: the keys, who the patient is, and the values to clean out of text."""

    key: bytes
    profile: Profile
    patient: str
    age: float | None
    identifying: list[str] = field(default_factory=list)  # the study's own identifying values (for C, and checks)
    removed: int = 0  # attributes and fields removed (unknown ones included)

    def value(self, action: Action, keyword: str, value: str) -> str | None:
        """The de-identified value of one attribute, or None when it goes."""
        code, how = action.code, action.how
        if code == "K":
            return value
        if code == "X":
            self.removed += 1
            return None
        if code == "Z":
            return ""
        if code == "U":
            return new_uid(self.key, value) if value else ""
        if code == "C":
            cleaned = value
            for ident in sorted(self.identifying, key=len, reverse=True):
                if ident and len(ident) >= 3:
                    cleaned = _remove_casefold(cleaned, ident)
            return " ".join(cleaned.split())
        # D
        if how == "pseudonym":
            return pseudonym(self.key, "patient", self.patient)
        if how == "shifted":
            date = parse_date(value)
            if date is None:
                return ""
            shifted = date + dt.timedelta(days=shift_days(self.key, self.patient))
            return shifted.isoformat() if "-" in value else shifted.strftime("%Y%m%d")
        if how == "band":
            return age_band(self.age, self.profile.age_bands) if self.age is not None else ""
        if how == "month":  # as DICOM writes a date, the month's first day
            date = parse_date(value)
            return "" if date is None else f"{date:%Y-%m}" if "-" in value else f"{date:%Y%m}01"
        return DUMMY


def _remove_casefold(text: str, needle: str) -> str:
    low, n = text.casefold(), needle.casefold()
    out, start = [], 0
    while (i := low.find(n, start)) >= 0:
        out.append(text[start:i])
        start = i + len(needle)
    out.append(text[start:])
    return "".join(out)


PERSON_FIELDS = ("patient_name", "operator", "referring_physician")
IDENTIFYING_FIELDS = (
    "patient_name",
    "patient_id",
    "birth_date",
    "study_date",
    "accession_number",
    "study_id",
    "operator",
    "referring_physician",
    "hospital",
)


def study_context(key: bytes, profile: Profile, hospital_id: str, fields: Mapping[str, str]) -> StudyContext:
    """The context of a study from its identifying fields (sidecar names; a DICOM file's are read into them)."""
    if not str(fields.get("patient_id", "")).strip():
        raise DeidError("no patient ID: the patient's pseudonym and date offset cannot be keyed")
    age = dicom_age_years(fields["age_years"]) if fields.get("age_years") else None
    if age is None:
        age = age_years(str(fields.get("birth_date", "")), str(fields.get("study_date", "")))
    identifying = [str(fields[f]) for f in IDENTIFYING_FIELDS if fields.get(f)]
    # Each part of a person's name alone too, however it is written (a DICOM PN: Family^Given^Middle=ideographic).
    identifying += [part for name in PERSON_FIELDS for part in re.split(r"[\s^=]+", str(fields.get(name, ""))) if part]
    return StudyContext(key, profile, patient_key(hospital_id, str(fields["patient_id"])), age, identifying)


def deidentify_fields(fields: Mapping[str, str], policy: Policy, ctx: StudyContext) -> dict[str, str]:
    """A sidecar's fields as the profile lets them go, under the line's names (derived ones: age_band,
    study_month). Fields the profile does not name are removed and counted."""
    out: dict[str, str] = {}
    present = dict(fields)
    if ctx.age is not None and "age_years" not in present:
        present["age_years"] = f"{ctx.age:.2f}"
    for name, raw in present.items():
        keyword = policy.keyword(name)
        action = ctx.profile.action(keyword)
        value = ctx.value(action, keyword, str(raw))
        if value is None:
            continue
        out[policy.derived.get(keyword, name) if action.how in ("band", "month") else name] = value
    return out


# -- DICOM -------------------------------------------------------------------------------------------------------
def _text(value: object) -> str:
    return "" if value is None else str(value)


def dicom_fields(ds: Dataset, policy: Policy) -> dict[str, str]:
    """A DICOM file's values under the sidecar's names (dates ISO), as the line and the context read them: the
    attributes `fields` maps, the safe private ones the policy names, and pixel spacing and frame rate."""
    out: dict[str, str] = {}
    for name, keyword in policy.fields.items():
        if keyword in ds and ds.data_element(keyword).VR != "SQ":
            value = _text(ds.data_element(keyword).value)
            date = parse_date(value) if ds.data_element(keyword).VR == "DA" else None
            out[name] = date.isoformat() if date else value
    for (creator, element), name in policy.private.items():
        try:
            block = ds.private_block(_group_of(ds, creator), creator)
            out[name] = _text(block[element].value)
        except (KeyError, ValueError):
            continue
    for region in dicom_regions(ds):
        if region.spatial_format == "2d" and region.delta_x > 0:
            out.setdefault("pixel_spacing_mm", f"{region.delta_x * 10.0:g}")
    fps = frames_per_second(ds)
    if fps:
        out["fps"] = f"{fps:g}"
    if "InstitutionAddress" in ds and " - " in str(ds.InstitutionAddress):
        out.setdefault("state", str(ds.InstitutionAddress).rsplit(" - ", 1)[1].strip())
    return out


def _group_of(ds: Dataset, creator: str) -> int:
    for element in ds:
        if element.tag.is_private_creator and element.value == creator:
            return element.tag.group
    raise KeyError(creator)


def deidentify_dataset(
    ds: Dataset, policy: Policy, ctx: StudyContext, frames: Sequence[np.ndarray] | None = None
) -> Dataset:
    """The dataset as the profile lets it go (a new one): each attribute by its action, sequences kept only when
    named (and then whole: the image's calibration), private blocks only for the safe elements the policy names,
    the Annex E record added. `frames` (BGR, cleaned) become its pixel data, uncompressed: lossless from here on."""
    out = Dataset()
    out.file_meta = FileMetaDataset()
    for element in ds:
        if element.tag.is_private:
            continue
        keyword = element.keyword or ""
        action = ctx.profile.action(keyword) if keyword else Action("X")
        if element.VR == "SQ":
            if action.code == "K":
                out.add(element)
            else:
                ctx.removed += 1
            continue
        if keyword == "PixelData":
            continue
        value = ctx.value(
            action, keyword, _text(element.value) if element.VM <= 1 else "\\".join(map(str, element.value))
        )
        if value is None:
            continue
        if action.code == "K":
            out.add(element)
        else:
            out.add_new(element.tag, element.VR, value)
    for (creator, element), name in policy.private.items():
        if ctx.profile.action(name).code != "K":
            continue
        try:
            value = ds.private_block(_group_of(ds, creator), creator)[element]
        except (KeyError, ValueError):
            continue
        out.private_block(0x0009, creator, create=True).add_new(element, value.VR, value.value)
    ctx.removed += sum(1 for e in ds if e.tag.is_private and not e.tag.is_private_creator)
    mark_deidentified(out, policy, ctx.profile)
    out.file_meta.MediaStorageSOPClassUID = out.get("SOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID"))
    out.file_meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID", "")
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if frames is not None:
        out.PhotometricInterpretation, out.PlanarConfiguration = "RGB", 0
        out.NumberOfFrames = len(frames)
        out.PixelData = np.stack([f[..., ::-1] for f in frames]).tobytes()
        out["PixelData"].VR = "OB"
        for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in ds:  # once lossy, always lossy: the record stays
                out.add(ds.data_element(keyword))
    return out


def mark_deidentified(ds: Dataset, policy: Policy, profile: Profile) -> None:
    """Patient Identity Removed, the method and its codes (PS3.15 E.1.1), Burned In Annotation after cleaning."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = profile.method(policy.digest)
    codes = DicomSequence()
    for code in profile.options:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = str(code), "DCM", OPTION_MEANINGS[code]
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    if 113107 in profile.options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    if profile.clean_pixels:
        ds.BurnedInAnnotation = "NO"


def annex_e_record(policy: Policy, profile: Profile, removed: int) -> dict[str, str]:
    """The same record for a sidecar: what was done and under which profile."""
    return {
        "patient_identity_removed": "YES",
        "deidentification_method": profile.method(policy.digest),
        "deidentification_method_codes": ",".join(str(c) for c in profile.options),
        "deid_profile": profile.name,
        "burned_in_annotation": "NO" if profile.clean_pixels else "YES",
        "removed_fields": str(removed),
    }


# -- a whole upload ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoFailure:
    index: int
    video: pb.VideoRef
    reason: str  # names no identifying value


@dataclass(frozen=True)
class DeidentifiedStudy:
    upload: pb.StudyUpload  # keyed by the study's pseudonym; videos lossless, cleaned
    link: dict  # pseudonym -> the hospital's own identifiers (sealed before it leaves the process)
    failures: list[VideoFailure]


def _read_video(
    data: bytes, filename: str, policy: Policy, limits: VideoLimits
) -> tuple[DecodedVideo, list[pb.UltrasoundRegion], dict[str, str]]:
    if is_dicom(data):
        ds = read_dicom(data)
        return dicom_video(ds, limits), dicom_regions(ds), dicom_fields(ds, policy)
    if filename.lower().endswith((".dcm", ".dicom")):
        raise DicomError("named as DICOM but not a DICOM Part 10 file (no DICM marker)")
    return decode_video(data, limits), [], {}


def deidentify_upload(
    upload: pb.StudyUpload,
    read: Callable[[pb.VideoRef], bytes],
    store: Callable[[bytes], str],
    policy: Policy,
    profile: Profile,
    key: bytes,
    inline_budget: int,
    limits: VideoLimits = NO_LIMITS,
    max_upload_frames: int = 0,
    keep: Callable[[str, list[np.ndarray]], str] | None = None,
) -> DeidentifiedStudy:
    """The upload as `profile` lets it go. Each readable video is cleaned and written lossless (inline while the
    budget lasts, else stored by `store`), or, with `keep` (the frame store, where split runs in the same region), its
    cleaned frames kept as they are, with no encoding; a video that cannot be read or de-identified is listed with its
    reason, and the study goes on without it."""
    pseudo = study_pseudonym(key, upload.hospital_id, upload.study_id)
    out = pb.StudyUpload(
        schema="rhd.v1.StudyUpload", study_id=pseudo, upload_id=upload.upload_id, hospital_id=upload.hospital_id
    )
    out.uploaded_at.CopyFrom(upload.uploaded_at)
    failures: list[VideoFailure] = []
    fields: dict[str, str] = dict(upload.metadata)
    ctx: StudyContext | None = None
    videos = []
    frames_seen = 0
    for index, ref in enumerate(upload.videos):
        new_id = f"{pseudo}-V{index:02d}"
        videos.append((ref.video_id or ref.filename, new_id))  # the link names every video, failed ones too
        try:
            # What is left of the upload's frame budget bounds this video (a bomb spread over many videos too).
            bounded = limits
            if max_upload_frames:
                left = max_upload_frames - frames_seen
                if left <= 0:
                    raise VideoDecodeError(f"the upload is over its limit of {max_upload_frames} frames")
                if not limits.max_frames or left < limits.max_frames:
                    bounded = replace(limits, max_frames=left, scope=f"left of the upload's {max_upload_frames}")
            data = read(ref)
            if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256.lower():
                raise DeidError("checksum mismatch: the video's bytes are not those its sender hashed (sha256)")
            decoded, regions, found = _read_video(data, ref.filename, policy, bounded)
            frames_seen += len(decoded.frames)
            if ctx is None:
                fields = {**fields, **found}
                ctx = study_context(key, profile, upload.hospital_id, fields)
            frames = (
                clean_frames(decoded.frames, list(ref.regions) or regions, in_place=True)
                if profile.clean_pixels
                else decoded.frames
            )
            kept = keep(new_id, frames) if keep is not None else ""
            data = b"" if kept else encode_lossless(frames, decoded.fps)
        except (DicomError, VideoDecodeError, DeidError) as exc:
            failures.append(VideoFailure(index, ref, f"video {new_id}: {exc}"))
            out.videos.add(video_id=new_id, error=f"video {new_id}: {exc}")
            continue
        except (OSError, ValueError) as exc:
            failures.append(VideoFailure(index, ref, f"video {new_id}: unreadable ({type(exc).__name__})"))
            out.videos.add(video_id=new_id, error=f"video {new_id}: unreadable ({type(exc).__name__})")
            continue
        if kept:  # in the frame store: split reads the frames there (their digest is in the file's name)
            out.videos.add(
                video_id=new_id,
                filename=new_id + ".npy",
                blob_uri=kept,
                fps=decoded.fps,
                size_bytes=sum(frame.nbytes for frame in frames),
                regions=list(ref.regions) or regions,
            )
            continue
        video = out.videos.add(
            video_id=new_id,
            filename=new_id + LOSSLESS_SUFFIX,
            size_bytes=len(data),
            regions=list(ref.regions) or regions,
        )
        video.sha256 = hashlib.sha256(data).hexdigest()
        if len(data) <= inline_budget:
            video.inline_data = data
            inline_budget -= len(data)
        else:
            video.blob_uri = store(data)
    if ctx is None:
        try:
            ctx = study_context(key, profile, upload.hospital_id, fields)
        except DeidError:
            ctx = StudyContext(key, profile, patient_key(upload.hospital_id, upload.study_id), None)
    metadata = deidentify_fields(fields, policy, ctx)
    out.metadata.update({**metadata, **annex_e_record(policy, profile, ctx.removed)})
    link = {
        "pseudonym": pseudo,
        "hospital_id": upload.hospital_id,
        "study_id": upload.study_id,
        "upload_id": upload.upload_id,
        "accession_number": fields.get("accession_number", ""),
        "patient": pseudonym(key, "patient", ctx.patient),
        "videos": dict(videos),
        "quasi": quasi_identifiers(fields, ctx, policy, upload.hospital_id),
        "released": released_quasi_identifiers(out.metadata, out.hospital_id, policy),
    }
    return DeidentifiedStudy(out, link, failures)


def released_quasi_identifiers(metadata: Mapping[str, str], hospital_id: str, policy: Policy) -> dict[str, str]:
    """The quasi-identifiers a de-identified study carries out of the region (the policy's `anonymity.released`)."""
    return {q: hospital_id if q == "hospital_id" else str(metadata.get(q, "")) for q in policy.anonymity.released}


def release_as(study: DeidentifiedStudy, released: Sequence[str], policy: Policy) -> None:
    """Release the study with these values of the policy's released quasi-identifiers (some withheld to hold k):
    in the de-identified upload, and recorded in its link."""
    values = dict(zip(policy.anonymity.released, released, strict=True))
    for name, value in values.items():
        if name == "hospital_id":
            study.upload.hospital_id = value
        if name in study.upload.metadata:
            study.upload.metadata[name] = value
    study.link["released"] = values


def quasi_identifiers(fields: Mapping[str, str], ctx: StudyContext, policy: Policy, hospital_id: str) -> dict[str, str]:
    """The study's quasi-identifiers at their finest measured level, for the link map (home region only)."""
    bands = policy.anonymity.fine_age_bands
    date = parse_date(str(fields.get("study_date", "")))
    return {
        "age_band": age_band(ctx.age, bands) if ctx.age is not None and bands else "",
        "hospital_id": hospital_id,
        "sex": str(fields.get("sex", "")).strip().upper()[:1],
        "state": str(fields.get("state", "")).strip().upper(),
        "study_month": date.strftime("%Y-%m") if date else "",
    }


def link_bytes(link: Mapping[str, object]) -> bytes:
    return json.dumps(link, sort_keys=True, ensure_ascii=False).encode()


def travelling_pieces(study_id: str, videos: Mapping[str, bytes], size: int) -> list[pb.StudyUpload]:
    """The records that carry each de-identified video (by its blob URI) across the regions ahead of its study: a
    StudyUpload naming the study and holding one BlobPart each, of at most `size` bytes of video."""
    return [
        pb.StudyUpload(
            schema="rhd.v1.StudyUpload",
            study_id=study_id,
            blob_part=pb.BlobPart(blob_uri=uri, index=index, count=len(cut), data=piece),
        )
        for uri, data in videos.items()
        for cut in [pieces(data, size)]
        for index, piece in enumerate(cut)
    ]
