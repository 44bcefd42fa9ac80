"""`rhd export`: a study's DICOM files as another profile of the policy lets them go, for readers in the home
region (researchers: pseudonymised, dates shifted; the hospital's clinicians: everything). The same functions as
the deid stage's, under the profile named; each file records the profile in its Deidentification Method."""

import io
from collections.abc import Iterable
from pathlib import Path

from rhd.deid import ops
from rhd.deid.policy import Policy, Profile
from rhd.imaging.burned_in import clean_frames
from rhd.imaging.dicom import dicom_regions, dicom_video, read_dicom


def export_study(
    files: Iterable[bytes], hospital_id: str, policy: Policy, profile: Profile, key: bytes
) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file de-identified under `profile`: named by its new SOP Instance UID. DicomError
    or DeidError (no patient ID) when a file cannot be."""
    datasets = [read_dicom(data) for data in files]
    if not datasets:
        raise ops.DeidError("no DICOM file in the study")
    ctx = ops.study_context(key, profile, hospital_id, ops.dicom_fields(datasets[0], policy))
    out = []
    for ds in datasets:
        frames = dicom_video(ds).frames
        cleaned = clean_frames(frames, dicom_regions(ds)) if profile.clean_pixels else frames
        made = ops.deidentify_dataset(ds, policy, ctx, cleaned)
        buffer = io.BytesIO()
        made.save_as(buffer, enforce_file_format=True)
        out.append((f"{made.get('SOPInstanceUID', len(out))}.dcm", buffer.getvalue()))
    return out


def write_export(study_dir: Path, out_dir: Path, hospital_id: str, policy: Policy, profile: Profile, key: bytes) -> int:
    """Export every .dcm file of a folder (one study) into out_dir (files mode 0600); returns how many."""
    files = [p.read_bytes() for p in sorted(Path(study_dir).glob("*.dcm"))]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = export_study(files, hospital_id, policy, profile, key)
    for name, data in written:
        path = out_dir / name
        path.touch(mode=0o600)
        path.write_bytes(data)
    return len(written)
