"""The valve stage's measurements against the generator's truth, per B-mode video (figures for the record, not a test).

Generates studies in the screening protocol (B-mode videos in every standard view), runs the served valve model
in-process and the valve stage's own functions on every frame, pools each video's frames as assemble does (by the
truth's cardiac phase, which the ECG gives the line to within 2% of the cycle), and prints:

- AMVL thickness: median and p95 absolute error per video (mm), against the thickness the truth gives;
- each yes/no finding (restricted motion, tip motion, chordal thickening, aortic cusp thickening, restriction,
  prolapse, coaptation defect): sensitivity and specificity per video, the threshold chosen on a first half of the
  studies (Youden's J) and applied to the second half.

    .venv/bin/python loadtest/valve_accuracy.py --studies 60
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from rhd.assemble.ops import VALVE_MEASUREMENTS, ValveVideo, video_measurement
from rhd.imaging.sector import image_only, sector_mask, video_sector
from rhd.imaging.video import decode_video
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.valve import ops
from rhd.valve.local import LocalValveModel

# finding -> (study feature, the truth's valve part and field, True when a larger value means the finding)
FINDINGS = {
    "mitral restricted motion": ("mitral_opening", "mitral", "restricted_motion", False),
    "mitral tip motion": ("mitral_coaptation_mm", "mitral", "excessive_tip_motion", True),
    "chordal thickening": ("chord_thickness_mm", "mitral", "chordal_thickening", True),
    "aortic cusp thickening": ("aortic_thickness_mm", "aortic", "irregular_thickening", True),
    "aortic restricted motion": ("aortic_opening", "aortic", "restricted_motion", False),
    "aortic prolapse": ("aortic_closure_bow_mm", "aortic", "prolapse", True),
    "aortic coaptation defect": ("aortic_gap_mm", "aortic", "coaptation_defect", True),
}


def video_rows(study: Path, model: LocalValveModel) -> list[dict]:
    truth = load_truth(study)
    spacing = float(json.loads((study / "study.json").read_text()).get("pixel_spacing_mm", 0.6))
    rows = []
    for video in truth["videos"]:
        if video["mode"] != "bmode" or video["view_class"] == "other":
            continue
        frames = np.stack(decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames)
        fan = sector_mask(video_sector(frames), frames.shape[1:])  # the video's sector, as split finds it
        answers = model(frames, [fan] * len(frames))
        readings = tuple(
            (
                k,
                f["phase"],
                dict(
                    zip(
                        ops.FEATURE_NAMES,
                        ops.valve_features(frame, answer, spacing, image_only(frame, fan)),
                        strict=True,
                    )
                ),
            )
            for k, (frame, answer, f) in enumerate(zip(frames, answers, video["frames"], strict=True))
        )
        measured = ValveVideo(video["video_id"], video["view"], readings)
        rows.append(
            {
                "view": video["view"],
                "valves": truth["valves"],
                **{name: video_measurement(measured, name) for name in VALVE_MEASUREMENTS},
            }
        )
    return rows


def youden(values: np.ndarray, truth: np.ndarray, larger: bool) -> float:
    signed = values if larger else -values
    best, threshold = -1.0, float(signed.min())
    for t in np.unique(signed):
        said = signed >= t
        j = said[truth].mean() + (~said[~truth]).mean() - 1
        if j > best:
            best, threshold = j, float(t)
    return threshold


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--dump", help="also write every video's measurements and truth to this JSON file")
    args = parser.parse_args()
    model = LocalValveModel(Path(args.models_dir))
    config = SynthConfig(videos_per_study=12, duration_s=(1.0, 2.0))
    with tempfile.TemporaryDirectory() as tmp:
        studies = synth_studies(args.seed, args.studies, Path(tmp), config, balanced=True)
        halves = [[r for s in part for r in video_rows(s, model)] for part in (studies[::2], studies[1::2])]
    print(f"valve model {model.version}, {args.studies} studies (seed {args.seed}), {sum(map(len, halves))} videos")
    if args.dump:
        Path(args.dump).write_text(json.dumps(halves))
    thick = [
        (r["amvl_thickness_mm"], r["valves"]["mitral"]["amvl_thickness_mm"])
        for rows in halves
        for r in rows
        if r["amvl_thickness_mm"] is not None and r["amvl_thickness_mm"] > 0
    ]
    error = np.abs(np.array([m - t for m, t in thick]))
    print(
        f"AMVL thickness: {len(thick)} videos, median |error| {np.median(error):.2f} mm, "
        f"p95 {np.percentile(error, 95):.2f} mm"
    )
    for finding, (feature, part, field, larger) in FINDINGS.items():
        fitted = [(r[feature], r["valves"][part][field]) for r in halves[0] if r[feature] is not None]
        tested = [(r[feature], r["valves"][part][field]) for r in halves[1] if r[feature] is not None]
        if not fitted or not tested:
            print(f"{finding}: no videos")
            continue
        fv, ft = np.array([v for v, _ in fitted]), np.array([t for _, t in fitted], bool)
        tv, tt = np.array([v for v, _ in tested]), np.array([t for _, t in tested], bool)
        if ft.all() or not ft.any():
            print(f"{finding}: the first half has one class only")
            continue
        t = youden(fv, ft, larger)
        said = (tv if larger else -tv) >= t
        sens = said[tt].mean() if tt.any() else float("nan")
        spec = (~said[~tt]).mean() if (~tt).any() else float("nan")
        print(
            f"{finding}: {len(tested)} videos ({int(tt.sum())} with), sensitivity {sens:.2f}, "
            f"specificity {spec:.2f} (threshold {abs(t):.3f} on {feature})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
