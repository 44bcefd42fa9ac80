"""`rhd dlq` on the real embedded broker: dead letters listed and shown, and replayed where they came from, under
their original key with the schema header (sealed uploads under the key their envelope is bound to)."""

import asyncio

import pytest
from rhd.cli import main
from rhd.local import dlq
from rhd.local.broker import broker_for
from rhd.runtime import kafka
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import SCHEMA_HEADER, dead_letter_output, header, schema_headers
from rhd.runtime.secrets import RAW_KEYRING, init_secrets, load_keyring, sealed_upload
from rhd.runtime.settings import Settings, get_settings
from rhd.runtime.topics import FRAMES_DECODED, STUDIES_FEATURES, STUDIES_UPLOADED
from rhd.runtime.topics import dlq as dlq_of
from rhd.v1 import rhd_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_dead_letters_are_listed_shown_and_replayed_where_they_came_from(tmp_path, monkeypatch, capsys, broker_kind):
    init_secrets(tmp_path / "secrets")
    raw = load_keyring(tmp_path / "secrets" / RAW_KEYRING)
    blobs = BlobStore(tmp_path / "blobs")
    frame = pb.Frame(key=pb.FrameKey(study_id="P1", video_id="P1-V00", frame_index=4), height=2, width=2)
    features = pb.StudyFeatures(study_id="P2", completeness=pb.COMPLETENESS_COMPLETE)
    upload = pb.StudyUpload(schema="rhd.v1.StudyUpload", study_id="ECHO-1", upload_id="u-1", hospital_id="H001")
    upload_key, sealed, _ = sealed_upload(upload, raw)
    letters = [
        dead_letter_output(
            FRAMES_DECODED,
            "inspect",
            "frame unreadable",
            key=b"P1-V00",
            study_id="P1",
            original=frame.SerializeToString(),
        ),
        dead_letter_output(  # its original moved to the blob store (too large for a letter)
            STUDIES_FEATURES,
            "diagnose",
            "model missing",
            key=b"P2",
            study_id="P2",
            original_blob_uri=blobs.put(features.SerializeToString()),
        ),
        dead_letter_output(STUDIES_UPLOADED, "deid", "DecodeError (details withheld)", key=b"P3", original=sealed),
    ]
    letters[2].message.sealed_key = raw.seal(upload_key)

    async def run(settings: Settings):
        for out in letters:
            await kafka.send_all(settings, "test", out.topic, [(out.key.encode(), out.message.SerializeToString(), [])])
        listed = await dlq.read_letters(settings)
        done = await dlq.replay(settings, listed)
        back = {
            topic: await kafka.read_records(settings, topic, 0.0, "test-read")
            for topic in (FRAMES_DECODED, STUDIES_FEATURES, STUDIES_UPLOADED)
        }
        return listed, done, back

    broker = broker_for(Settings(broker=broker_kind), tmp_path)
    try:
        asyncio.run(broker.start(2))
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers, secrets_dir=tmp_path / "secrets", blob_dir=tmp_path / "blobs"
        )
        listed, done, back = asyncio.run(run(settings))
        for name, value in (
            ("BOOTSTRAP_SERVERS", broker.bootstrap_servers),
            ("SECRETS_DIR", str(tmp_path / "secrets")),
            ("BLOB_DIR", str(tmp_path / "blobs")),
        ):
            monkeypatch.setenv(f"RHD_{name}", value)
        get_settings.cache_clear()
        assert main(["dlq", "list", "--stage", "inspect"]) == 0
        listing = capsys.readouterr().out
        assert main(["dlq", "show", next(x.where for x in listed if x.letter.stage == "inspect")]) == 0
        shown = capsys.readouterr().out
        with pytest.raises(SystemExit, match="name a letter"):
            main(["dlq", "replay"])  # never every letter by accident
    finally:
        get_settings.cache_clear()
        broker.stop()

    assert len(listed) == 3 and {x.where.split("[")[0] for x in listed} == {
        dlq_of(FRAMES_DECODED),
        dlq_of(STUDIES_FEATURES),
        dlq_of(STUDIES_UPLOADED),
    }
    assert "unreadable" in listing and "1 dead letters" in listing and "model missing" not in listing
    assert "frames.decoded.v1[" in shown and "inspect" in shown and "bytes in the letter" in shown
    assert all("replayed to" in what for _, what in done), done
    [f] = back[FRAMES_DECODED]
    assert f.key == b"P1-V00" and pb.Frame.FromString(f.value) == frame
    assert header(f.headers, SCHEMA_HEADER) == "rhd.v1.Frame" and header(f.headers, dlq.REPLAY_HEADER)
    [s] = back[STUDIES_FEATURES]
    assert (
        pb.StudyFeatures.FromString(s.value) == features and header(s.headers, SCHEMA_HEADER) == "rhd.v1.StudyFeatures"
    )
    [u] = back[STUDIES_UPLOADED]
    assert u.key == upload_key and u.value == sealed  # deid opens it again: its envelope is bound to this key
    assert schema_headers(pb.SealedRecord())[0][1].decode() == header(u.headers, SCHEMA_HEADER)
