"""Two regions, each with its own blob store: a de-identified video too large to go inline crosses with its study's
records (pieces on studies.deidentified.v1, ahead of the study), and split, in the other region, puts it in its own
store and splits the study as if both ran in one region."""

import asyncio
import random

import pytest
from rhd.local.publish import upload_from_dir
from rhd.runtime.blobs import BlobStore, pieces, uri_of
from rhd.runtime.secrets import is_sealed, sealed_upload
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position
from rhd.runtime.topics import FRAMES_DECODED, FRAMES_DONE, STUDIES_DEIDENTIFIED, STUDIES_LINKS
from rhd.split.service import Split
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.v1 import rhd_pb2 as pb
from test_faults import _deid


def test_a_blob_given_in_pieces_in_any_order_is_whole_once_the_last_arrives(tmp_path):
    store, data = BlobStore(tmp_path), random.Random(3).randbytes(10_001)
    uri, cut = uri_of(data), pieces(data, 1_000)
    assert len(cut) == 11 and b"".join(cut) == data and pieces(b"", 5) == [b""]
    order = list(range(len(cut)))
    random.Random(4).shuffle(order)
    done = [store.put_part(uri, i, len(cut), cut[i]) for i in order[:-1]]
    assert not any(done) and not (tmp_path / uri[-64:][:2]).exists()
    assert store.put_part(uri, order[0], len(cut), cut[order[0]]) is False  # a piece given again: harmless
    assert store.put_part(uri, order[-1], len(cut), cut[order[-1]]) is True
    assert store.get(uri) == data and uri == store.put(data)
    assert not any((tmp_path / "parts").iterdir())  # the pieces are gone
    assert store.put_part(uri, 0, len(cut), cut[0]) is True  # a batch redone after the blob is whole
    with pytest.raises(ValueError, match="out of range"):
        store.put_part(uri, 11, 11, b"")
    wrong = uri_of(b"other bytes")
    store.put_part(wrong, 0, 2, b"other ")
    with pytest.raises(ValueError, match="do not hash to it"):
        store.put_part(wrong, 1, 2, b"bytes!")
    with pytest.raises(FileNotFoundError):
        store.get(wrong)


def test_videos_cross_with_their_study_and_split_reads_them_from_its_own_regions_store(tmp_path):
    [study_dir] = synth_studies(8, 1, tmp_path / "in", SynthConfig(videos_per_study=2, duration_s=(1.0, 1.0)))
    deid = _deid(tmp_path / "home")
    deid.budget, deid.two_regions = 200_000, True  # the videos do not fit inline: they must travel
    upload = upload_from_dir(study_dir, BlobStore(tmp_path / "home" / "blobs"), 0, "H001", deid.raw.seal)
    key, value, _ = sealed_upload(upload, deid.raw)
    outputs = deid.handle(pb.SealedRecord.FromString(value), Position(0, 1, 0.0, key))
    assert [o.topic for o in outputs][:1] == [STUDIES_LINKS]
    crossing = [o for o in outputs if o.topic == STUDIES_DEIDENTIFIED]
    *parts, study = (o.message for o in crossing)
    assert {o.key for o in crossing} == {study.study_id}  # one key: one partition, in order, study last
    assert parts and all(p.HasField("blob_part") and not p.videos for p in parts)
    assert all(len(p.SerializeToString()) <= 200_000 + 1_000 for p in parts)
    blobs = {v.blob_uri for v in study.videos}
    assert len(blobs) == 2 and {p.blob_part.blob_uri for p in parts} == blobs
    # Nothing de-identified was written to the home region's store: it holds the sealed raw upload only.
    home = [p for p in (tmp_path / "home" / "blobs").rglob("*") if p.is_file()]
    assert home and all(is_sealed(p.read_bytes()[:8]) for p in home)

    split = Split()
    asyncio.run(split.start(Settings(blob_dir=tmp_path / "gpu" / "blobs")))
    frames: list = []
    for offset, message in enumerate(o.message for o in crossing):
        assert split.validate(message) is None
        frames += split.handle(message, Position(0, offset, 0.0, study.study_id.encode()))
    done = [o.message.manifest for o in frames if o.topic == FRAMES_DONE]
    assert [v.status for v in done[0].videos] == [pb.VIDEO_STATUS_DECODED] * 2
    assert sum(v.frame_count for v in done[0].videos) == sum(1 for o in frames if o.topic == FRAMES_DECODED) > 0
    assert all(BlobStore(tmp_path / "gpu" / "blobs").get(uri) for uri in blobs)
    # A piece that cannot be stored is dead-lettered alone: it closes no study.
    assert split.failed(parts[0], "blob piece without its blob") == []
