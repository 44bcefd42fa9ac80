"""The frame store (claim check for pixels): split writes each video's frames once; the records carry a reference
of a few bytes; every later stage reads the very pixels split decoded; an expired or missing frame fails with why."""

import asyncio
import os
import time

import numpy as np
import pytest
from rhd.inspect.service import Inspect
from rhd.local.publish import upload_from_dir
from rhd.runtime.blobs import BlobStore
from rhd.runtime.codec import frame_pixels
from rhd.runtime.frames import FrameStore, FrameStoreError
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position
from rhd.runtime.topics import FRAMES_DECODED, FRAMES_DONE
from rhd.split.service import Split
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.v1 import rhd_pb2 as pb


def _video(n: int = 5, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24, 32, 3), np.uint8) for _ in range(n)]


def test_a_video_is_written_once_and_each_frame_read_back_exactly(tmp_path):
    store, images = FrameStore(tmp_path, 3600), _video()
    uri = store.put_video("P1-V00", images)
    assert uri.startswith("frames://P1-V00.") and len(list((tmp_path / "frames").iterdir())) == 1
    for index, image in enumerate(images):
        frame = pb.Frame(height=24, width=32, stored=pb.StoredFrame(uri=uri, index=index))
        got = store.image(pb.Frame.FromString(frame.SerializeToString()))
        assert np.array_equal(got, image) and got.flags.writeable  # a copy the stage may change
        assert frame.ByteSize() < 80  # the record carries the reference, not the 2,304 bytes of pixels
    # The same video again (a replayed study) is the same file; other frames under the same id are another.
    assert store.put_video("P1-V00", images) == uri
    assert store.put_video("P1-V00", _video(seed=2)) != uri
    # A record that still carries its pixels reads as before.
    raw = pb.Frame(height=24, width=32, **frame_pixels(images[0], "raw"))
    assert np.array_equal(store.image(raw), images[0])


def test_a_frame_that_cannot_be_read_says_why(tmp_path):
    store = FrameStore(tmp_path, 60)
    uri = store.put_video("P1-V00", _video(3))
    with pytest.raises(FrameStoreError, match="holds 3 frames, not frame 3"):
        store.frame(pb.StoredFrame(uri=uri, index=3))
    with pytest.raises(FrameStoreError, match="the record says 48 x 32"):
        store.image(pb.Frame(height=48, width=32, stored=pb.StoredFrame(uri=uri, index=0)))
    for bad in ("frames://../blobs/x.npy", "blob://P1.npy", "frames://.hidden.npy"):
        with pytest.raises(FrameStoreError, match="not a frame store uri"):
            store.frame(pb.StoredFrame(uri=bad))
    with pytest.raises(FrameStoreError, match="pruned after RHD_FRAME_RETENTION_S"):
        FrameStore(tmp_path, 60).frame(pb.StoredFrame(uri="frames://P9-V00.0123456789abcdef.npy"))
    with pytest.raises(ValueError, match="cannot name a stored file"):
        store.put_video("../P1", _video(1))
    with pytest.raises(ValueError, match="one size"):
        store.put_video("P2-V00", [*_video(1), np.zeros((10, 10, 3), np.uint8)])
    assert not list((tmp_path / "frames").glob("P2-V00*")) and not list((tmp_path / "frames").glob(".*.tmp"))


def test_frames_past_their_retention_are_pruned_and_an_erasure_removes_a_videos_frames(tmp_path):
    store = FrameStore(tmp_path, retention_s=3600)
    old, new = store.put_video("P1-V00", _video(2)), store.put_video("P2-V00", _video(2))
    hour_ago = time.time() - 3601
    os.utime(store.path(old), (hour_ago, hour_ago))
    assert store.prune() == 1
    assert not store.path(old).exists() and store.path(new).exists()
    with pytest.raises(FrameStoreError, match="pruned"):
        FrameStore(tmp_path, 3600).frame(pb.StoredFrame(uri=old))
    assert store.delete_video("P2-V00") == 1 and not store.path(new).exists()
    assert store.delete_video("../P2") == 0 and store.prune() == 0


def test_split_stores_each_video_once_and_inspect_reads_the_frames_it_decoded(tmp_path):
    [study_dir] = synth_studies(8, 1, tmp_path / "in", SynthConfig(videos_per_study=2, duration_s=(1.0, 1.0)))
    upload = upload_from_dir(study_dir, BlobStore(tmp_path / "blobs"), 10_000_000, "H001")
    results = {}
    for codec in ("store", "raw"):
        split = Split()
        settings = Settings(blob_dir=tmp_path / codec, frame_codec=codec)
        asyncio.run(split.start(settings))
        outputs = split.handle(upload, Position(0, 0, 0.0))
        results[codec] = [o.message for o in outputs if o.topic == FRAMES_DECODED]
        assert [o.topic for o in outputs][-1] == FRAMES_DONE
    stored, raw = results["store"], results["raw"]
    assert len(stored) == len(raw) > 0
    assert len(list((tmp_path / "store" / "frames").iterdir())) == 2  # one file per video
    assert not (tmp_path / "raw" / "frames").exists()
    pixels = raw[0].height * raw[0].width * 3
    assert sum(f.ByteSize() for f in stored) / len(stored) < 0.01 * pixels < sum(f.ByteSize() for f in raw) / len(raw)
    inspect = Inspect()
    inspect.frames = FrameStore(tmp_path / "store", 3600)
    for a, b in zip(stored, raw, strict=True):
        assert np.array_equal(inspect.image(a), inspect.image(b))
        assert [(o.topic, o.key) for o in inspect.handle(a, Position(0, 0, 0.0))] == [
            (o.topic, o.key) for o in inspect.handle(b, Position(0, 0, 0.0))
        ]


def test_a_setting_given_to_the_stack_in_the_environment_reaches_its_services(tmp_path, monkeypatch):
    """The embedded stack hands its services every setting it was given that is not the field's own default, those
    from its own RHD_ variables too (RHD_FRAME_CODEC=raw, to measure the line without the frame store)."""
    from rhd.local.stack import EmbeddedStack

    monkeypatch.setenv("RHD_FRAME_CODEC", "raw")
    monkeypatch.setenv("RHD_FRAME_RETENTION_S", "600")
    env = EmbeddedStack(tmp_path, Settings(secrets_dir=tmp_path / "secrets"))._env()
    assert env["RHD_FRAME_CODEC"] == "raw" and float(env["RHD_FRAME_RETENTION_S"]) == 600.0
    monkeypatch.delenv("RHD_FRAME_CODEC")
    monkeypatch.delenv("RHD_FRAME_RETENTION_S")
    env = EmbeddedStack(tmp_path, Settings(secrets_dir=tmp_path / "secrets"))._env()
    assert "RHD_FRAME_CODEC" not in env and "RHD_FRAME_RETENTION_S" not in env  # the defaults: nothing to pass
