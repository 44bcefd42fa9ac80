"""De-identification: the policy's actions, keyed pseudonyms and dates, DICOM as echo machines send it, clean pixels
(checked against the generator's overlay boxes and by OCR), sealed envelopes, and bad input."""

import hashlib
import io
import json

import numpy as np
import pydicom
import pytest
from conftest import missing_tool
from google.protobuf import json_format
from rhd.deid import ops as deid
from rhd.deid.policy import PolicyError, load_policy
from rhd.imaging.burned_in import clean_frames, screen_layout
from rhd.imaging.dicom import DicomError, dicom_regions, dicom_video, read_dicom
from rhd.imaging.video import decode_video, encode_lossless
from rhd.local.audit import Needles, ocr_text, tesseract_available
from rhd.local.publish import upload_from_dir
from rhd.runtime.blobs import BlobStore
from rhd.runtime.secrets import SecretError, init_secrets, load_keyring, load_pseudonym_key, rotate
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.v1 import rhd_pb2 as pb

KEY = bytes(range(32))
POLICY = load_policy()
ANALYSIS = POLICY.profile("analysis")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    out = tmp_path_factory.mktemp("deid")
    config = SynthConfig(videos_per_study=12, duration_s=(1.0, 1.0))
    return synth_studies(21, 2, out, config, balanced=True, dicom=True)


def _reader(blobs):
    return lambda ref: ref.inline_data if ref.HasField("inline_data") else blobs.get(ref.blob_uri)


def _identifiers(study) -> dict:
    return load_truth(study)["identifiers"]


# -- the policy and the keyed values ------------------------------------------------------------------------------
def test_the_policy_names_profiles_and_whatever_a_profile_does_not_name_is_removed():
    assert set(POLICY.profiles) == {"analysis", "research", "clinician"}
    assert ANALYSIS.region == "gpu" and 113100 in ANALYSIS.options and 113101 in ANALYSIS.options
    assert ANALYSIS.action("PatientName").code == "X"
    assert ANALYSIS.action("SomeVendorField").code == "X"
    assert ANALYSIS.action("PatientAge").how == "band"
    assert POLICY.profile("clinician").action("PatientName").code == "K"


def test_a_policy_with_an_unknown_action_is_refused(tmp_path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nprofiles:\n  p:\n    region: gpu\n    attributes:\n      PatientName: SCRAMBLE\n")
    with pytest.raises(PolicyError, match="unknown action"):
        load_policy(bad)


def test_pseudonyms_are_stable_per_patient_across_hospitals_by_cns_and_keyed():
    cns = "712345678901234"
    assert deid.patient_key("H001", cns) == deid.patient_key("H002", cns)  # the national card number links
    assert deid.patient_key("H001", "MRN-77") != deid.patient_key("H002", "MRN-77")  # a local ID does not
    one = deid.pseudonym(KEY, "patient", deid.patient_key("H001", cns))
    assert one == deid.pseudonym(KEY, "patient", deid.patient_key("H002", cns))
    assert one != deid.pseudonym(bytes(32), "patient", deid.patient_key("H001", cns))
    assert deid.new_uid(KEY, "1.2.3") == deid.new_uid(KEY, "1.2.3") != deid.new_uid(KEY, "1.2.4")
    assert deid.new_uid(KEY, "1.2.3").startswith("2.25.") and len(deid.new_uid(KEY, "1.2.3")) <= 64


@pytest.mark.parametrize(
    ("years", "band"), [(4.9, "0-4"), (5.0, "5-9"), (14.99, "10-14"), (20.9, "15-20"), (21.0, "21+"), (40, "21+")]
)
def test_age_bands_keep_the_whf_cut_at_20_years(years, band):
    """The link map's bands (the policy's finer ones), and the line's: the WHF cut alone."""
    assert deid.age_band(years, POLICY.anonymity.fine_age_bands) == band
    assert deid.age_band(years, ANALYSIS.age_bands) == ("21+" if years >= 21 else "0-20")


def test_research_dates_move_by_one_offset_per_patient_so_intervals_are_kept():
    research = POLICY.profile("research")
    fields = {"patient_id": "712345678901234", "birth_date": "2012-03-04", "study_date": "2025-06-19"}
    ctx = deid.study_context(KEY, research, "H001", fields)
    out = deid.deidentify_fields(fields, POLICY, ctx)
    born, studied = deid.parse_date(out["birth_date"]), deid.parse_date(out["study_date"])
    assert born != deid.parse_date("2012-03-04") and studied != deid.parse_date("2025-06-19")
    assert (studied - born).days == (deid.parse_date("2025-06-19") - deid.parse_date("2012-03-04")).days
    later = deid.deidentify_fields({**fields, "study_date": "2026-01-02"}, POLICY, ctx)
    assert (deid.parse_date(later["study_date"]) - studied).days == 197  # follow-up interval kept
    assert out["patient_id"] == deid.pseudonym(KEY, "patient", "cns:712345678901234")


def test_the_analysis_profile_lets_only_what_the_line_needs_leave(studies):
    meta = json.loads((studies[0] / "study.json").read_text())
    fields = {k: str(v) for k, v in meta.items() if k != "videos"}
    ctx = deid.study_context(KEY, ANALYSIS, meta["hospital_id"], fields)
    out = deid.deidentify_fields(fields, POLICY, ctx)
    # What the analysis reads, the sender that routes the results, and nothing else: no sex, state or month (they
    # would shrink the released classes, and no stage reads them).
    assert set(out) == {"hospital_id", "age_band", "device", "pixel_spacing_mm", "nyquist_cm_s", "fps"}
    assert out["age_band"] == "0-20"
    assert ctx.removed >= 6  # name, ID, birth date, time, operator, hospital name, study id
    assert not Needles(_identifiers(studies[0])).in_bytes(json.dumps(out, ensure_ascii=False).encode())


# -- DICOM --------------------------------------------------------------------------------------------------------
def test_the_generator_writes_ultrasound_dicom_as_echo_machines_send_it(studies):
    truth = load_truth(studies[0])
    files = sorted((studies[0] / "dicom").glob("*.dcm"))
    assert len(files) == 12
    ds = read_dicom(files[0].read_bytes())
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1" and ds.Modality == "US"
    assert ds.BurnedInAnnotation == "YES" and ds.SpecificCharacterSet in ("ISO_IR 100", "ISO_IR 192")
    assert str(ds.PatientName) == deid_name(truth["identifiers"]["patient_name"])
    assert ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1")
    video = dicom_video(ds)
    mp4 = decode_video((studies[0] / files[0].name.replace(".dcm", ".mp4")).read_bytes())
    assert len(video.frames) == len(mp4.frames) and video.frames[0].shape == mp4.frames[0].shape
    assert abs(video.fps - 24.0) < 0.01
    # The same picture (the MP4 is lossy too, differently): close on average.
    assert np.abs(video.frames[0].astype(int) - mp4.frames[0].astype(int)).mean() < 6
    spectral = [f for f in files if dicom_regions(read_dicom(f.read_bytes()))[0].spatial_format == "spectral"]
    assert len(spectral) == 2


def deid_name(full: str) -> str:
    given, _, family = full.partition(" ")
    return f"{family}^{given}"


def test_a_de_identified_dataset_keeps_no_identifier_and_records_what_was_done(studies):
    ids = _identifiers(studies[1])
    needles = Needles(ids)
    datasets = [read_dicom(f.read_bytes()) for f in sorted((studies[1] / "dicom").glob("*.dcm"))[:3]]
    fields = deid.dicom_fields(datasets[0], POLICY)
    assert fields["nyquist_cm_s"] and fields["pixel_spacing_mm"] == "0.6" and fields["state"]
    ctx = deid.study_context(KEY, ANALYSIS, "H001", fields)
    outs = []
    for ds in datasets:
        out = deid.deidentify_dataset(ds, POLICY, ctx, clean_frames(dicom_video(ds).frames, dicom_regions(ds)))
        buffer = io.BytesIO()
        out.save_as(buffer, enforce_file_format=True)
        assert needles.in_bytes(buffer.getvalue()) == []
        again = read_dicom(buffer.getvalue())  # a valid ultrasound file, its cleaned pixels lossless
        assert len(dicom_video(again).frames) == ds.NumberOfFrames
        assert out.PatientIdentityRemoved == "YES" and out.BurnedInAnnotation == "NO"
        assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == [str(c) for c in ANALYSIS.options]
        assert "PatientName" not in out and "InstitutionName" not in out and "DeviceSerialNumber" not in out
        assert "PatientSex" not in out and "StudyDate" not in out and out.SequenceOfUltrasoundRegions
        creator_block = out.private_block(0x0009, "RHD SYNTH SCANNER")
        assert float(creator_block[0x11].value) == float(fields["nyquist_cm_s"])
        with pytest.raises(KeyError):
            creator_block[0x10]  # the vendor's copy of the name is gone
        outs.append(out)
    # One study, one new Study Instance UID; each series its own.
    assert len({o.StudyInstanceUID for o in outs}) == 1 and outs[0].StudyInstanceUID != datasets[0].StudyInstanceUID
    assert len({o.SeriesInstanceUID for o in outs}) == 3


# -- clean pixels ---------------------------------------------------------------------------------------------------
def _lit(frame, box) -> int:
    x0, y0, x1, y1 = box
    return int((frame[max(0, y0) : y1, max(0, x0) : x1].max(axis=2) > 40).sum())


@pytest.mark.parametrize("kind", ["mp4", "dicom"])
def test_burned_in_text_goes_and_what_the_analysis_reads_stays(studies, kind):
    """Every identifying and device text box is dark in every cleaned frame; the colour bar, its Nyquist labels,
    the ECG and the depth marks keep at least 95% of their lit pixels; inside the image nothing changes."""
    checked = 0
    for study in studies:
        truth = {v["video_id"]: v for v in load_truth(study)["videos"]}
        meta = json.loads((study / "study.json").read_text())
        for entry in meta["videos"]:
            if kind == "mp4":
                frames = decode_video((study / entry["filename"]).read_bytes()).frames
                regions = [json_format.ParseDict(r, pb.UltrasoundRegion()) for r in entry.get("regions", [])]
            else:
                ds = read_dicom((study / "dicom" / f"{entry['video_id']}.dcm").read_bytes())
                frames, regions = dicom_video(ds).frames, dicom_regions(ds)
            cleaned = clean_frames(frames, regions)
            for overlay in truth[entry["video_id"]]["overlays"]:
                before = max(_lit(f, overlay["box"]) for f in frames)
                after = max(_lit(f, overlay["box"]) for f in cleaned)
                if overlay["kind"] in ("phi", "device"):
                    assert after == 0, (entry["video_id"], overlay)
                elif overlay["kind"] in ("colour_bar", "nyquist", "ecg", "spectral"):
                    assert after >= 0.95 * before, (entry["video_id"], overlay["kind"], after, before)
                checked += 1
            # Inside the image (the fan, or the spectral region) not one pixel changes.
            image = screen_layout(frames, regions).image
            assert image.mean() > 0.25
            assert all(np.array_equal(a[image], b[image]) for a, b in zip(frames, cleaned, strict=True))
    assert checked > 100


def test_ocr_reads_the_identifiers_before_cleaning_and_none_after(studies):
    """tesseract (Debian's tesseract-ocr, through pytesseract) reads at least 90% of the burned-in identifying lines
    on the original frames, and no identifier at all on the cleaned ones."""
    if not tesseract_available():
        missing_tool("no tesseract: `make tools` installs Debian's tesseract-ocr")
    read_before, burned, after = 0, 0, []
    for study in studies:
        ids = _identifiers(study)
        needles = Needles({k: ids[k] for k in ("patient_name", "patient_id", "study_date", "hospital")})
        for video in load_truth(study)["videos"][:4]:
            frames = decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames
            cleaned = clean_frames(frames)
            lines = [o["text"] for o in video["overlays"] if o["kind"] == "phi"]
            found = needles.in_ocr(ocr_text(frames[0]))
            burned += len(lines)
            read_before += len(found)
            after += needles.in_ocr(ocr_text(cleaned[0]))
    assert read_before >= 0.9 * burned, (read_before, burned)
    assert after == []


def test_ocr_near_matches_are_looked_for_within_a_line_not_across_the_scraps_ocr_makes_of_speckle():
    needles = Needles({"operator": "Lucas Souza", "patient_id": "785477219536797"})
    assert needles.in_ocr("24Hz\n\nLucas Sooza\n") == ["operator"]  # a misread character, on its line
    assert needles.in_ocr("ID 785477219536797\n") == ["patient_id"]
    # The same letters in scraps of speckle on separate lines: exact nowhere, near only once joined.
    assert needles.in_ocr("luc\n\nas\n\nsxuza\n") == []
    assert needles.in_ocr("a5\n\nlucassouza\n") == ["operator"]  # exact is exact wherever it is


def test_lossless_video_decodes_to_exactly_the_frames_written(studies):
    frames = decode_video((studies[0] / "S0021-0000-V00.mp4").read_bytes()).frames
    cleaned = clean_frames(frames)
    back = decode_video(encode_lossless(cleaned, 24.0))
    assert len(back.frames) == len(cleaned) and abs(back.fps - 24.0) < 1e-3
    assert all(np.array_equal(a, b) for a, b in zip(back.frames, cleaned, strict=True))


# -- a whole upload, and bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mp4", "dicom"])
def test_an_upload_leaves_pseudonymous_with_clean_lossless_videos_and_a_link_home(studies, tmp_path, kind):
    blobs = BlobStore(tmp_path / "blobs")
    folder = studies[0] if kind == "mp4" else studies[0] / "dicom"
    upload = upload_from_dir(folder, blobs, 1_000_000, hospital_id="H001")
    result = deid.deidentify_upload(upload, _reader(blobs), blobs.put, POLICY, ANALYSIS, KEY, 900_000)
    out = result.upload
    assert not result.failures and len(out.videos) == 12
    assert out.study_id == deid.study_pseudonym(KEY, "H001", upload.study_id)
    assert all(v.video_id.startswith(out.study_id) for v in out.videos)
    assert out.metadata["patient_identity_removed"] == "YES" and out.metadata["age_band"]
    assert out.metadata["deid_profile"] == "analysis" and out.metadata["burned_in_annotation"] == "NO"
    assert Needles(_identifiers(studies[0])).in_bytes(out.SerializeToString()) == []
    for ref in out.videos:  # the stored copies are de-identified too
        if ref.blob_uri:
            assert Needles(_identifiers(studies[0])).in_bytes(blobs.get(ref.blob_uri)) == []
    assert result.link["study_id"] == upload.study_id and result.link["pseudonym"] == out.study_id
    assert sorted(result.link["videos"].values()) == sorted(v.video_id for v in out.videos)


def _bad_dicom(studies, change) -> bytes:
    path = sorted((studies[0] / "dicom").glob("*.dcm"))[1]
    ds = pydicom.dcmread(path)
    change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("truncated", lambda s: (sorted((s[0] / "dicom").glob("*.dcm"))[1]).read_bytes()[:5000], "unreadable"),
        (
            "not ultrasound",
            lambda s: _bad_dicom(s, lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")),
            "not ultrasound",
        ),
        (
            "wrong character set",
            lambda s: _bad_dicom(s, lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 999")),
            "SpecificCharacterSet",
        ),
        ("not DICOM", lambda s: b"%PDF-1.4 a report, not an image" * 10, "not a DICOM"),
    ],
)
def test_bad_dicom_is_a_failed_video_with_a_reason_naming_no_identifier(studies, tmp_path, name, make, reason):
    blobs = BlobStore(tmp_path / "blobs")
    upload = upload_from_dir(studies[0] / "dicom", blobs, 1_000_000, hospital_id="H001")
    bad = upload.videos[1]
    bad.ClearField("content")
    bad.inline_data, bad.filename = make(studies), "IM0002.dcm"
    bad.sha256 = hashlib.sha256(bad.inline_data).hexdigest()  # as the sender hashed what it sent
    result = deid.deidentify_upload(upload, _reader(blobs), blobs.put, POLICY, ANALYSIS, KEY, 900_000)
    [failure] = result.failures
    assert reason in failure.reason, failure.reason
    assert result.upload.videos[1].error == failure.reason and not result.upload.videos[1].HasField("inline_data")
    assert Needles(_identifiers(studies[0])).in_bytes(failure.reason.encode()) == []
    assert sum(1 for v in result.upload.videos if not v.error) == 11  # the study goes on


def test_a_video_whose_bytes_are_not_those_its_sender_hashed_fails_with_the_reason(studies, tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    upload = upload_from_dir(studies[0], blobs, 1_000_000, hospital_id="H001")
    upload.videos[2].sha256 = "0" * 64
    result = deid.deidentify_upload(upload, _reader(blobs), blobs.put, POLICY, ANALYSIS, KEY, 900_000)
    [failure] = result.failures
    assert failure.index == 2 and "checksum mismatch" in failure.reason


def test_an_upload_over_its_frame_budget_fails_the_videos_past_it_and_keeps_the_rest(studies, tmp_path):
    from rhd.imaging.video import VideoLimits

    blobs = BlobStore(tmp_path / "blobs")
    upload = upload_from_dir(studies[0], blobs, 1_000_000, hospital_id="H001")
    limits = VideoLimits(max_frames=1800, max_frame_pixels=1920 * 1080)
    whole = deid.deidentify_upload(upload, _reader(blobs), blobs.put, POLICY, ANALYSIS, KEY, 900_000, limits)
    frames = [len(decode_video(_reader(blobs)(v)).frames) for v in whole.upload.videos]
    budget = sum(frames[:3]) + 5  # room for the first three videos and 5 frames of the fourth
    result = deid.deidentify_upload(upload, _reader(blobs), blobs.put, POLICY, ANALYSIS, KEY, 900_000, limits, budget)
    assert [bool(v.error) for v in result.upload.videos] == [False] * 3 + [True] * (len(frames) - 3)
    # Each later video is refused as soon as it decodes past what is left (a refused video uses none of it).
    refused = f"more than 5 frames: over the limit (left of the upload's {budget})"
    assert all(refused in f.reason for f in result.failures)


def test_a_study_without_patient_id_fails_its_videos_saying_so(studies, tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    upload = upload_from_dir(studies[0], blobs, 1_000_000)
    del upload.metadata["patient_id"]
    result = deid.deidentify_upload(upload, _reader(blobs), blobs.put, POLICY, ANALYSIS, KEY, 900_000)
    assert result.failures and all("no patient ID" in f.reason for f in result.failures)


def test_a_dicom_file_reads_strictly(studies):
    with pytest.raises(DicomError, match="not a DICOM"):
        read_dicom(b"\0" * 200)


# -- keys -----------------------------------------------------------------------------------------------------------
def test_envelopes_open_only_with_their_key_and_survive_rotation(tmp_path):
    created = init_secrets(tmp_path)
    assert set(created) == {"pseudonym.key", "raw/k1.key", "link/k1.key"} and init_secrets(tmp_path) == []
    assert (tmp_path / "pseudonym.key").stat().st_mode & 0o077 == 0
    ring = load_keyring(tmp_path / "raw")
    sealed = ring.seal(b"Lucas Mendes Carvalho", aad=b"S1")
    assert b"Lucas" not in sealed and ring.open(sealed, aad=b"S1") == b"Lucas Mendes Carvalho"
    with pytest.raises(SecretError):
        ring.open(sealed, aad=b"S2")
    with pytest.raises(SecretError):
        load_keyring(tmp_path / "link").open(sealed, aad=b"S1")
    rotate(tmp_path / "raw", "k2")
    rotated = load_keyring(tmp_path / "raw")
    assert rotated.current == "k2" and rotated.open(sealed, aad=b"S1") == b"Lucas Mendes Carvalho"
    assert len(load_pseudonym_key(tmp_path)) == 32


def test_a_hospital_sealing_by_the_documented_contract_is_opened_by_deid(tmp_path):
    """docs/hospitals.md, followed with nothing of ours but the protobuf: the envelope built by hand with the
    cryptography library, keyed by the upload id, opens as the same upload; under another record key it does not."""
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from rhd.runtime.secrets import opened_upload

    init_secrets(tmp_path)
    kid = (tmp_path / "raw" / "current").read_text().strip()
    key = bytes.fromhex((tmp_path / "raw" / f"{kid}.key").read_text().strip())
    upload = pb.StudyUpload(schema="rhd.v1.StudyUpload", study_id="AC123", upload_id="u-1", hospital_id="H7")
    upload.videos.add(video_id="v", filename="v.mp4", inline_data=b"\x00\x01")
    nonce = os.urandom(12)
    envelope = b"RHDE1" + bytes([len(kid)]) + kid.encode() + nonce
    envelope += AESGCM(key).encrypt(nonce, upload.SerializeToString(), b"u-1")
    record = pb.SealedRecord(schema="rhd.v1.SealedRecord", kind="upload", key_id=kid, envelope=envelope)
    raw = load_keyring(tmp_path / "raw")
    assert opened_upload(pb.SealedRecord.FromString(record.SerializeToString()), b"u-1", raw) == upload
    with pytest.raises(SecretError):
        opened_upload(record, b"u-2", raw)


def test_the_audit_searches_records_as_bytes_but_pixels_only_by_ocr():
    """Pixel bytes match a short identifier by chance (a time as digits among grey levels): a frame's pixels are
    left to OCR; every other byte of the record, and every byte of a record that does not parse, is searched."""
    from rhd.local.audit import _searchable

    needles = Needles({"study_time": "10:59"})
    frame = pb.Frame(key=pb.FrameKey(study_id="P1"), bgr=b"\x00" * 64 + b"105900" + b"\x00" * 64)
    assert needles.in_bytes(frame.SerializeToString()) == ["study_time"]
    assert needles.in_bytes(_searchable("frames.decoded.v1", frame.SerializeToString())) == []
    leaked = pb.Frame(key=pb.FrameKey(study_id="10:59"), bgr=b"\x00" * 8)
    assert needles.in_bytes(_searchable("frames.decoded.v1", leaked.SerializeToString())) == ["study_time"]
    assert needles.in_bytes(_searchable("frames.decoded.v1", b"\xff\xff 10:59")) == ["study_time"]


def test_in_one_region_the_cleaned_frames_are_kept_in_the_frame_store_and_split_reads_them_there(studies, tmp_path):
    """deid with the frame store at hand (one region, RHD_FRAME_CODEC=store) keeps each video's cleaned frames there,
    with no lossless encode; split's records then point into that file (nothing written again) and carry exactly the
    frames the lossless copy would have given."""
    import asyncio

    from rhd.runtime.frames import SCHEME, FrameStore
    from rhd.runtime.settings import Settings
    from rhd.runtime.stage import Position
    from rhd.runtime.topics import FRAMES_DECODED
    from rhd.split.service import Split

    blobs = BlobStore(tmp_path / "blobs")
    upload = upload_from_dir(studies[0], blobs, 1_000_000, hospital_id="H001")
    store = FrameStore(tmp_path / "blobs", 3600)
    kept = deid.deidentify_upload(
        upload, _reader(blobs), blobs.put, POLICY, ANALYSIS, KEY, 900_000, keep=store.put_video
    ).upload
    copied = deid.deidentify_upload(upload, _reader(blobs), blobs.put, POLICY, ANALYSIS, KEY, 900_000).upload
    assert all(v.blob_uri.startswith(SCHEME) and v.fps > 0 and not v.HasField("inline_data") for v in kept.videos)
    assert [v.video_id for v in kept.videos] == [v.video_id for v in copied.videos]
    files = sorted(store.root.iterdir())
    assert len(files) == len(kept.videos)
    split = Split()
    asyncio.run(split.start(Settings(blob_dir=tmp_path / "blobs")))
    frames = [o.message for o in split.handle(kept, Position(0, 0, 0.0)) if o.topic == FRAMES_DECODED]
    assert sorted(store.root.iterdir()) == files  # split wrote nothing: its records point into deid's files
    assert {f.stored.uri for f in frames} == {v.blob_uri for v in kept.videos}
    by_video = {v.video_id: decode_video(_reader(blobs)(v)).frames for v in copied.videos}
    assert len(frames) == sum(map(len, by_video.values()))
    for frame in frames:
        assert np.array_equal(split.frames.image(frame), by_video[frame.key.video_id][frame.key.frame_index])
        assert frame.fps == pytest.approx(kept.videos[0].fps) and frame.HasField("sector")
