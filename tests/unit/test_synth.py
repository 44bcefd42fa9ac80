"""The generator: deterministic files, a hospital-like layout with the truth apart, and ground truth that
agrees with the pixels (flow mask, colour bar velocities, overlay boxes, jet lengths)."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rhd.cli import main
from rhd.imaging.video import decode_video
from rhd.labels import CLASSES, VIEW_CLASSES, VIEWS
from rhd.synth import doppler
from rhd.synth.criteria import Valves, whf_label
from rhd.synth.generator import (
    PROVAR_PREVALENCE,
    SynthConfig,
    load_frame_truth,
    load_truth,
    make_study,
    study_labels,
    synth_studies,
    truth_dir,
)
from rhd.synth.preview import CAPTION_PX, contact_sheet
from rhd.synth.render import SYSTOLE_END, JetScene, Pose, Scene, render_frame, sector_mask

SMALL = SynthConfig(videos_per_study=6, duration_s=(0.5, 1.0))
TEXT = (("phi", "Hospital Santa Rita"), ("phi", "Maria Silva Costa"), ("phi", "ID 712345678901234"))


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def colour_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels that are not grey: any channel differs from another."""
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return (b != g) | (g != r)


def box_mask(shape: tuple[int, int], elements: list[dict], kinds: set[str] | None = None) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for e in elements:
        if kinds is None or e["kind"] in kinds:
            x0, y0, x1, y1 = e["box"]
            mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, synth_studies(3, 3, out, SMALL, balanced=True)


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(written, tmp_path):
    out, _ = written
    again = synth_studies(3, 3, tmp_path / "again", SMALL, balanced=True)
    assert digest_tree(out) == digest_tree(tmp_path / "again")
    assert len(again) == 3
    other = synth_studies(4, 1, tmp_path / "other", SMALL, balanced=True)[0]
    first = out / "S0003-0000"
    assert (first / "S0003-0000-V00.mp4").read_bytes() != (other / "S0004-0000-V00.mp4").read_bytes()


def test_study_folder_is_what_a_hospital_exports_and_the_truth_lives_apart(written):
    out, dirs = written
    for study in dirs:
        meta = json.loads((study / "study.json").read_text())
        for key in (
            "patient_name",
            "patient_id",
            "birth_date",
            "sex",
            "study_date",
            "hospital",
            "operator",
            "device",
            "pixel_spacing_mm",
            "nyquist_cm_s",
            "fps",
        ):
            assert meta[key] not in ("", None), key
        published = sorted(["study.json", *(v["filename"] for v in meta["videos"])])
        assert sorted(p.name for p in study.iterdir()) == published
        assert truth_dir(study) == out / "truth" / study.name and (truth_dir(study) / "truth.json").exists()
        assert len(meta["videos"]) == SMALL.videos_per_study
        truth = load_truth(study)
        assert truth["label"] == whf_label(Valves.from_dict(truth["valves"]))
        assert SMALL.nyquist_cm_s[0] <= meta["nyquist_cm_s"] <= SMALL.nyquist_cm_s[1]
        for entry, video in zip(meta["videos"], truth["videos"], strict=True):
            decoded = decode_video((study / entry["filename"]).read_bytes())
            assert len(decoded.frames) == video["frame_count"] == len(video["frames"])
            assert decoded.frames[0].shape == (240, 320, 3)
            lo, hi = (round(d * SMALL.fps) for d in SMALL.duration_s)
            assert lo <= video["frame_count"] <= hi
            assert all(f["doppler"] == video["doppler"] for f in video["frames"])
            assert video["view"] in VIEWS and video["view_class"] in VIEW_CLASSES
    assert sorted(load_truth(d)["label"] for d in dirs) == sorted(CLASSES)


def test_written_masks_cover_the_coloured_flow_of_the_decoded_video(written):
    _, dirs = written
    checked = 0
    for study in dirs:
        for video in load_truth(study)["videos"]:
            if not video["doppler"]:
                assert not (truth_dir(study) / f"{video['video_id']}.npz").exists()
                continue
            arrays = load_frame_truth(study, video["video_id"])
            frames = decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames
            inside = sector_mask(240, 320)
            for k in range(0, len(frames), 5):
                flow = arrays["flow"][k]
                coloured = colour_pixels(frames[k]) & inside
                # MP4 compression bleeds chroma into neighbours, so compare with a tolerance band.
                near_flow = cv2.dilate(flow.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
                chroma = np.abs(frames[k].astype(int) - frames[k].mean(axis=2, keepdims=True)).max(2)
                if flow.sum() > 50:
                    assert (coloured & (chroma > 40) & ~near_flow).sum() <= 0.05 * flow.sum()
                    assert (flow & coloured & (chroma > 10)).sum() >= 0.8 * flow.sum()
                assert np.all(arrays["velocity_cm_s"][k][~flow] == 0)
                checked += 1
    assert checked > 10


def scene(**changes) -> Scene:
    base = dict(
        view="plax",
        colour=True,
        target="mitral",
        nyquist_cm_s=60.0,
        text_lines=TEXT,
        device_lines=("Vscan Extend R2", "24 Hz"),
        mr=JetScene(30.0, 1.0, False, 450.0),
    )
    return Scene(**{**base, **changes})


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("phase", [0.15, 0.3, 0.6, 0.85])
def test_flow_mask_is_exactly_the_coloured_pixels_inside_the_fan(view, phase):
    image, truth = render_frame(scene(view=view), phase, np.random.default_rng(1))
    coloured = colour_pixels(image) & sector_mask(240, 320)
    assert truth.flow_mask.sum() > 20
    assert np.array_equal(coloured, truth.flow_mask)


def read_bar(image: np.ndarray, elements: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The colour bar as a person reads it: its column of colours, top = +Nyquist, bottom = -Nyquist, with the
    limit taken from the number written beside it."""
    (bar,) = [e for e in elements if e["kind"] == "colour_bar"]
    nyquist = float(next(e["text"] for e in elements if e["kind"] == "nyquist" and not e["text"].startswith("-")))
    x0, y0, x1, y1 = bar["box"]
    colours = image[y0:y1, (x0 + x1) // 2].astype(np.float64)
    velocities = np.linspace(nyquist, -nyquist, y1 - y0)
    return colours, velocities


@pytest.mark.parametrize("view", ["plax", "a4c", "a5c"])
def test_laminar_colour_decodes_back_to_its_velocity_through_the_colour_bar(view):
    rng = np.random.default_rng(5)
    errors, aliased_checked = [], 0
    for phase in (0.1, 0.25, 0.55, 0.7, 0.8):
        image, truth = render_frame(scene(view=view, mr=None, inflow_cm_s=95.0), phase, rng)
        colours, velocities = read_bar(image, truth.overlays)
        laminar = truth.flow_mask & ~truth.jet_mask
        pixels = image[laminar].astype(np.float64)
        nearest = np.argmin(((pixels[:, None, :] - colours[None, :, :]) ** 2).sum(axis=2), axis=1)
        decoded, true = velocities[nearest], truth.velocity_cm_s[laminar]
        plain = np.abs(true) < 60.0
        errors.append(np.abs(decoded[plain] - true[plain]))
        # Beyond Nyquist the colour is the aliased velocity, as a scanner shows it.
        if (~plain).any():
            assert np.median(np.abs(decoded[~plain] - doppler.wrap(true[~plain], 60.0))) <= 3.0
            aliased_checked += int((~plain).sum())
    errors = np.concatenate(errors)
    assert errors.size > 200
    assert np.median(errors) <= 1.0 and np.percentile(errors, 99) <= 3.0  # the bar has ~90 rows over 120 cm/s
    if view == "a4c":
        assert aliased_checked > 0  # a 95 cm/s inflow towards the probe aliases at a 60 cm/s limit


def test_everything_drawn_outside_the_fan_is_an_overlay_in_the_sidecar():
    for colour, colour_bar in ((True, False), (False, True), (False, False)):
        image, truth = render_frame(scene(colour=colour, colour_bar=colour_bar), 0.3, np.random.default_rng(2))
        outside = ~sector_mask(240, 320)
        drawn = image.max(axis=2) > 0
        assert not (drawn & outside & ~box_mask((240, 320), truth.overlays)).any()
        kinds = {e["kind"] for e in truth.overlays}
        assert {"phi", "device", "ecg", "depth_marks"} <= kinds
        assert ("colour_bar" in kinds) == (colour or colour_bar)
        # Text and the colour bar sit outside the fan, where they must not be read as flow.
        text = box_mask((240, 320), truth.overlays, {"phi", "device", "colour_bar", "nyquist"})
        assert not (text & sector_mask(240, 320)).any()
        for element in truth.overlays:
            if element["kind"] == "phi":
                x0, y0, x1, y1 = element["box"]
                assert (image[y0:y1, x0:x1].max(axis=2) > 150).sum() > 10  # the text is in its box


def test_text_content_is_a_knob():
    config = SynthConfig.from_overrides({"text_lines": ["{hospital_id} / {sex}"]}, SMALL)
    study = make_study(
        "S1", "normal", np.random.default_rng(0), config.replace(videos_per_study=1, duration_s=(0.1, 0.1))
    )
    (phi,) = [e for e in study.videos[0].truths[0].overlays if e["kind"] == "phi"]
    assert phi["text"] == f"{study.metadata['hospital_id']} / {study.metadata['sex']}"


def test_mr_jet_is_drawn_at_its_length_in_systole_only():
    rng = np.random.default_rng(3)
    lengths = {}
    for phase in np.arange(0.0, 1.0, 0.02):
        _, truth = render_frame(scene(mr=JetScene(28.0, 1.0, False, 450.0)), float(phase), rng)
        lengths[round(float(phase), 2)] = truth.mr_length_mm
        if phase >= SYSTOLE_END:
            assert truth.mr_length_mm == 0 and not truth.jet_mask.any()
    systolic = [v for p, v in lengths.items() if p < SYSTOLE_END]
    assert all(v > 0 for v in systolic)  # pan-systolic
    assert max(systolic) == pytest.approx(28.0, abs=2.0)


def test_a_short_jet_lasts_only_its_share_of_systole():
    shown = [
        render_frame(scene(mr=JetScene(25.0, 0.4, False, 400.0)), float(p), np.random.default_rng(0))[1].mr_length_mm
        > 0
        for p in np.linspace(0, SYSTOLE_END, 40, endpoint=False)
    ]
    assert 0.3 <= np.mean(shown) <= 0.5 and shown[0] and not shown[-1]


def test_b_mode_frames_have_no_flow_and_off_axis_frames_are_other():
    image, truth = render_frame(scene(colour=False), 0.2, np.random.default_rng(0))
    assert not truth.flow_mask.any() and not truth.doppler
    assert not (colour_pixels(image) & sector_mask(240, 320)).any()
    _, off = render_frame(scene(quality="off_axis", pose=Pose(15, 10, 20, 0.85)), 0.2, np.random.default_rng(0))
    assert (off.view, off.view_class) == ("plax", "other")


def test_views_differ_and_a_poor_window_blurs_the_detail():
    def grey(**changes) -> np.ndarray:
        image, _ = render_frame(
            scene(colour=False, ecg=False, text_lines=(), device_lines=(), **changes), 0.6, np.random.default_rng(0)
        )
        return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (40, 30), interpolation=cv2.INTER_AREA)

    small = {view: grey(view=view).astype(float) for view in VIEWS}
    for view in VIEWS:
        assert min(np.abs(small[view] - small[o]).mean() for o in VIEWS if o != view) > 4.0

    def detail(quality: str) -> float:
        image, _ = render_frame(scene(colour=False, quality=quality), 0.6, np.random.default_rng(0))
        return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F)[sector_mask(240, 320)].var())

    assert detail("poor") < 0.5 * detail("good")


def test_jets_appear_only_in_the_views_the_truth_lists():
    config = SynthConfig(videos_per_study=10, duration_s=(1.0, 1.0), off_axis_rate=0, poor_quality_rate=0)
    study = make_study("S1", "definite", np.random.default_rng(12), config)
    mr_views = study.acquisition["mr_views"]
    assert mr_views and mr_views[0] == "plax"
    for video in study.videos:
        has_mr = any(t.mr_length_mm > 0 for t in video.truths)
        if video.scene.colour and video.scene.target == "mitral" and video.scene.view in mr_views:
            assert has_mr, video.video_id
        if video.scene.view not in mr_views or not video.scene.colour:
            assert not has_mr, video.video_id


def test_prevalence_balanced_and_stratified_labels():
    drawn = study_labels(1, 4000)
    shares = [drawn.count(c) / len(drawn) for c in CLASSES]
    assert shares == pytest.approx(PROVAR_PREVALENCE, abs=0.012)
    assert study_labels(1, 4000) == drawn and study_labels(2, 4000) != drawn
    assert study_labels(1, 6, mix="balanced") == list(CLASSES) * 2
    counts = study_labels(1, 0, counts={"normal": 3, "definite": 2})
    assert sorted(counts) == ["definite", "definite", "normal", "normal", "normal"]
    with pytest.raises(ValueError, match="unknown class"):
        study_labels(1, 0, counts={"severe": 1})


def test_knobs_override_by_name_and_unknown_knobs_are_refused():
    config = SynthConfig.from_overrides({"noise": 1.6, "nyquist_cm_s": [40, 45], "disease.near_threshold_share": 0.9})
    assert config.noise == 1.6 and config.nyquist_cm_s == (40, 45) and config.disease.near_threshold_share == 0.9
    with pytest.raises(ValueError, match="unknown synth knob"):
        SynthConfig.from_overrides({"noize": 2})
    study = make_study(
        "S1", "normal", np.random.default_rng(0), config.replace(videos_per_study=1, duration_s=(0.1, 0.1))
    )
    assert 40 <= study.metadata["nyquist_cm_s"] <= 45


def test_contact_sheet_shows_every_view_and_class():
    sheet = contact_sheet(seed=1, config=SMALL)
    assert sheet.shape == (5 * (240 + CAPTION_PX), 4 * 320, 3)
    fan = sector_mask(240, 320)
    tiles = [sheet[r * 258 : r * 258 + 240, c * 320 : (c + 1) * 320] for r in range(4) for c in range(4)]
    assert all(not (colour_pixels(t) & fan).any() for t in tiles[0::4])  # B-mode column: a grey fan
    assert all((colour_pixels(t) & fan).sum() > 50 for i, t in enumerate(tiles) if i % 4)


def test_cli_writes_studies_and_a_preview(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                "--seed",
                "9",
                "--studies",
                "1",
                "--out",
                str(tmp_path / "out"),
                "--set",
                "videos_per_study=2",
                "--set",
                "duration_s=[0.5,0.5]",
            ]
        )
        == 0
    )
    (study,) = [p for p in (tmp_path / "out").iterdir() if p.name != "truth"]
    assert len(json.loads((study / "study.json").read_text())["videos"]) == 2
    assert main(["synth", "--preview", str(tmp_path / "sheet.png")]) == 0
    assert cv2.imread(str(tmp_path / "sheet.png")).shape[1] == 4 * 320
    with pytest.raises(SystemExit, match="unknown synth knob"):
        main(["synth", "--set", "colour=2", "--out", str(tmp_path / "x")])
