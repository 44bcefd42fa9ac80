"""The minimal study maker: deterministic by seed, ground truth consistent with the pixels."""

import json

import cv2
import numpy as np
import pytest
from rhd.split.ops import decode_video
from rhd.synth.generator import SynthConfig, render_frame, sector_mask, synth_studies

CONFIG = SynthConfig()


def saturated(image):
    return cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1] > 90


def test_same_seed_same_files_and_different_seed_differs(tmp_path):
    a = synth_studies(3, 2, tmp_path / "a", balanced=True)
    b = synth_studies(3, 2, tmp_path / "b", balanced=True)
    c = synth_studies(4, 2, tmp_path / "c", balanced=True)
    for x, y in zip(a, b, strict=True):
        for name in ("study.json", "truth.json"):
            assert (x / name).read_bytes() == (y / name).read_bytes()
        for video in sorted(x.glob("*.mp4")):
            assert video.read_bytes() == (y / video.name).read_bytes()
    assert (a[0] / "truth.json").read_text() != (c[0] / "truth.json").read_text().replace("S0004", "S0003")


def test_balanced_sets_cycle_the_classes_and_videos_decode(tmp_path):
    studies = synth_studies(1, 6, tmp_path, balanced=True)
    labels = [json.loads((s / "truth.json").read_text())["label"] for s in studies]
    assert sorted(labels) == sorted(["normal", "borderline", "definite"] * 2)
    meta = json.loads((studies[0] / "study.json").read_text())
    for field in ("patient_name", "patient_id", "birth_date", "sex", "hospital", "study_date", "operator"):
        assert meta[field]
    decoded = decode_video((studies[0] / meta["videos"][0]["filename"]).read_bytes())
    assert len(decoded.frames) == CONFIG.frames_per_video
    assert decoded.frames[0].shape == (240, 320, 3)


@pytest.mark.parametrize("view", ["plax", "psax", "a4c", "a2c"])
def test_b_mode_is_grey_and_doppler_flow_is_coloured(view):
    rng = np.random.default_rng(0)
    grey, truth = render_frame(view, 0.2, False, 40, rng, CONFIG)
    assert not saturated(grey).any() and not truth.flow_mask.any()
    colour, truth = render_frame(view, 0.2, True, 40, rng, CONFIG)
    assert saturated(colour)[truth.flow_mask].mean() > 0.95
    outside = ~sector_mask(240, 320)
    outside[:, 285:] = False  # the colour bar and its Nyquist label live there
    assert colour[outside].max() == 0


def test_jet_mask_matches_the_asked_length():
    rng = np.random.default_rng(1)
    _, none = render_frame("plax", 0.2, True, 0, rng, CONFIG)
    assert not none.jet_mask.any() and none.jet_length_mm == 0
    _, truth = render_frame("a4c", 0.2, True, 50, rng, CONFIG)
    rows = np.nonzero(truth.jet_mask.any(axis=1))[0]
    assert rows.max() - rows.min() + 1 == pytest.approx(50, rel=0.15)  # the a4c jet runs downwards
    assert truth.jet_length_mm == pytest.approx(50 * CONFIG.pixel_spacing_mm)
