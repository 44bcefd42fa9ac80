"""The cardiac phase read from the burned-in ECG, against the generator's truth (on decoded MP4 frames)."""

import numpy as np
import pytest
from rhd.imaging.ecg import SYSTOLE_END, read_ecg, video_phases
from rhd.imaging.video import decode_video
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.synth.render import SYSTOLE_END as TRUE_SYSTOLE_END

# Coloured text, colour bars on B-mode and low gain on most videos: overlays that must not be read as the trace.
CLUTTERED = SynthConfig(
    videos_per_study=8, duration_s=(1.0, 2.0), gain=(0.5, 1.3), bmode_colour_bar_rate=0.7, coloured_text_rate=0.7
)


def _videos(tmp_path, config, seed=41, studies=2):
    out = []
    for study_dir in synth_studies(seed, studies, tmp_path, config, balanced=True):
        for video in load_truth(study_dir)["videos"]:
            decoded = decode_video((study_dir / f"{video['video_id']}.mp4").read_bytes())
            out.append((decoded, video))
    return out


def _error(read: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.abs((np.asarray(read) - np.asarray(true) + 0.5) % 1.0 - 0.5)


@pytest.fixture(scope="module")
def cluttered(tmp_path_factory):
    return _videos(tmp_path_factory.mktemp("ecg"), CLUTTERED)


def test_each_frames_phase_and_its_videos_fit_meet_two_percent_of_the_cycle(cluttered):
    frame_errors, fitted_errors, systole_right, frames = [], [], [], 0
    for decoded, video in cluttered:
        truth = np.array([f["phase"] for f in video["frames"]])
        readings = [read_ecg(image) for image in decoded.frames]
        frames += len(readings)
        frame_errors += [_error(r.phase, t) for r, t in zip(readings, truth, strict=True) if r is not None]
        fit = video_phases(readings, decoded.fps)
        assert fit is not None, video["video_id"]
        fitted_errors += list(_error(fit.phases, truth))
        systole_right += list(fit.systole == np.array([f["systole"] for f in video["frames"]]))
    assert len(frame_errors) >= 0.85 * frames  # most frames read on their own; the fit gives the others
    assert np.median(frame_errors) <= 0.02
    assert np.median(fitted_errors) <= 0.01 and np.max(fitted_errors) <= 0.03
    assert np.mean(systole_right) >= 0.97


def test_the_fitted_heart_rate_is_the_scanners(tmp_path):
    for decoded, video in _videos(tmp_path, SynthConfig(videos_per_study=3, duration_s=(1.5, 1.5)), seed=5, studies=1):
        fit = video_phases([read_ecg(image) for image in decoded.frames], decoded.fps)
        step = (video["frames"][1]["phase"] - video["frames"][0]["phase"]) % 1.0
        assert fit.heart_rate_bpm == pytest.approx(step * decoded.fps * 60, rel=0.01)


def test_without_an_ecg_nothing_is_read_and_the_video_has_no_phase(tmp_path):
    for decoded, _ in _videos(tmp_path, SynthConfig(videos_per_study=4, duration_s=(1.0, 1.0), ecg=False), studies=1):
        readings = [read_ecg(image) for image in decoded.frames]
        assert readings == [None] * len(readings)
        assert video_phases(readings, decoded.fps) is None


def test_systole_ends_where_the_generator_ends_it():
    assert SYSTOLE_END == TRUE_SYSTOLE_END
