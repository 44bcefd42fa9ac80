"""The view model's recall per view on generator settings it was not trained on (figures for the record, not a
test): for each setting, every image frame (colour and B-mode; spectral traces excluded) of a few balanced studies,
the served model in-process.

    .venv/bin/python loadtest/view_robustness.py --studies 4
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from rhd.imaging.sector import sector_mask, video_sector
from rhd.imaging.video import decode_video
from rhd.labels import VIEW_CLASSES
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.view.local import LocalViewModel

# Each away from the view model's training settings (rhd.training.view.TRAINING_CONFIG: the default knobs).
SETTINGS: dict[str, dict] = {
    "default (for comparison)": {},
    "dim: gain 0.5-0.7": {"gain": (0.5, 0.7)},
    "bright: gain 1.3-1.5": {"gain": (1.3, 1.5)},
    "noisy: speckle 1.6": {"noise": 1.6},
    "flat: contrast 1.4-1.6": {"contrast": (1.4, 1.6)},
    "probe: 14 px, 9 degrees": {"jitter_px": 14.0, "jitter_deg": 9.0},
    "Nyquist 35-45 cm/s": {"nyquist_cm_s": (35.0, 45.0)},
    "coloured text on every study": {"coloured_text_rate": 1.0},
}


def recall(model: LocalViewModel, studies: list[Path]) -> tuple[dict[str, float], int]:
    confusion = np.zeros((len(VIEW_CLASSES), len(VIEW_CLASSES)), np.int64)
    for study in studies:
        for video in load_truth(study)["videos"]:
            if video["mode"] == "cw":
                continue
            frames = np.stack(decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames)
            fan = sector_mask(video_sector(frames), frames.shape[1:])  # the video's sector, as split finds it
            for label in model(frames, [fan] * len(frames)):
                confusion[VIEW_CLASSES.index(video["view_class"]), VIEW_CLASSES.index(label)] += 1
    rows = confusion.sum(axis=1)
    return {v: float(confusion[i, i] / rows[i]) for i, v in enumerate(VIEW_CLASSES) if rows[i]}, int(rows.sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--seed", type=int, default=6060)
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args()
    model = LocalViewModel(Path(args.models_dir))
    print(f"view model {model.version}; {args.studies} balanced studies of 12 videos of 1 s per setting")
    print(f"{'setting':<32} {'frames':>6} " + " ".join(f"{v:>6}" for v in VIEW_CLASSES))
    for name, knobs in SETTINGS.items():
        config = SynthConfig(videos_per_study=12, duration_s=(1.0, 1.0)).replace(**knobs)
        with tempfile.TemporaryDirectory() as tmp:
            studies = synth_studies(args.seed, args.studies, Path(tmp), config, balanced=True)
            by_view, frames = recall(model, studies)
        print(f"{name:<32} {frames:>6} " + " ".join(f"{by_view.get(v, float('nan')):6.3f}" for v in VIEW_CLASSES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
