"""The synthetic study maker: deterministic by seed, and its ground truth agrees with the pixels."""

import json

import cv2
import numpy as np
import pytest
from rhd.labels import CLASSES, VIEWS
from rhd.split.ops import decode_video
from rhd.synth.generator import (
    NO_JITTER,
    Jitter,
    SynthConfig,
    make_study,
    overlay_mask,
    render_frame,
    sector_mask,
    synth_studies,
)

CONFIG = SynthConfig()
H, W = CONFIG.height, CONFIG.width
SMALL = SynthConfig(frames_per_video=6)  # enough frames for a whole systole at any heart rate


def saturation(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1]


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a = synth_studies(3, 2, tmp_path / "a", SMALL)
    b = synth_studies(3, 2, tmp_path / "b", SMALL)
    c = synth_studies(4, 2, tmp_path / "c", SMALL)
    assert [p.name for p in a] == ["S0003-0000", "S0003-0001"]
    for x, y in zip(a, b, strict=True):
        for name in ("study.json", "truth.json"):
            assert (x / name).read_bytes() == (y / name).read_bytes()
        videos = sorted(x.glob("*.mp4"))
        assert len(videos) == SMALL.videos_per_study
        for video in videos:
            first, second = decode_video(video.read_bytes()), decode_video((y / video.name).read_bytes())
            assert all(np.array_equal(f, s) for f, s in zip(first.frames, second.frames, strict=True))
    strip = [(p / "study.json").read_text().replace(p.name, "") for p in (a[0], c[0])]
    assert strip[0] != strip[1]
    assert not np.array_equal(decode_video((a[0] / "S0003-0000-V00.mp4").read_bytes()).frames[0],
                              decode_video((c[0] / "S0004-0000-V00.mp4").read_bytes()).frames[0])


def test_a_study_does_not_depend_on_how_many_were_asked_for(tmp_path):
    one = synth_studies(9, 1, tmp_path / "one", SMALL)[0]
    three = synth_studies(9, 3, tmp_path / "three", SMALL)[0]
    assert (one / "truth.json").read_bytes() == (three / "truth.json").read_bytes()


def test_written_study_decodes_and_carries_hospital_fields(tmp_path):
    (study,) = synth_studies(1, 1, tmp_path, balanced=True)
    meta = json.loads((study / "study.json").read_text())
    truth = json.loads((study / "truth.json").read_text())
    for key in ("study_id", "hospital_id", "hospital", "patient_name", "patient_id", "birth_date", "sex",
                "study_date", "operator", "device"):
        assert meta[key], key
    assert len(meta["patient_name"].split()) >= 2 and meta["sex"] in ("F", "M")
    assert meta["birth_date"] < meta["study_date"]
    assert (meta["pixel_spacing_mm"], meta["nyquist_cm_s"], meta["fps"]) == (0.6, 60.0, 24.0)
    assert "label" not in meta and "hidden" not in meta  # the truth travels apart
    assert [v["video_id"] for v in meta["videos"]] == [f"{meta['study_id']}-V{j:02d}" for j in range(4)]
    assert sorted(v["view"] for v in truth["videos"]) == sorted(VIEWS)  # one video per standard view
    assert any(v["doppler"] for v in truth["videos"])
    for entry, video in zip(meta["videos"], truth["videos"], strict=True):
        decoded = decode_video((study / entry["filename"]).read_bytes())
        assert len(decoded.frames) == video["frame_count"] == CONFIG.frames_per_video
        assert decoded.frames[0].shape == (H, W, 3)
        assert decoded.fps == pytest.approx(CONFIG.fps)
        # The video's kind survives compression: colour in Doppler videos, grey in B-mode ones.
        hsv = cv2.cvtColor(decoded.frames[0], cv2.COLOR_BGR2HSV)
        colour = ((hsv[..., 1] > 90) & (hsv[..., 2] > 50)).mean()
        assert colour > 0.002 if video["doppler"] else colour < 0.0005


def test_balanced_cycles_the_classes_and_prevalence_is_mostly_normal(tmp_path):
    config = SynthConfig(videos_per_study=1, frames_per_video=1)
    studies = synth_studies(5, 6, tmp_path / "b", config, balanced=True)
    labels = [json.loads((s / "truth.json").read_text())["label"] for s in studies]
    assert labels == list(CLASSES) * 2
    drawn = synth_studies(5, 30, tmp_path / "p", config)
    labels = [json.loads((s / "truth.json").read_text())["label"] for s in drawn]
    assert labels.count("normal") >= 24  # 95% normal in PROVAR


@pytest.mark.parametrize("label, low, high", [("normal", 0, 8), ("borderline", 12, 22), ("definite", 22, 40)])
def test_jet_length_follows_the_class(label, low, high):
    config = SynthConfig(frames_per_video=12, doppler_share=1.0)
    for seed in range(3):
        study = make_study("S", label, np.random.default_rng(seed), config)
        jet_mm = study.hidden["mr_jet_length_mm"]
        assert low <= jet_mm <= high
        for video in study.videos:
            # The frames carry the jet, within the per-video +-15% (and a pixel of drawing).
            assert video.jet_length_mm <= jet_mm * 1.15 + 1.0
            assert video.jet_length_mm >= (jet_mm * 0.85 - 1.0 if jet_mm else 0.0)
            assert video.jet_length_mm == pytest.approx(max(t.jet_length_mm for t in video.truths), abs=0.01)


@pytest.mark.parametrize("view", VIEWS)
def test_b_mode_is_grey_everywhere(view):
    rng = np.random.default_rng(0)
    for phase in (0.1, 0.6):
        image, truth = render_frame(view, phase, False, 50, rng, CONFIG, Jitter(8, -6, 4, 1.2))
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        assert saturation(image).max() == 0
        assert not truth.flow_mask.any() and not truth.jet_mask.any() and truth.jet_length_mm == 0
        assert image[~sector_mask(H, W)].max() == 0
        assert image[sector_mask(H, W)].mean() > 30  # tissue is there


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("phase", [0.2, 0.7])
def test_doppler_flow_is_saturated_and_nothing_lies_outside_the_fan(view, phase):
    rng = np.random.default_rng(1)
    image, truth = render_frame(view, phase, True, 50, rng, CONFIG, Jitter(-7, 5, -3, 0.9))
    sat = saturation(image)
    assert truth.flow_mask.sum() > 100  # some flow shows in every phase
    assert (sat[truth.flow_mask] > 200).all()
    assert (image.max(axis=2)[truth.flow_mask] >= 200).all()
    assert (sat[sector_mask(H, W) & ~truth.flow_mask] == 0).all()  # colour only where the truth says
    assert not (truth.flow_mask & ~sector_mask(H, W)).any()
    outside = ~sector_mask(H, W) & ~overlay_mask(H, W)
    assert image[outside].max() == 0
    assert not (overlay_mask(H, W) & sector_mask(H, W)).any()
    assert (truth.jet_mask <= truth.flow_mask).all()
    assert truth.jet_mask.any() == (phase < 0.45)  # the jet is systolic


def test_colour_bar_runs_red_to_blue_beside_the_fan():
    image, _ = render_frame("a4c", 0.3, True, 0, np.random.default_rng(2), CONFIG)
    bar = image[:, W - 10]  # a column through the bar
    rows = np.nonzero(bar.any(axis=1))[0]
    top, bottom = bar[rows[0] + 2], bar[rows[-1] - 2]
    assert top[2] > 200 and top[0] == 0  # red on top
    assert bottom[0] > 200 and bottom[2] == 0  # blue at the bottom
    assert bar[(rows[0] + rows[-1]) // 2].max() < 20  # black in the middle
    label = image[:, W - 40:W - 14]
    assert label.any() and saturation(np.ascontiguousarray(label)).max() == 0  # the Nyquist value, in grey


def test_no_jet_when_asked_for_none():
    rng = np.random.default_rng(3)
    for view in VIEWS:
        _, truth = render_frame(view, 0.2, True, 0, rng, CONFIG)
        assert not truth.jet_mask.any() and truth.jet_length_mm == 0 and truth.flow_mask.any()


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("length", [20.0, 50.0, 75.0])
def test_jet_extent_along_its_axis_matches_the_asked_length(view, length):
    rng = np.random.default_rng(4)
    _, truth = render_frame(view, 0.25, True, length, rng, CONFIG)
    ys, xs = np.nonzero(truth.jet_mask)
    # Principal axis of the jet pixels: the jet is much longer than wide.
    points = np.column_stack([xs, ys]).astype(float)
    points -= points.mean(axis=0)
    axis = np.linalg.svd(points, full_matrices=False)[2][0]
    along = points @ axis
    extent = along.max() - along.min()
    assert extent == pytest.approx(length, rel=0.15)
    assert truth.jet_length_mm == pytest.approx(extent * CONFIG.pixel_spacing_mm, rel=0.05)
    assert truth.jet_length_mm == pytest.approx(length * CONFIG.pixel_spacing_mm, rel=0.05)


def test_mosaic_mixes_hues_and_the_jet_goes_into_the_atrium():
    rng = np.random.default_rng(5)
    image, truth = render_frame("a4c", 0.2, True, 50, rng, CONFIG)
    hue = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 0][truth.jet_mask].astype(int)
    counts = np.bincount(hue // 15, minlength=12)
    assert (counts > 0.1 * hue.size).sum() >= 3
    ys, _ = np.nonzero(truth.jet_mask)
    ys_grey, _ = np.nonzero(truth.flow_mask & ~truth.jet_mask)
    assert ys.mean() > ys_grey.mean()  # a4c: atrium deeper than the ventricle's outflow


def test_views_differ_and_jitter_moves_them():
    def grey(view: str, jitter: Jitter = NO_JITTER) -> np.ndarray:
        image, _ = render_frame(view, 0.0, False, 0, np.random.default_rng(6), SynthConfig(noise=0.0), jitter)
        return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (80, 60), interpolation=cv2.INTER_AREA)

    small = {view: grey(view).astype(float) for view in VIEWS}
    for view in VIEWS:
        # On the CNN's 60 x 80 grey input the probe's jitter shows, but another view differs more.
        moved = np.abs(grey(view, Jitter(10, 10, 5, 1.0)) - small[view]).mean()
        others = min(np.abs(small[view] - small[other]).mean() for other in VIEWS if other != view)
        assert 2 < moved < others - 2, view


def test_frame_breathes_with_the_phase():
    config = SynthConfig(noise=0.0)
    blood = []
    for phase in (0.0, 0.5):
        image, _ = render_frame("a2c", phase, False, 0, np.random.default_rng(7), config)
        blood.append((image[..., 0] < 30) & sector_mask(H, W))
    upper = slice(0, 130)  # the ventricle: largest at end-diastole (phase 0)
    assert blood[0][upper].sum() > 1.08 * blood[1][upper].sum()


def test_unknown_view_and_label_are_refused():
    with pytest.raises(ValueError, match="view"):
        render_frame("a5c", 0.0, False, 0, np.random.default_rng(0), CONFIG)
    with pytest.raises(ValueError, match="label"):
        make_study("S", "severe", np.random.default_rng(0), CONFIG)
