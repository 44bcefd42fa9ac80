"""Results back to the hospital: re-linking shows a hospital its own studies only, a tombstone erases a link wherever
the map is rebuilt (watch included), erasure stays within the hospital, and the access trail names no identifier."""

import asyncio
import json

import pytest
from rhd.deid.ops import link_bytes, patient_key, pseudonym, study_pseudonym
from rhd.local.relink import (
    ERASE,
    RESULTS,
    access_trail,
    csv_text,
    erase,
    erasure_plan,
    latest_diagnoses,
    open_trail,
    patient_pseudonyms,
    relink,
    results,
    sealed_trail,
    trail,
    trail_entries,
    trail_entry,
    undiagnosed,
    video_blobs,
)
from rhd.runtime.links import link_map
from rhd.runtime.secrets import SEALED_SCHEMA, Keyring, RegionError, SecretError
from rhd.runtime.settings import Settings
from rhd.runtime.topics import (
    ACCESS_TRAIL,
    STUDIES_DIAGNOSED,
    STUDIES_LINKS,
    all_topic_names,
    ensure_topics,
    topic_configs,
)
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import Progress

KEY = bytes(range(32))  # the pseudonym key
LINKS = Keyring({"k1": bytes(32)}, "k1")
CNS = "700000000000117"


def link(hospital: str, study_id: str, patient_id: str, accession: str = "") -> dict:
    pseudo = study_pseudonym(KEY, hospital, study_id)
    return {
        "pseudonym": pseudo,
        "hospital_id": hospital,
        "study_id": study_id,
        "upload_id": "u-" + study_id,
        "accession_number": accession,
        "patient": pseudonym(KEY, "patient", patient_key(hospital, patient_id)),
        "videos": {"v0.mp4": f"{pseudo}-V00"},
    }


def sealed(one: dict, keyring: Keyring = LINKS) -> tuple[bytes, bytes]:
    record = pb.SealedRecord(
        schema=SEALED_SCHEMA, kind="link", key_id=keyring.current, envelope=keyring.seal(link_bytes(one))
    )
    return one["pseudonym"].encode(), record.SerializeToString()


def diagnosis(study: str, label: int = pb.LABEL_DEFINITE, at: int = 100) -> pb.Diagnosis:
    d = pb.Diagnosis(study_id=study, label=label, probabilities={"normal": 0.1, "borderline": 0.2, "definite": 0.7})
    d.completeness = pb.COMPLETENESS_COMPLETE
    d.diagnosed_at.FromSeconds(at)
    return d


A1, A2, B1 = link("A", "S1", CNS, "ACC-A1"), link("A", "S2", "local-22", "ACC-A2"), link("B", "S1", CNS, "ACC-B1")


def test_relink_shows_a_hospital_its_own_studies_under_its_own_ids_only():
    links = link_map([sealed(A1), sealed(A2), sealed(B1)], LINKS)
    diagnoses = [diagnosis(A1["pseudonym"]), diagnosis(B1["pseudonym"], pb.LABEL_NORMAL), diagnosis("Punknown")]
    [mine] = relink(links, diagnoses, "A")
    assert (mine.study_id, mine.accession_number, mine.label) == ("S1", "ACC-A1", "definite")
    assert mine.pseudonym == A1["pseudonym"] and mine.completeness == "COMPLETE"
    # B's study has the same study id and the same child: it is B's, and only B sees it.
    [theirs] = relink(links, diagnoses, "B")
    assert (theirs.study_id, theirs.accession_number, theirs.label) == ("S1", "ACC-B1", "normal")
    assert relink(links, diagnoses, "C") == []
    assert undiagnosed(links, (d.study_id for d in diagnoses), "A") == 1  # S2


def test_the_latest_diagnosis_of_a_study_is_returned_once():
    first, again = diagnosis("P1", pb.LABEL_BORDERLINE, at=100), diagnosis("P1", pb.LABEL_DEFINITE, at=200)
    assert latest_diagnoses([again, first])["P1"].label == pb.LABEL_DEFINITE
    assert latest_diagnoses([first, again])["P1"].label == pb.LABEL_DEFINITE


def test_a_tombstone_wins_over_the_link_before_it():
    key_a1, _ = sealed(A1)
    assert set(link_map([sealed(A1), sealed(A2), (key_a1, None)], LINKS)) == {A2["pseudonym"]}
    # A study sent again after its erasure is linked again: the latest record wins.
    assert set(link_map([sealed(A1), (key_a1, None), sealed(A1)], LINKS)) == {A1["pseudonym"]}
    # A tombstone of a study never linked, a link copied under another key, garbage, a foreign key: nothing re-linked.
    other = Keyring({"x": bytes([7]) * 32}, "x")
    records = [
        (b"Pnever", None),
        (A2["pseudonym"].encode(), sealed(A1)[1]),
        (b"P2", b"\xff garbage"),
        sealed(B1, other),
    ]
    assert link_map(records, LINKS) == {}


def test_erasure_takes_the_patients_studies_at_this_hospital_and_only_blobs_no_other_study_holds():
    a3 = link("A", "S3", CNS, "ACC-A3")
    links = link_map([sealed(A1), sealed(A2), sealed(a3), sealed(B1)], LINKS)
    # The CNS keys the same child at every hospital; a local ID only at its own.
    assert patient_pseudonyms(KEY, "A", [CNS]) == patient_pseudonyms(KEY, "B", [CNS])
    assert patient_pseudonyms(KEY, "A", ["local-22"]) != patient_pseudonyms(KEY, "B", ["local-22"])
    blobs = video_blobs(
        [
            pb.StudyUpload(study_id=A1["pseudonym"], videos=[pb.VideoRef(blob_uri="blob:a1"), pb.VideoRef()]),
            pb.StudyUpload(study_id=a3["pseudonym"], videos=[pb.VideoRef(blob_uri="blob:shared")]),
            pb.StudyUpload(study_id=B1["pseudonym"], videos=[pb.VideoRef(blob_uri="blob:shared")]),
        ]
    )
    plan = erasure_plan(links, patient_pseudonyms(KEY, "A", [CNS]), "A", blobs)
    assert plan.studies == sorted([A1["pseudonym"], a3["pseudonym"]])  # not B's study of the same child
    assert plan.blobs == ["blob:a1"]  # blob:shared is B's too
    assert erasure_plan(links, patient_pseudonyms(KEY, "A", ["nobody"]), "A", blobs).studies == []


def test_trail_entries_name_pseudonyms_never_identifiers():
    links = link_map([sealed(A1), sealed(A2)], LINKS)
    rows = relink(links, [diagnosis(A1["pseudonym"]), diagnosis(A2["pseudonym"])], "A")
    entry = trail_entry(RESULTS, "A", (r.pseudonym for r in rows), user="dr.ana", purpose="clinic follow-up", at=0)
    text = json.dumps(entry.__dict__)
    for identifier in ("S1", "S2", "ACC-A1", "ACC-A2", CNS, "local-22", "u-S1", "v0.mp4"):
        assert identifier not in text
    assert entry.studies == tuple(sorted([A1["pseudonym"], A2["pseudonym"]]))
    assert (entry.user, entry.at, entry.hospital) == ("dr.ana", "1970-01-01T00:00:00+00:00", "A")
    key, value, headers = sealed_trail(entry, LINKS)
    assert key == b"A" and headers == [("rhd-key-id", b"k1")]
    assert b"dr.ana" not in value and A1["pseudonym"].encode() not in value  # sealed
    assert open_trail(key, value, LINKS) == entry
    with pytest.raises(SecretError):
        open_trail(b"B", value, LINKS)  # bound to its key: not replayable as another hospital's entry
    erased = trail_entry(ERASE, "B", [B1["pseudonym"]], user="dpo", at=10)
    records = [sealed_trail(e, LINKS)[:2] for e in (erased, entry)]
    assert trail(records, LINKS) == [entry, erased]  # oldest first
    assert trail(records, LINKS, "B") == [erased]


def test_the_csv_holds_the_hospitals_ids_and_no_pseudonym():
    links = link_map([sealed(A1)], LINKS)
    text = csv_text(relink(links, [diagnosis(A1["pseudonym"])], "A"))
    header, row = text.splitlines()
    assert header.startswith("study_id,accession_number,label,p_normal,p_borderline,p_definite,")
    assert row.startswith("S1,ACC-A1,definite,0.1000,0.2000,0.7000,COMPLETE,")
    assert A1["pseudonym"] not in text


def test_watch_files_an_erased_study_back_under_its_pseudonym():
    progress = Progress(links=LINKS)
    key, value = sealed(A1)
    progress.add(STUDIES_LINKS, value, key)
    progress.add(STUDIES_DIAGNOSED, diagnosis(A1["pseudonym"]).SerializeToString())
    assert set(progress.diagnoses) == {"S1"} and progress.video_names == {f"{A1['pseudonym']}-V00": "v0.mp4"}
    progress.add(STUDIES_LINKS, None, key)  # the tombstone
    assert set(progress.diagnoses) == {A1["pseudonym"]} and progress.video_names == {}
    progress.add(STUDIES_DIAGNOSED, diagnosis(A1["pseudonym"], at=300).SerializeToString())
    assert set(progress.diagnoses) == {A1["pseudonym"]}  # later records stay pseudonymous too


def test_the_link_map_is_compacted_and_the_trail_is_created_and_kept():
    assert topic_configs()[STUDIES_LINKS]["cleanup.policy"] == "compact"
    assert topic_configs()[ACCESS_TRAIL] == {"cleanup.policy": "delete", "retention.ms": "-1"}
    assert ACCESS_TRAIL in all_topic_names() and f"{STUDIES_LINKS}.dlq" not in topic_configs()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: results(s, "A"),
        lambda s: erase(s, "A", [CNS]),
        lambda s: access_trail(s),
    ],
    ids=["results", "erase", "access-trail"],
)
def test_re_linking_refuses_to_run_outside_the_home_region(call, tmp_path):
    settings = Settings(region="gpu", home_region="br", secrets_dir=tmp_path, bootstrap_servers="127.0.0.1:1")
    with pytest.raises(RegionError):
        asyncio.run(call(settings))


def test_a_read_of_many_studies_is_trailed_in_entries_that_fit_a_message(monkeypatch):
    monkeypatch.setattr("rhd.local.relink.STUDIES_PER_ENTRY", 2)
    entries = trail_entries(RESULTS, "A", ["P3", "P1", "P2"], user="u", at=0)
    assert [e.studies for e in entries] == [("P1", "P2"), ("P3",)]
    assert [e.studies for e in trail_entries(RESULTS, "A", [], user="u", at=0)] == [()]  # an empty read is trailed


def test_a_broker_that_refuses_topic_configs_gets_the_topics_without_them(monkeypatch, caplog):
    asked: list[list] = []

    class RefusingAdmin:
        def __init__(self, **_):
            pass

        async def start(self):
            pass

        async def close(self):
            pass

        async def create_topics(self, topics):
            asked.append(topics)
            refuse = len(asked) == 1
            errors = [(t.name, 40 if refuse and t.topic_configs else 0, None) for t in topics]
            return type("Response", (), {"topic_errors": errors})()

    monkeypatch.setattr("rhd.runtime.kafka.AIOKafkaAdminClient", RefusingAdmin)
    created = asyncio.run(ensure_topics(Settings(bootstrap_servers="broker:9092"), 2))
    assert sorted(created) == sorted(all_topic_names())
    assert sorted(t.name for t in asked[1]) == sorted(topic_configs()) and not any(t.topic_configs for t in asked[1])
    assert "refused the configs" in caplog.text
