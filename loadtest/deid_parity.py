"""The same diagnoses with and without deid's pixel cleaning (figures for the record, not a test).

Each generated study (the generator's default settings, burned-in text on every frame) is analysed twice in-process,
through the stage functions the services call: once on the frames deid cleans, once on the frames as the scanner
wrote them. Deid's target: labels identical and every class probability within 0.01. Prints the label agreement,
the largest probability difference, and the features that differ most (what in the analysis reads pixels outside
the image).

    .venv/bin/python loadtest/deid_parity.py --studies 24
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from rhd.diagnose.ops import diagnose, load_study_model
from rhd.inprocess import analyse_study
from rhd.synth.generator import synth_studies
from rhd.valve.local import LocalValveModel
from rhd.view.local import LocalViewModel

TOLERANCE = 0.01


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7171)
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args()
    models = Path(args.models_dir)
    view, valve, study_model = LocalViewModel(models), LocalValveModel(models), load_study_model(models)
    same_label, worst, differs = 0, 0.0, np.zeros(len(study_model.feature_names))
    with tempfile.TemporaryDirectory() as tmp:
        studies = synth_studies(args.seed, args.studies, Path(tmp), balanced=True)
        for folder in studies:
            cleaned, raw = (analyse_study(folder, view, valve, clean_pixels=c) for c in (True, False))
            a = diagnose(study_model, cleaned.names, cleaned.values)
            b = diagnose(study_model, raw.names, raw.values)
            gap = max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities)
            same_label += a.label == b.label
            worst = max(worst, gap)
            x, y = np.asarray(cleaned.values), np.asarray(raw.values)
            differs += ~np.isclose(x, y, rtol=1e-6, atol=1e-9)
            print(f"{folder.name}: {a.label:<10} {b.label:<10} max |dp| {gap:.4f}", flush=True)
    n = len(studies)
    print(f"\nstudies {n}; labels identical {same_label}/{n}; largest probability difference {worst:.4f}")
    for i in np.argsort(-differs)[:12]:
        if differs[i]:
            print(f"  {study_model.feature_names[i]:<40} differs on {int(differs[i])}/{n} studies")
    ok = same_label == n and worst <= TOLERANCE
    print(f"target (labels identical, probabilities within {TOLERANCE}): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
