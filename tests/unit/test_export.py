"""rhd export: a study's DICOM files under the research profile, for researchers in the home region."""

import pytest
from rhd.deid.ops import DeidError, pseudonym
from rhd.deid.policy import load_policy
from rhd.imaging.dicom import dicom_video, read_dicom
from rhd.local.audit import Needles
from rhd.local.export import export_study, write_export
from rhd.synth.generator import SynthConfig, load_truth, synth_studies

KEY = bytes(range(32))
POLICY = load_policy()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    config = SynthConfig(videos_per_study=3, duration_s=(1.0, 1.0))
    return synth_studies(41, 1, tmp_path_factory.mktemp("export"), config, dicom=True)[0]


def test_the_research_profile_pseudonymises_shifts_dates_and_cleans_pixels(study, tmp_path):
    research = POLICY.profile("research")
    count = write_export(study / "dicom", tmp_path / "out", "H001", POLICY, research, KEY)
    files = sorted((tmp_path / "out").glob("*.dcm"))
    assert count == len(files) == 3 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    identifiers = load_truth(study)["identifiers"]
    # The research profile keeps the sex and the time of day (Retain Longitudinal Temporal Information: dates move,
    # times stay); everything else identifying is gone.
    needles = Needles({k: v for k, v in identifiers.items() if k not in ("sex", "study_time")})
    for path in files:
        data = path.read_bytes()
        assert needles.in_bytes(data) == [], path.name
        ds = read_dicom(data)
        assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
        assert "research" in ds.DeidentificationMethod and str(ds.PatientName) == ""
        assert ds.PatientID == pseudonym(KEY, "patient", f"cns:{identifiers['patient_id']}")
        assert ds.StudyDate and ds.StudyDate != identifiers["study_date"].replace("-", "")  # shifted, kept
        assert len(dicom_video(ds).frames) == ds.NumberOfFrames
    # The same files again: the same pseudonyms and UIDs (keyed), so a researcher's follow-ups link up.
    originals = [p.read_bytes() for p in sorted((study / "dicom").glob("*.dcm"))]
    again = export_study(originals, "H001", POLICY, research, KEY)
    assert sorted(name for name, _ in again) == [f.name for f in files]


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(DeidError):
        export_study([], "H001", POLICY, POLICY.profile("research"), KEY)
