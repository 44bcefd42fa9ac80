"""A contact sheet of what the generator makes: one frame per view in B-mode and colour Doppler for each
class, and the off-axis and poor-quality frames the view model must call "other"."""

import dataclasses
from pathlib import Path

import cv2
import numpy as np

from rhd.labels import CLASSES, VIEWS
from rhd.synth.generator import SynthConfig, Video, make_study
from rhd.synth.render import Pose, render_frame

CAPTION_PX = 18
SYSTOLIC, DIASTOLIC = 0.2, 0.7  # phases that show MR and AR
DEFAULT = SynthConfig()


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    strip = np.full((CAPTION_PX, image.shape[1], 3), 32, np.uint8)
    cv2.putText(strip, text, (6, CAPTION_PX - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (230, 230, 230), 1, cv2.LINE_AA)
    return np.vstack([image, strip])


def _find(videos: list[Video], view: str, colour: bool, target: str | None = None) -> Video:
    for video in videos:
        s = video.scene
        if s.view == view and s.colour == colour and (target is None or s.target == target):
            return video
    raise LookupError(f"no {view} {'colour' if colour else 'B-mode'} video in the preview study")


def contact_sheet(seed: int = 1, config: SynthConfig = DEFAULT) -> np.ndarray:
    """Rows: PLAX, PSAX, A4C, A5C, other. Columns: B-mode, then colour Doppler of a Normal, a Borderline and a
    Definite study (mitral box in systole; A5C's aortic box in diastole)."""
    short = config.replace(videos_per_study=10, duration_s=(0.1, 0.1), off_axis_rate=0.0, poor_quality_rate=0.0)
    rng = np.random.default_rng(seed)
    studies = {label: make_study(f"PREVIEW-{label}", label, rng, short) for label in CLASSES}
    rows = []
    for view in VIEWS:
        target = "aortic" if view == "a5c" else "mitral"
        phase = DIASTOLIC if target == "aortic" else SYSTOLIC
        bmode = _find(studies["normal"].videos, view, False)
        tiles = [_caption(render_frame(bmode.scene, SYSTOLIC, rng)[0], f"{view.upper()} B-mode")]
        for label in CLASSES:
            video = _find(studies[label].videos, view, True, target)
            image, truth = render_frame(video.scene, phase, rng)
            jet = (
                f"MR {truth.mr_length_mm:.0f} mm"
                if truth.mr_length_mm
                else (f"AR {truth.ar_length_mm:.0f} mm" if truth.ar_length_mm else "no jet")
            )
            tiles.append(_caption(image, f"{view.upper()} colour, {label}: {jet}"))
        rows.append(np.hstack(tiles))
    normal = studies["normal"].videos
    other = []
    for quality, view, colour, pose in (
        ("off_axis", "plax", False, Pose(18, 14, 20, 0.84)),
        ("poor", "a4c", False, Pose()),
        ("off_axis", "a4c", True, Pose(-20, 10, -18, 0.82)),
        ("poor", "plax", True, Pose()),
    ):
        scene = dataclasses.replace(_find(normal, view, colour, "mitral").scene, quality=quality, pose=pose)
        image, _ = render_frame(scene, SYSTOLIC, rng)
        other.append(_caption(image, f"other: {view.upper()} {quality.replace('_', '-')}{' colour' if colour else ''}"))
    rows.append(np.hstack(other))
    return np.vstack(rows)


def write_contact_sheet(path: Path, seed: int = 1, config: SynthConfig = DEFAULT) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), contact_sheet(seed, config)):
        raise OSError(f"cannot write {path}")
    return path
