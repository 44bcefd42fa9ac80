"""Synthetic echo studies as a screening programme produces them: about 15 videos of 1-3 s per study in the
standard views, B-mode and colour Doppler, identifying text burned in, a hidden disease state from which the
WHF 2012 label follows, and per-frame ground truth written apart from what a hospital would publish.

Deterministic: study i of seed s depends only on (s, i) and the config. Every knob is a SynthConfig field with
a documented default (docs/synth.md), so harder variants need no code change (`rhd synth --set noise=1.6`).
"""

import dataclasses
import datetime as dt
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from google.protobuf import json_format

from rhd.labels import CLASSES, VIEWS
from rhd.synth import dicom as dcm
from rhd.synth import overlays, spectral
from rhd.synth.criteria import DiseaseKnobs, Valves, findings, sample_valves, whf_label
from rhd.synth.render import (
    SYSTOLE_END,
    VIEW_GEOMETRY,
    FrameTruth,
    JetScene,
    Pose,
    Scene,
    render_frame,
    spectral_inflow_cm_s,
    spectral_jets,
)
from rhd.v1 import rhd_pb2 as pb

assert tuple(VIEW_GEOMETRY) == VIEWS, "the renderer draws exactly the standard views"

PROVAR_PREVALENCE = (0.951, 0.042, 0.007)  # normal, borderline, definite
# The screening protocol in order of priority, as (view, mode, valve under the colour box or CW cursor); mode is
# "bmode", "colour" (colour Doppler) or "cw" (continuous-wave spectral Doppler). A study with fewer videos keeps the
# first ones.
PROTOCOL: tuple[tuple[str, str, str], ...] = (
    ("plax", "colour", "mitral"),
    ("a4c", "colour", "mitral"),
    ("plax", "bmode", "mitral"),
    ("psax", "colour", "mitral"),
    ("a5c", "colour", "aortic"),
    ("plax", "colour", "aortic"),
    ("a4c", "cw", "mitral"),
    ("a5c", "cw", "aortic"),
    ("a4c", "bmode", "mitral"),
    ("psax", "bmode", "mitral"),
    ("a5c", "bmode", "mitral"),
    ("a5c", "colour", "mitral"),
)
MODES = ("bmode", "colour", "cw")
MR_VIEWS = ("plax", "a4c", "psax", "a5c")  # views whose colour box over the mitral valve can show MR
AR_VIEWS = ("plax", "a5c")  # views with the aortic valve in plane
DEVICES = ("Vscan Extend R2", "Vivid iq", "Lumify S4-1", "SonoSite M-Turbo")
FIRST_NAMES_F = (
    "Ana",
    "Maria",
    "Júlia",
    "Beatriz",
    "Larissa",
    "Gabriela",
    "Fernanda",
    "Camila",
    "Letícia",
    "Isabela",
    "Mariana",
    "Vitória",
    "Yasmin",
    "Luana",
    "Rafaela",
    "Sofia",
)
FIRST_NAMES_M = (
    "João",
    "Pedro",
    "Lucas",
    "Gabriel",
    "Rafael",
    "Mateus",
    "Gustavo",
    "Felipe",
    "Thiago",
    "Davi",
    "Enzo",
    "Miguel",
    "Arthur",
    "Samuel",
    "Vinícius",
    "Caio",
)
SURNAMES = (
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Pereira",
    "Costa",
    "Almeida",
    "Ferreira",
    "Lima",
    "Gomes",
    "Ribeiro",
    "Carvalho",
    "Rodrigues",
    "Martins",
    "Araújo",
    "Barbosa",
    "Rocha",
    "Teixeira",
    "Moreira",
    "Nascimento",
    "Cardoso",
    "Mendes",
    "Conceição",
    "Batista",
)
HOSPITALS = (
    "Hospital Regional do Norte de Minas",
    "Policlínica Municipal Vale do Jequitinhonha",
    "UBS Jardim das Acácias",
    "Hospital Municipal Santa Rita",
    "Centro de Saúde São Vicente",
)
# Where each hospital is: (city, federative unit); the unit leaves the home region as a quasi-identifier.
HOSPITAL_PLACES = (
    ("Montes Claros", "MG"),
    ("Araçuaí", "MG"),
    ("São Paulo", "SP"),
    ("Recife", "PE"),
    ("Salvador", "BA"),
)


@dataclass(frozen=True)
class SynthConfig:
    """Generation knobs. Ranges are (low, high) drawn uniformly per study unless said otherwise."""

    # videos
    videos_per_study: int = 15
    duration_s: tuple[float, float] = (1.0, 3.0)  # per video
    fps: float = 24.0
    height: int = 240
    width: int = 320
    pixel_spacing_mm: float = 0.6
    view_mix: tuple[float, float, float, float] = (0.35, 0.2, 0.25, 0.2)  # plax, psax, a4c, a5c beyond the protocol
    colour_share: float = 0.5  # share of colour Doppler among videos beyond the protocol
    off_axis_rate: float = 0.05  # per video: probe off axis (view class "other")
    poor_quality_rate: float = 0.05  # per video: poor acoustic window (view class "other")
    # image
    noise: float = 1.0  # speckle strength
    gain: tuple[float, float] = (0.75, 1.25)
    contrast: tuple[float, float] = (0.8, 1.25)  # gamma of the grey map
    jitter_px: float = 8.0  # probe position, +- per video
    jitter_deg: float = 5.0  # probe angle, +- per video
    # colour Doppler
    nyquist_cm_s: tuple[float, float] = (50.0, 70.0)
    wall_filter: float = 0.08  # |v| / Nyquist under which no colour shows
    chamber_flow: float = 0.22  # slow swirling flow in the chambers under the box, peak as a share of Nyquist
    inflow_cm_s: tuple[float, float] = (60.0, 110.0)  # peak mitral inflow (aliases when above Nyquist)
    outflow_cm_s: tuple[float, float] = (70.0, 120.0)  # peak systolic ejection
    measurement_noise: float = 0.08  # relative sd of a jet's drawn length from video to video
    bmode_colour_bar_rate: float = 0.3  # B-mode videos recorded in a preset that still shows the colour bar
    # overlays; text lines are str.format templates over the study metadata
    text_lines: tuple[str, ...] = ("{hospital}", "{patient_name}", "ID {patient_id}", "{study_date} {study_time}")
    device_lines: tuple[str, ...] = ("{device}", "MI 0.9 TIs 0.4", "{fps:.0f} Hz")
    coloured_text_rate: float = 0.2  # studies whose text is burned in yellow rather than white
    ecg: bool = True
    depth_marks: bool = True
    # population
    prevalence: tuple[float, float, float] = PROVAR_PREVALENCE  # normal, borderline, definite
    disease: DiseaseKnobs = DiseaseKnobs()

    def replace(self, **changes) -> "SynthConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_overrides(cls, overrides: dict, base: "SynthConfig | None" = None) -> "SynthConfig":
        """Apply {"noise": 1.5, "disease.near_threshold_share": 0.5, ...}; unknown keys are an error."""
        config = base or cls()
        disease = {k.removeprefix("disease."): v for k, v in overrides.items() if k.startswith("disease.")}
        top = {k: v for k, v in overrides.items() if not k.startswith("disease.")}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(top) - names) + sorted(
            f"disease.{k}" for k in set(disease) - {f.name for f in dataclasses.fields(DiseaseKnobs)}
        )
        if unknown:
            raise ValueError(f"unknown synth knob(s): {', '.join(unknown)}")
        typed = {k: tuple(v) if isinstance(v, list) else v for k, v in top.items()}
        if "disease" in typed and isinstance(typed["disease"], dict):
            disease = {**typed.pop("disease"), **disease}
        if disease:
            typed["disease"] = dataclasses.replace(config.disease, **disease)
        return dataclasses.replace(config, **typed)


@dataclass
class Video:
    video_id: str
    scene: Scene
    start_phase: float
    frames: list[np.ndarray] = field(repr=False)
    truths: list[FrameTruth] = field(repr=False)


@dataclass
class Study:
    study_id: str
    label: str
    valves: Valves
    metadata: dict  # study.json without its video list: what the hospital exports
    acquisition: dict  # per-study settings: nyquist, gain, heart rate, views showing each jet
    videos: list[Video]
    config: SynthConfig


def _metadata(study_id: str, rng: np.random.Generator, config: SynthConfig, nyquist: float) -> dict:
    """Identifying fields as a hospital export carries them (all invented)."""
    sex = "F" if rng.random() < 0.5 else "M"
    first = rng.choice(FIRST_NAMES_F if sex == "F" else FIRST_NAMES_M)
    surnames = rng.choice(SURNAMES, size=2, replace=False)
    hospital = int(rng.integers(len(HOSPITALS)))
    study_date = dt.date(2025, 3, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    birth_date = study_date - dt.timedelta(days=int(rng.integers(5 * 365, 18 * 365)))  # school-age screening
    minutes = int(rng.integers(7 * 60, 18 * 60))
    operator_first = rng.choice(FIRST_NAMES_F + FIRST_NAMES_M)
    return {
        "study_id": study_id,
        "hospital_id": f"H{hospital + 1:03d}",
        "hospital": HOSPITALS[hospital],
        "state": HOSPITAL_PLACES[hospital][1],
        "patient_name": f"{first} {surnames[0]} {surnames[1]}",
        "patient_id": "7" + "".join(str(d) for d in rng.integers(0, 10, 14)),  # 15 digits, as a CNS card
        "birth_date": birth_date.isoformat(),
        "sex": sex,
        "study_date": study_date.isoformat(),
        "study_time": f"{minutes // 60:02d}:{minutes % 60:02d}",
        "operator": f"{operator_first} {rng.choice(SURNAMES)}",
        "device": DEVICES[int(rng.integers(len(DEVICES)))],
        "pixel_spacing_mm": config.pixel_spacing_mm,
        "nyquist_cm_s": round(nyquist, 1),
        "fps": config.fps,
    }


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _protocol(rng: np.random.Generator, config: SynthConfig) -> list[tuple[str, str, str]]:
    n = config.videos_per_study
    chosen = list(PROTOCOL[:n])
    mix = np.asarray(config.view_mix, float)
    for _ in range(n - len(chosen)):
        view = VIEWS[int(rng.choice(len(VIEWS), p=mix / mix.sum()))]
        mode = "colour" if rng.random() < config.colour_share else "bmode"
        target = "aortic" if view in AR_VIEWS and rng.random() < 0.3 else "mitral"
        chosen.append((view, mode, target))
    return [chosen[i] for i in rng.permutation(n)]  # operators do not record in protocol order


def _jet_views(rng: np.random.Generator, views_seen: int, candidates: tuple[str, ...]) -> list[str]:
    """Views a jet shows in: PLAX first, as readers look there first, then others at random."""
    if views_seen <= 0:
        return []
    rest = [candidates[1 + i] for i in rng.permutation(len(candidates) - 1)]
    return [candidates[0], *rest][:views_seen]


def _jet_in_view(
    jet_params, views: list[str], view: str, rng: np.random.Generator, config: SynthConfig, late: bool
) -> JetScene | None:
    """The jet as it appears in one video: longest in the first view, shorter elsewhere, with measurement noise."""
    if view not in views:
        return None
    share = 1.0 if view == views[0] else float(rng.uniform(0.6, 0.95))
    noise = float(np.clip(rng.normal(1.0, config.measurement_noise), 0.7, 1.3))
    duration = float(np.clip(jet_params.duration_fraction + rng.normal(0.0, 0.03), 0.05, 1.0))
    return JetScene(
        round(jet_params.jet_length_mm * share * noise, 2),
        round(duration, 3),
        late,
        round(jet_params.peak_velocity_m_s * 100.0, 1),
    )


def make_study(study_id: str, label: str, rng: np.random.Generator, config: SynthConfig = SynthConfig()) -> Study:
    """A study in memory: its disease, acquisition settings and every video's frames with their truth."""
    valves = sample_valves(label, rng, config.disease)
    if whf_label(valves) != label:
        raise AssertionError(f"sampled valves for {label} read as {whf_label(valves)}")
    nyquist = _uniform(rng, config.nyquist_cm_s)
    metadata = _metadata(study_id, rng, config, nyquist)
    acquisition = {
        "nyquist_cm_s": round(nyquist, 1),
        "gain": round(_uniform(rng, config.gain), 3),
        "contrast": round(_uniform(rng, config.contrast), 3),
        "heart_rate_bpm": round(_uniform(rng, (75.0, 115.0)), 1),
        "inflow_cm_s": round(_uniform(rng, config.inflow_cm_s), 1),
        "outflow_cm_s": round(_uniform(rng, config.outflow_cm_s), 1),
        "mr_views": _jet_views(rng, valves.mr.views_seen, MR_VIEWS),
        "ar_views": _jet_views(rng, valves.ar.views_seen, AR_VIEWS),
        "mr_late": bool(rng.random() < 0.5),
        "ar_late": bool(rng.random() < 0.5),
        "text_colour": "yellow" if rng.random() < config.coloured_text_rate else "white",
    }
    fields = {**metadata, "fps": config.fps}
    text = tuple(("phi", line.format(**fields)) for line in config.text_lines)
    device = tuple(line.format(**fields) for line in config.device_lines)
    text_colour = overlays.YELLOW if acquisition["text_colour"] == "yellow" else overlays.WHITE
    mitral, aortic = valves.mitral, valves.aortic
    videos = []
    for j, (view, mode, target) in enumerate(_protocol(rng, config)):
        colour, cw = mode == "colour", mode == "cw"
        quality = "good"
        roll = rng.random()
        if cw:
            pass  # a spectral trace has no image of the heart to be off axis or in a poor window
        elif roll < config.off_axis_rate:
            quality = "off_axis"
        elif roll < config.off_axis_rate + config.poor_quality_rate:
            quality = "poor"
        if quality == "off_axis":
            pose = Pose(
                float(rng.uniform(-25, 25)),
                float(rng.uniform(-5, 25)),
                float(rng.choice([-1, 1]) * rng.uniform(14, 24)),
                float(rng.uniform(0.78, 0.9)),
            )
        else:
            pose = Pose(
                float(rng.uniform(-1, 1) * config.jitter_px),
                float(rng.uniform(-1, 1) * config.jitter_px),
                float(rng.uniform(-1, 1) * config.jitter_deg),
                float(rng.uniform(0.95, 1.05)),
            )
        gain = acquisition["gain"] * float(rng.uniform(0.9, 1.1)) * (0.55 if quality == "poor" else 1.0)
        if cw:  # the cursor through the valve catches its jet whatever the views the colour shows it in
            mr = (
                _jet_in_view(valves.mr, [view], view, rng, config, acquisition["mr_late"])
                if valves.mr.views_seen
                else None
            )
            ar = (
                _jet_in_view(valves.ar, [view], view, rng, config, acquisition["ar_late"])
                if valves.ar.views_seen
                else None
            )
        else:
            mr = _jet_in_view(valves.mr, acquisition["mr_views"], view, rng, config, acquisition["mr_late"])
            ar = _jet_in_view(valves.ar, acquisition["ar_views"], view, rng, config, acquisition["ar_late"])
        scene = Scene(
            view=view,
            colour=colour,
            spectral=target if cw else None,
            target=target,
            quality=quality,
            pose=pose,
            gain=round(gain, 3),
            contrast=acquisition["contrast"],
            noise=config.noise,
            pixel_spacing_mm=config.pixel_spacing_mm,
            nyquist_cm_s=acquisition["nyquist_cm_s"],
            wall_filter=config.wall_filter,
            chamber_flow=config.chamber_flow,
            colour_bar=bool(mode == "bmode" and rng.random() < config.bmode_colour_bar_rate),
            leaflet_mm=mitral.amvl_thickness_mm,
            mitral_restricted=mitral.restricted_motion,
            mitral_tip_excess=mitral.excessive_tip_motion,
            chordal_thickening=mitral.chordal_thickening,
            aortic_thick=aortic.irregular_thickening,
            aortic_restricted=aortic.restricted_motion,
            aortic_coaptation_defect=aortic.coaptation_defect,
            aortic_prolapse=aortic.prolapse,
            inflow_cm_s=acquisition["inflow_cm_s"],
            ms_mean_gradient_mmhg=valves.ms_mean_gradient_mmhg,
            outflow_cm_s=acquisition["outflow_cm_s"],
            mr=mr if (colour or cw) and target == "mitral" else None,
            ar=ar if (colour or cw) and target == "aortic" else None,
            heart_rate_bpm=acquisition["heart_rate_bpm"],
            text_lines=text,
            device_lines=device,
            text_colour=text_colour,
            ecg=config.ecg,
            depth_marks=config.depth_marks,
            height=config.height,
            width=config.width,
        )
        n_frames = max(2, int(round(_uniform(rng, config.duration_s) * config.fps)))
        start = float(rng.random())
        step = acquisition["heart_rate_bpm"] / 60.0 / config.fps
        frames, truths = [], []
        for k in range(n_frames):
            image, truth = render_frame(scene, start + k * step, rng)
            frames.append(image)
            truths.append(truth)
        videos.append(Video(f"{study_id}-V{j:02d}", scene, round(start, 4), frames, truths))
    return Study(study_id, label, valves, metadata, acquisition, videos, config)


def truth_dir(study_dir: Path) -> Path:
    """Where the ground truth of a study folder lives: beside the studies, never inside what is published."""
    study_dir = Path(study_dir)
    return study_dir.parent / "truth" / study_dir.name


def load_truth(study_dir: Path) -> dict:
    return json.loads((truth_dir(study_dir) / "truth.json").read_text())


def load_frame_truth(study_dir: Path, video_id: str) -> dict[str, np.ndarray]:
    """Per-frame arrays of a colour video: flow and jet masks (bool N x H x W), velocity (float32 cm/s)."""
    with np.load(truth_dir(study_dir) / f"{video_id}.npz") as data:
        shape = tuple(int(x) for x in data["shape"])
        unpack = lambda a: np.unpackbits(a, axis=-1, count=shape[2]).astype(bool)  # noqa: E731
        return {
            "flow": unpack(data["flow"]),
            "jet": unpack(data["jet"]),
            "velocity_cm_s": data["velocity_dmm_s"].astype(np.float32) / 10.0,
        }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed stamps the current time into the zip: write it with a fixed date instead."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def _frame_record(truth: FrameTruth, phase: float) -> dict:
    v = np.abs(truth.velocity_cm_s[truth.flow_mask])
    return {
        "phase": round(phase % 1.0, 4),
        "systole": bool(phase % 1.0 < SYSTOLE_END),
        "doppler": truth.doppler,
        "flow_pixels": int(truth.flow_mask.sum()),
        "jet_pixels": int(truth.jet_mask.sum()),
        "mr_length_mm": truth.mr_length_mm,
        "ar_length_mm": truth.ar_length_mm,
        "peak_velocity_cm_s": round(float(v.max()), 1) if v.size else 0.0,
        "mean_velocity_cm_s": round(float(v.mean()), 1) if v.size else 0.0,
    }


def _spectral_truth(scene: Scene) -> dict | None:
    """What a spectral video shows, as a reader would measure it on the trace."""
    if scene.spectral is None:
        return None
    mr, ar = spectral_jets(scene)
    stenosis = scene.ms_mean_gradient_mmhg > 0
    return {
        "valve": scene.spectral,
        "mr_peak_m_s": round(mr[0] / 100.0, 3) if mr else 0.0,
        "mr_duration": mr[1] if mr else 0.0,
        "ar_peak_m_s": round(ar[0] / 100.0, 3) if ar else 0.0,
        "ar_duration": ar[1] if ar else 0.0,
        "mean_gradient_mmhg": round(spectral.mean_gradient_mmhg(spectral_inflow_cm_s(scene), stenosis), 3)
        if scene.spectral == "mitral"
        else 0.0,
        "outflow_peak_m_s": round(scene.outflow_cm_s / 100.0, 3) if scene.spectral == "aortic" else 0.0,
    }


def video_mode(scene: Scene) -> str:
    return "cw" if scene.spectral else "colour" if scene.colour else "bmode"


def _video_truth(video: Video, step: float) -> dict:
    scene = video.scene
    return {
        "video_id": video.video_id,
        "view": scene.view,
        "view_class": scene.view_class,
        "quality": scene.quality,
        "mode": video_mode(scene),
        "spectral": _spectral_truth(scene),
        "doppler": scene.colour,
        "colour_box": scene.target if scene.colour else None,
        "frame_count": len(video.frames),
        "start_phase": video.start_phase,
        "pose": asdict(scene.pose),
        "gain": scene.gain,
        "colour_bar": scene.colour or scene.colour_bar,
        "mr": asdict(scene.mr) if scene.mr else None,
        "ar": asdict(scene.ar) if scene.ar else None,
        "jet_length_mm": max((t.jet_length_mm for t in video.truths), default=0.0),
        "overlays": video.truths[0].overlays if video.truths else [],
        "frames": [_frame_record(t, video.start_phase + k * step) for k, t in enumerate(video.truths)],
    }


def write_study(study: Study, out_dir: Path, dicom: bool = False) -> Path:
    """Write <out_dir>/<study_id>/ (study.json and one MP4 per video, as a hospital exports them; with `dicom` each
    video also as an echo machine sends it, in <study_id>/dicom/) and the ground truth apart in
    <out_dir>/truth/<study_id>/ (truth.json, with every identifier written, and per colour video an .npz of masks
    and velocities)."""
    config = study.config
    folder = Path(out_dir) / study.study_id
    folder.mkdir(parents=True, exist_ok=True)
    truth_folder = truth_dir(folder)
    truth_folder.mkdir(parents=True, exist_ok=True)
    entries = []
    hospital = HOSPITALS.index(study.metadata["hospital"])
    identity = dcm.study_identity(study.study_id, *HOSPITAL_PLACES[hospital][::-1])
    uids: list[str] = [identity.study_uid]
    for index, video in enumerate(study.videos):
        filename = f"{video.video_id}.mp4"
        writer = cv2.VideoWriter(
            str(folder / filename), cv2.VideoWriter_fourcc(*"mp4v"), config.fps, (config.width, config.height)
        )
        if not writer.isOpened():
            raise OSError(f"cannot open an mp4v writer for {folder / filename}")
        try:
            for frame in video.frames:
                writer.write(frame)
        finally:
            writer.release()
        entry = {"video_id": video.video_id, "filename": filename}
        if video.scene.spectral:
            # As DICOM's Sequence of Ultrasound Regions calibrates a spectral trace.
            entry["regions"] = [spectral.region(config.height, config.width, video.scene.spectral).as_dict()]
        entries.append(entry)
        if dicom:
            regions = [json_format.ParseDict(r, pb.UltrasoundRegion()) for r in entry.get("regions", [])]
            ds = dcm.video_dataset(study.metadata, identity, video.video_id, index, video.frames, config.fps, regions)
            (folder / "dicom").mkdir(exist_ok=True)
            ds.save_as(folder / "dicom" / f"{video.video_id}.dcm", enforce_file_format=True)
            uids += [ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID]
        if video.scene.colour:
            _write_npz(
                truth_folder / f"{video.video_id}.npz",
                {
                    "shape": np.array([len(video.frames), config.height, config.width]),
                    "flow": np.packbits(np.stack([t.flow_mask for t in video.truths]), axis=-1),
                    "jet": np.packbits(np.stack([t.jet_mask for t in video.truths]), axis=-1),
                    "velocity_dmm_s": np.round(np.stack([t.velocity_cm_s for t in video.truths]) * 10).astype(np.int16),
                },
            )
    (folder / "study.json").write_text(json.dumps({**study.metadata, "videos": entries}, indent=2) + "\n")
    step = study.acquisition["heart_rate_bpm"] / 60.0 / config.fps
    truth = {
        "study_id": study.study_id,
        "label": study.label,
        "findings": findings(study.valves),
        "valves": study.valves.as_dict(),
        "acquisition": study.acquisition,
        "config": asdict(config),
        "videos": [_video_truth(v, step) for v in study.videos],
        # Every identifying value the upload carries (sidecar, and the DICOM files when written), for the audit.
        "identifiers": {**dcm.identifiers(study.metadata, identity), "uids": uids if dicom else []},
        "dicom": {"transfer_syntax": identity.transfer_syntax, "charset": identity.charset} if dicom else None,
    }
    (truth_folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return folder


def study_labels(
    seed: int,
    n_studies: int,
    config: SynthConfig = SynthConfig(),
    mix: str = "prevalence",
    counts: dict[str, int] | None = None,
) -> list[str]:
    """Labels of studies 0..n-1: drawn at config.prevalence, cycled ("balanced"), or exactly `counts` per class
    in a seeded order ("stratified", for evaluating the rare classes)."""
    if counts:
        unknown = set(counts) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown class(es) {sorted(unknown)}; expected {CLASSES}")
        labels = [c for c in CLASSES for _ in range(counts.get(c, 0))]
        return [labels[i] for i in np.random.default_rng([seed, 1]).permutation(len(labels))]
    if mix == "balanced":
        return [CLASSES[i % len(CLASSES)] for i in range(n_studies)]
    if mix != "prevalence":
        raise ValueError(f"unknown mix {mix!r}; expected 'prevalence' or 'balanced'")
    p = np.asarray(config.prevalence, float)
    draws = np.random.default_rng([seed, 0]).choice(len(CLASSES), size=n_studies, p=p / p.sum())
    return [CLASSES[int(i)] for i in draws]


def generate(seed: int, labels: list[str], config: SynthConfig = SynthConfig()) -> Iterator[Study]:
    """Studies in memory; study i depends only on (seed, i, labels[i], config)."""
    for i, (label, child) in enumerate(zip(labels, np.random.SeedSequence(seed).spawn(len(labels)), strict=True)):
        yield make_study(f"S{seed:04d}-{i:04d}", label, np.random.default_rng(child), config)


def synth_studies(
    seed: int,
    n_studies: int,
    out_dir: Path,
    config: SynthConfig = SynthConfig(),
    balanced: bool = False,
    counts: dict[str, int] | None = None,
    dicom: bool = False,
) -> list[Path]:
    """Write n studies (or sum(counts)) under out_dir; returns the study folders in order."""
    labels = study_labels(seed, n_studies, config, "balanced" if balanced else "prevalence", counts)
    return [write_study(study, out_dir, dicom) for study in generate(seed, labels, config)]
