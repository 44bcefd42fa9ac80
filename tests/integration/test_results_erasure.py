"""Results back to the hospital on the real embedded broker: links and diagnoses as deid and diagnose write them,
`rhd results` re-links hospital A's studies and never B's, `rhd erase` tombstones a patient's links and deletes their
video blobs so results and watch no longer re-link them, the access trail lists every read, and `rhd audit` finds no
identifier in the sealed trail or link map."""

import asyncio
import stat

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from rhd.cli import main
from rhd.deid.ops import link_bytes, patient_key, pseudonym, study_pseudonym
from rhd.local.audit import audit
from rhd.local.broker import broker_for
from rhd.local.relink import ERASE, RESULTS, access_trail, erase, results
from rhd.runtime.blobs import BlobStore
from rhd.runtime.frames import FrameStore
from rhd.runtime.secrets import LINK_KEYRING, SEALED_SCHEMA, init_secrets, load_keyring, load_pseudonym_key
from rhd.runtime.settings import Settings, get_settings
from rhd.runtime.topics import STUDIES_DEIDENTIFIED, STUDIES_DIAGNOSED, STUDIES_LINKS
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import follow

pytestmark = pytest.mark.integration

CNS = "700000000000117"  # the child at hospital A (studies S1, S2) and at hospital B (the same CNS)
OTHER = "local-0042"  # another child at A


def studies(key: bytes) -> list[dict]:
    def one(hospital: str, study_id: str, patient_id: str, accession: str) -> dict:
        pseudo = study_pseudonym(key, hospital, study_id)
        return {
            "pseudonym": pseudo,
            "hospital_id": hospital,
            "study_id": study_id,
            "upload_id": f"upload-{hospital}-{study_id}",
            "accession_number": accession,
            "patient": pseudonym(key, "patient", patient_key(hospital, patient_id)),
            "videos": {f"{study_id}-echo.mp4": f"{pseudo}-V00"},
        }

    return [
        one("H-A", "ECHO-2024-0117", CNS, "ACC-A-0117"),
        one("H-A", "ECHO-2024-0118", CNS, "ACC-A-0118"),
        one("H-A", "ECHO-2024-0200", OTHER, "ACC-A-0200"),
        one("H-B", "ECHO-2024-0117", CNS, "ACC-B-0117"),  # B's own study, the same id as one of A's
    ]


def test_results_go_back_to_their_own_hospital_and_erasure_takes_a_patient_out(tmp_path, monkeypatch, broker_kind):
    secrets, blob_dir = tmp_path / "secrets", tmp_path / "blobs"
    init_secrets(secrets)
    key, links = load_pseudonym_key(secrets), load_keyring(secrets / LINK_KEYRING)
    linked = studies(key)
    blobs = BlobStore(blob_dir)
    video_blob = {s["pseudonym"]: blobs.put(f"clean video of {s['pseudonym']}".encode()) for s in linked}
    # Each video's decoded frames, as split stores them.
    frames = FrameStore(blob_dir, 3600)
    stored = {
        s["pseudonym"]: frames.put_video(f"{s['pseudonym']}-V00", [np.zeros((4, 4, 3), np.uint8)]) for s in linked
    }
    broker = broker_for(Settings(broker=broker_kind), tmp_path, log_file=tmp_path / "broker.log")

    async def publish(settings: Settings) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await producer.start()
        for s in linked:
            pseudo = s["pseudonym"].encode()
            sealed = pb.SealedRecord(
                schema=SEALED_SCHEMA, kind="link", key_id=links.current, envelope=links.seal(link_bytes(s))
            )
            await producer.send_and_wait(STUDIES_LINKS, sealed.SerializeToString(), key=pseudo)
            upload = pb.StudyUpload(study_id=s["pseudonym"], hospital_id=s["hospital_id"])
            upload.videos.add(video_id=f"{s['pseudonym']}-V00", blob_uri=video_blob[s["pseudonym"]])
            await producer.send_and_wait(STUDIES_DEIDENTIFIED, upload.SerializeToString(), key=pseudo)
            diagnosis = pb.Diagnosis(study_id=s["pseudonym"], label=pb.LABEL_NORMAL, probabilities={"normal": 0.9})
            diagnosis.diagnosed_at.GetCurrentTime()
            await producer.send_and_wait(STUDIES_DIAGNOSED, diagnosis.SerializeToString(), key=pseudo)
        await producer.stop()

    async def run(settings: Settings):
        await publish(settings)
        before, waiting = await results(settings, "H-A", user="dr.ana", purpose="screening follow-up")
        erased = await erase(settings, "H-A", [CNS], user="dpo")
        after, _ = await results(settings, "H-A", user="dr.ana", purpose="screening follow-up")
        theirs, _ = await results(settings, "H-B", user="dr.bia")
        # Until watch has re-linked what is linked (the diagnoses may be read before their links).
        a_erased = {s["pseudonym"] for s in linked if s["hospital_id"] == "H-A" and s["study_id"] != "ECHO-2024-0200"}
        shown = {"ECHO-2024-0200", "H-B/ECHO-2024-0117", *a_erased}  # two hospitals' ECHO-2024-0117: qualified
        watched = await follow(settings, lambda p: set(p.diagnoses) == shown, timeout_s=30)
        entries = await access_trail(settings, "H-A")
        report = await audit(settings, [{"study_id": [s["study_id"] for s in linked], "patient_id": [CNS, OTHER]}])
        return before, waiting, erased, after, theirs, watched, entries, report

    try:
        asyncio.run(broker.start(2))
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, secrets_dir=secrets, blob_dir=blob_dir)
        before, waiting, erased, after, theirs, watched, entries, report = asyncio.run(run(settings))
        # The commands, on the same broker: a CSV only its owner reads, and the trail as printed.
        for name, value in (("BOOTSTRAP_SERVERS", broker.bootstrap_servers), ("SECRETS_DIR", str(secrets))):
            monkeypatch.setenv(f"RHD_{name}", value)
        get_settings.cache_clear()
        out = tmp_path / "results.csv"
        assert main(["results", "--hospital", "H-A", "--out", str(out), "--purpose", "export"]) == 0
        csv_text = out.read_text()
        assert main(["access-trail", "--hospital", "H-A"]) == 0
        monkeypatch.setenv("RHD_REGION", "gpu")
        get_settings.cache_clear()
        with pytest.raises(SystemExit, match="home region"):
            main(["results", "--hospital", "H-A"])
    finally:
        get_settings.cache_clear()
        broker.stop()

    a_cns = [s for s in linked if s["hospital_id"] == "H-A" and s["study_id"] != "ECHO-2024-0200"]
    # A sees its three studies under its own ids; B's study with the same id as A's is not among them.
    assert sorted((r.study_id, r.accession_number) for r in before) == [
        ("ECHO-2024-0117", "ACC-A-0117"),
        ("ECHO-2024-0118", "ACC-A-0118"),
        ("ECHO-2024-0200", "ACC-A-0200"),
    ]
    assert waiting == 0
    assert [(r.study_id, r.accession_number) for r in theirs] == [("ECHO-2024-0117", "ACC-B-0117")]
    # The erasure: A's two studies of the child, not B's; their blobs and stored frames gone, the others kept.
    assert erased.studies == sorted(s["pseudonym"] for s in a_cns) and erased.blobs_deleted == 2 + 2
    for s in linked:
        assert frames.path(stored[s["pseudonym"]]).exists() == (s not in a_cns)
        assert (blob_dir / video_blob[s["pseudonym"]][-64:][:2] / video_blob[s["pseudonym"]][-64:]).exists() == (
            s not in a_cns
        )
    assert [(r.study_id, r.accession_number) for r in after] == [("ECHO-2024-0200", "ACC-A-0200")]
    assert "ACC-A-0200" in csv_text and "ACC-A-0117" not in csv_text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # watch re-links what is linked, and leaves the erased studies under their pseudonyms.
    assert set(watched.diagnoses) == {"ECHO-2024-0200", "H-B/ECHO-2024-0117", *(s["pseudonym"] for s in a_cns)}
    # The trail: every read and the erasure, by pseudonyms, in order (B's read is B's).
    assert [(e.action, e.user, len(e.studies)) for e in entries] == [
        (RESULTS, "dr.ana", 3),
        (ERASE, "dpo", 2),
        (RESULTS, "dr.ana", 1),
    ]
    assert entries[1].blobs_deleted == 4 and set(entries[1].studies) == {s["pseudonym"] for s in a_cns}
    assert entries[0].purpose == "screening follow-up"
    # The audit reads the sealed trail and link map (tombstones included) and finds no identifier there.
    assert report.clean, report.hits
    assert report.records >= len(linked) * 3 + 2 + 4  # links, deidentified, diagnoses, tombstones, trail entries
