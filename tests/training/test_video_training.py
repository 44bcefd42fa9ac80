"""The video network: trained on one process or on two worker processes (tf.distribute multi-worker, on this
machine's CPU, each reading its own shards of studies), the two workers end with the same weights, and those match
the one-worker run's; the same inputs give the same weights hash; the export serves what was trained; the per-video
truth and the study's pooled features say what they should."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from rhd.synth.generator import make_study, video_mode
from rhd.training.study import TRAINING_CONFIG
from rhd.training.video import SHARDS, video_truth
from rhd.video.model import CLIP_SHAPE, INPUT_NAME, OUTPUTS, PROBABILITIES
from rhd.video.ops import clip_indices, study_video_features

pytestmark = pytest.mark.timeout(600)

TINY = ["--video-studies", str(SHARDS), "--video-held-out", "2", "--epochs", "1"]


def train(tmp_path, name: str, workers: int, precision: str = "fp32") -> tuple[dict, dict]:
    """`rhd train video` as a user runs it: (each worker's report, the chief's manifest)."""
    models, reports = tmp_path / name / "models", tmp_path / name / "workers"
    argv = [sys.executable, "-m", "rhd.cli", "train", "video", "--models-dir", str(models), *TINY]
    argv += ["--train-workers", str(workers), "--worker-report", str(reports), "--precision", precision]
    subprocess.run(argv, check=True, timeout=500, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in reports.glob("worker-*.json")}
    for k, report in found.items():
        with np.load(reports / f"worker-{k}.npz") as saved:
            report["weights"] = [saved[key] for key in saved.files]
    return found, json.loads((models / "video" / "1" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One process twice, then two workers, then two workers in mixed precision, each from the same tiny set."""
    tmp_path = tmp_path_factory.mktemp("video")
    runs = {name: train(tmp_path, name, workers) for name, workers in (("one", 1), ("again", 1), ("two", 2))}
    runs["mixed"] = train(tmp_path, "mixed", 2, "mixed")
    return tmp_path, runs


def test_two_workers_read_disjoint_shards_and_end_with_the_one_worker_weights(trained):
    tmp_path, runs = trained
    (one, one_manifest), (again, _), (two, two_manifest) = runs["one"], runs["again"], runs["two"]

    assert one[0]["weights_sha256"] == again[0]["weights_sha256"]  # same inputs, same weights
    assert one_manifest["weights_sha256"] == one[0]["weights_sha256"]
    assert sorted(two) == [0, 1] and two_manifest["training"]["workers"] == 2
    # Disjoint shards, together every shard; each worker generated only its own studies.
    assert set(two[0]["shards_read"]).isdisjoint(two[1]["shards_read"])
    assert sorted(two[0]["shards_read"] + two[1]["shards_read"]) == list(range(SHARDS))
    assert set(two[0]["studies_read"]).isdisjoint(two[1]["studies_read"])
    assert two[0]["clips_read"] + two[1]["clips_read"] == one[0]["clips_read"]
    assert two[0]["steps_per_epoch"] == two[1]["steps_per_epoch"] == one[0]["steps_per_epoch"]
    # Mirrored: the two workers hold the very same weights; summed in another order, the one-worker run's.
    assert two[0]["weights_sha256"] == two[1]["weights_sha256"]
    for a, b, c in zip(two[0]["weights"], two[1]["weights"], one[0]["weights"], strict=True):
        assert np.array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=1e-4)
    assert not np.allclose(one[0]["weights"][0], 0.0)
    assert two[0]["epoch_loss"] == pytest.approx(one[0]["epoch_loss"], abs=1e-4)

    # The chief's export serves the weights it trained, clips in, a P(finding) per output out.
    out = tmp_path / "one" / "models" / "video" / "1"
    signature = tf.saved_model.load(str(out)).signatures["serving_default"]
    (_, inputs), outputs = signature.structured_input_signature, signature.structured_outputs
    assert list(inputs) == [INPUT_NAME] and inputs[INPUT_NAME].dtype == tf.uint8
    assert inputs[INPUT_NAME].shape.as_list() == [None, *CLIP_SHAPE]
    assert outputs[PROBABILITIES].shape.as_list() == [None, len(OUTPUTS)]
    clips = np.random.default_rng(0).integers(0, 256, (2, *CLIP_SHAPE), dtype=np.uint8)
    served = signature(clips=tf.constant(clips))[PROBABILITIES].numpy()
    assert served.shape == (2, 2) and ((served > 0) & (served < 1)).all()
    figures = one_manifest["metrics"]["held_out_videos"]
    assert set(figures) == set(OUTPUTS) and all(f["videos"] > 0 for f in figures.values())
    assert (out / "report.md").read_text().startswith("# Video model, version 1")


def test_each_video_is_asked_what_its_truth_can_answer():
    rng = np.random.default_rng(5)
    study = make_study("S-1", "definite", rng, TRAINING_CONFIG)
    asked = {video_mode(v.scene): video_truth(v) for v in study.videos}
    assert asked["cw"] is None  # a spectral trace is no clip
    colour, bmode = asked["colour"], asked["bmode"]
    assert colour is not None and list(colour[1]) == [1.0, 0.0]  # a colour video speaks for the jet only
    assert bmode is not None and list(bmode[1]) == [0.0, 1.0]
    jets = [video_truth(v)[0][0] for v in study.videos if video_mode(v.scene) == "colour"]
    lengths = [
        max(max(t.mr_length_mm / 20, t.ar_length_mm / 10) for t in v.truths)
        for v in study.videos
        if video_mode(v.scene) == "colour"
    ]
    assert jets == [float(x >= 1.0) for x in lengths]


def test_clips_spread_over_the_video_and_studies_pool_their_most_certain_video():
    assert clip_indices(24).tolist()[:3] == [0, 2, 3] and clip_indices(24)[-1] == 23 and len(clip_indices(24)) == 16
    assert clip_indices(5).tolist() == sorted(clip_indices(5).tolist()) and set(clip_indices(5)) == set(range(5))
    with pytest.raises(ValueError):
        clip_indices(0)
    answers = [("colour", np.array([0.2, 0.9])), ("colour", np.array([0.7, 0.1])), ("bmode", np.array([0.9, 0.4]))]
    assert study_video_features(answers) == [0.7, 0.4]  # each output from the videos that are asked it
    assert study_video_features([]) == [0.0, 0.0]


def _synthetic_studies(n: int, rng: np.random.Generator, informative: bool):
    """Studies whose only finding is pathological MR; the line's features say nothing of it, and the video
    network's P(jet) says it (informative) or is noise."""
    from rhd.assemble.ops import STUDY_FEATURE_NAMES
    from rhd.labels import CRITERIA, PARTS, whf_class
    from rhd.training.study import StudySet, criteria_truth

    mr = rng.random(n) < 0.4
    met = np.zeros((n, len(PARTS)), bool)
    for part in ("mr_length", "mr_views", "mr_velocity", "mr_duration"):
        met[:, PARTS.index(part)] = mr
    y = np.array([whf_class(dict(zip(CRITERIA, row, strict=True))) for row in criteria_truth(met)])
    x = rng.normal(size=(n, len(STUDY_FEATURE_NAMES)))
    jet = mr + rng.normal(0, 0.1, n) if informative else rng.random(n)
    return StudySet(x, y, met, {}, [""] * n), np.stack([jet, rng.random(n)], axis=1)


@pytest.mark.parametrize("informative", [True, False])
def test_the_ablation_lets_the_video_network_in_only_when_it_helps(informative):
    from rhd.training.video import ablation_markdown, compare_with_and_without

    rng = np.random.default_rng(0)
    train, v_train = _synthetic_studies(120, rng, informative)
    held, v_held = _synthetic_studies(60, rng, informative)
    result = compare_with_and_without(train, v_train, held, v_held, seed=1, held_seed=2, rounds=200)
    d = result["balanced_accuracy_difference"]
    assert result["helps"] is informative and (d["ci95"][0] > 0) is informative
    assert d["ci95"][0] <= d["value"] <= d["ci95"][1]
    without, with_ = (result[arm]["figures"]["balanced_accuracy"]["value"] for arm in ("without", "with"))
    assert with_ - without == pytest.approx(d["value"])
    if informative:
        assert with_ > 0.9 > without  # the line's features here say nothing; the video network says it all
    result.update(
        video_model_version=1, training={"seed": 1, "studies": 120}, held_out={"seed": 2, "studies": 60, "per_class": 0}
    )
    text = ablation_markdown(result)
    assert ("it helps" in text) is informative and "balanced_accuracy" in text


async def test_the_model_server_serves_the_video_network_to_the_line_s_client(trained):
    from rhd.model_server.server import start_server
    from rhd.runtime.model_client import ModelClient

    tmp_path, runs = trained
    models = tmp_path / "one" / "models"
    clips = np.random.default_rng(1).integers(0, 256, (3, *CLIP_SHAPE), dtype=np.uint8)
    signature = tf.saved_model.load(str(models / "video" / "1")).signatures["serving_default"]
    expected = signature(clips=tf.constant(clips))[PROBABILITIES].numpy()
    server, port = await start_server(models, "127.0.0.1", 0)
    client = ModelClient(f"127.0.0.1:{port}", "video", input_name=INPUT_NAME, max_batch=2, max_wait_ms=5.0)
    try:
        answers = await asyncio.gather(*(client.predict(clip) for clip in clips))  # two share a Predict
    finally:
        await client.close()
        await server.stop(0)
    np.testing.assert_allclose(np.stack([a[PROBABILITIES] for a in answers]), expected, atol=1e-5)


def test_mixed_precision_trains_the_same_network_in_bfloat16_on_cpus(trained):
    _, runs = trained
    (mixed, manifest), (one, _) = runs["mixed"], runs["one"]
    assert manifest["training"]["precision"] == mixed[0]["precision"] == "mixed_bfloat16"  # no GPU here
    assert mixed[0]["weights_sha256"] == mixed[1]["weights_sha256"]
    assert mixed[0]["epoch_loss"] == pytest.approx(one[0]["epoch_loss"], abs=0.02)
    assert all(w.dtype == np.float32 for w in mixed[0]["weights"])  # the variables stay float32


def test_rhd_train_video_then_its_ablation_in_one_process_writes_the_decision(tmp_path):
    """Training, then the ablation on the line's own features (the view and valve models of `make models`), as
    `make video-record` runs them: its feature workers must not hang on the TensorFlow the training left running."""
    from rhd.runtime.settings import Settings

    models = tmp_path / "models"
    models.mkdir()
    for name in ("view", "valve"):
        (models / name).symlink_to(Path(Settings().models_dir).resolve() / name)
    if not (models / "view").exists():
        pytest.fail("the view and valve models are missing: `make models` trains them")
    argv = [sys.executable, "-m", "rhd.cli", "train", "video", "--models-dir", str(models), *TINY, "--ablation"]
    argv += ["--studies", "15", "--held-out-per-class", "2", "--workers", "2", "--report-dir", str(tmp_path / "doc")]
    subprocess.run(argv, check=True, timeout=500, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = models / "video" / "1"
    result = json.loads((out / "ablation.json").read_text())
    assert result["training"]["studies"] == 15 and result["held_out"]["studies"] == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ablation"]["helps"] == result["helps"] == manifest["ablation"]["used_by_the_study_decision"]
    report = (tmp_path / "doc" / "report.md").read_text()
    assert report == (out / "report.md").read_text() and "**Decision: it" in report
