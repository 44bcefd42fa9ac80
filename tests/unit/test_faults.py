"""Faults inside a stage: an upload that cannot be handled as a whole is still answered (its study ends FAILED,
saying why), and nothing identifying leaks into what is written about it."""

from rhd.assemble.ops import Assembler
from rhd.deid import service as deid_service
from rhd.deid.anonymity import Census
from rhd.deid.policy import load_policy
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import Output
from rhd.runtime.secrets import init_secrets, load_keyring, load_pseudonym_key, sealed_upload
from rhd.runtime.stage import Position
from rhd.runtime.topics import FRAMES_DONE, STUDIES_DEIDENTIFIED, STUDIES_LINKS, STUDIES_UPLOADED, dlq
from rhd.split.service import Split
from rhd.v1 import rhd_pb2 as pb


def _deid(tmp_path) -> deid_service.Deid:
    """The deid stage as start() makes it, without the census read from the broker."""
    init_secrets(tmp_path / "secrets")
    stage = deid_service.Deid()
    stage.policy = load_policy()
    stage.profile = stage.policy.profile("analysis")
    stage.key = load_pseudonym_key(tmp_path / "secrets")
    stage.raw, stage.links = load_keyring(tmp_path / "secrets" / "raw"), load_keyring(tmp_path / "secrets" / "link")
    stage.blobs, stage.budget, stage.census = BlobStore(tmp_path / "blobs"), 900_000, Census()
    return stage


def test_an_upload_deid_cannot_handle_whole_is_answered_failed_and_names_no_one(tmp_path, monkeypatch):
    stage = _deid(tmp_path)
    upload = pb.StudyUpload(
        schema="rhd.v1.StudyUpload", study_id="ECHO-77", upload_id="u-77", hospital_id="H001", metadata={"x": "y"}
    )
    upload.videos.add(video_id="v0", filename="v0.mp4", inline_data=b"\x00")
    upload.videos.add(video_id="v1", filename="v1.mp4", inline_data=b"\x00")
    key, value, _ = sealed_upload(upload, stage.raw)

    def boom(*args, **kwargs):
        raise RuntimeError("cannot handle Maria da Silva's study")

    monkeypatch.setattr(deid_service, "deidentify_upload", boom)
    outputs: list[Output] = stage.handle(pb.SealedRecord.FromString(value), Position(0, 5, 0.0, key))
    by_topic = {o.topic: o.message for o in outputs}
    assert set(by_topic) == {dlq(STUDIES_UPLOADED), STUDIES_LINKS, STUDIES_DEIDENTIFIED}
    letter, answer = by_topic[dlq(STUDIES_UPLOADED)], by_topic[STUDIES_DEIDENTIFIED]
    assert "RuntimeError" in letter.reason and "Maria" not in letter.reason
    assert stage.raw.open(pb.SealedRecord.FromString(letter.original_bytes).envelope, key)  # sealed, kept
    assert answer.study_id.startswith("P") and answer.study_id != "ECHO-77" and not answer.metadata
    assert [v.error for v in answer.videos] == [letter.reason] * 2
    link = stage.links.open(by_topic[STUDIES_LINKS].envelope)
    assert b"ECHO-77" in link and b"H001" in link  # the hospital reads the FAILED answer under its own id


def test_an_upload_split_cannot_handle_whole_still_closes_its_study_failed(tmp_path):
    split = Split()
    upload = pb.StudyUpload(study_id="P1", upload_id="u-1")
    upload.videos.add(video_id="P1-V00", inline_data=b"...")
    [manifest] = split.failed(upload, "UnicodeDecodeError: metadata is not UTF-8")
    assert manifest.topic == FRAMES_DONE and manifest.key == "P1"
    study = Assembler(deadline_s=60).add("P1", manifest.message, at=0.0)
    assert study is not None and study.completeness == pb.COMPLETENESS_FAILED
    assert "metadata is not UTF-8" in study.reason
    assert split.failed(pb.StudyUpload(), "no id") == []  # nothing names a study: the dead letter is all
