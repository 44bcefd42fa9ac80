"""A minimal synthetic study maker: grey speckled B-mode views and colour Doppler frames with laminar
flow and, in the sicker classes, a mosaic regurgitant jet; a ground-truth sidecar beside each study."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rhd.labels import CLASSES, VIEWS


@dataclass(frozen=True)
class SynthConfig:
    videos_per_study: int = 4
    frames_per_video: int = 24
    fps: float = 24.0
    height: int = 240
    width: int = 320
    pixel_spacing_mm: float = 0.6
    nyquist_cm_s: float = 60.0
    doppler_share: float = 0.5
    prevalence: tuple[float, float, float] = (0.951, 0.042, 0.007)  # PROVAR: normal, borderline, definite
    noise: float = 1.0


@dataclass(frozen=True)
class FrameTruth:
    view: str
    doppler: bool
    flow_mask: np.ndarray = field(repr=False)
    jet_mask: np.ndarray = field(repr=False)
    jet_length_mm: float


@dataclass
class Video:
    video_id: str
    view: str
    doppler: bool
    jet_length_mm: float
    frames: list[np.ndarray] = field(repr=False)


@dataclass
class Study:
    study_id: str
    label: str
    metadata: dict
    hidden: dict
    videos: list[Video]


APEX_Y = 8
SECTOR_HALF_ANGLE = np.radians(40)
SECTOR_RADIUS = 225

# Chambers per view as (centre x, centre y, half-width, half-height) in a 320 x 240 frame; the valve
# (jet origin) and the direction the jet travels into the atrium.
VIEW_GEOMETRY: dict[str, dict] = {
    "plax": {"chambers": [(150, 95, 70, 26), (215, 175, 38, 30), (95, 165, 30, 18)],
             "valve": (185, 140), "jet_dir": (0.55, 0.83)},
    "psax": {"chambers": [(160, 130, 48, 48)], "ring": True, "valve": (160, 130), "jet_dir": (0.0, 1.0)},
    "a4c": {"chambers": [(125, 90, 32, 45), (195, 90, 32, 45), (125, 175, 30, 30), (195, 175, 30, 30)],
            "valve": (125, 135), "jet_dir": (0.0, 1.0)},
    "a2c": {"chambers": [(160, 85, 45, 48), (160, 180, 40, 32)], "valve": (160, 140), "jet_dir": (0.0, 1.0)},
}

FIRST_NAMES = ("Ana", "Joao", "Maria", "Pedro", "Lucas", "Julia", "Gabriel", "Beatriz", "Rafael", "Larissa")
SURNAMES = ("Silva", "Santos", "Oliveira", "Souza", "Pereira", "Costa", "Almeida", "Ferreira", "Lima", "Gomes")
HOSPITALS = ("Hospital das Clinicas BH", "Santa Casa Montes Claros", "UBS Sete Lagoas", "Hospital Risoleta Neves")


def sector_mask(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    dx, dy = x - width / 2, y - APEX_Y
    radius = np.hypot(dx, dy)
    angle = np.arctan2(dx, dy)
    return (radius <= SECTOR_RADIUS) & (np.abs(angle) <= SECTOR_HALF_ANGLE) & (dy > 0)


def _ellipse_mask(shape: tuple[int, int], cx: float, cy: float, ax: float, ay: float, angle: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (int(round(cx)), int(round(cy))), (max(1, int(ax)), max(1, int(ay))), angle, 0, 360, 1, -1)
    return mask.astype(bool)


def render_frame(
    view: str, phase: float, doppler: bool, jet_length_px: float, rng: np.random.Generator,
    config: SynthConfig, jitter: tuple[float, float, float, float] = (0, 0, 0, 1.0),
) -> tuple[np.ndarray, FrameTruth]:
    """One 240 x 320 BGR frame of `view` at cardiac `phase` in [0, 1); jitter = (dx, dy, angle, gain)."""
    h, w = config.height, config.width
    dx, dy, angle, gain = jitter
    geometry = VIEW_GEOMETRY[view]
    sector = sector_mask(h, w)
    beat = 1.0 + 0.08 * np.sin(2 * np.pi * phase)
    # Tissue: multiplicative Rayleigh speckle over a smooth brightness that fades with depth.
    depth = np.linspace(1.0, 0.55, h)[:, None]
    speckle = rng.rayleigh(0.55 * config.noise, (h, w)) if config.noise > 0 else np.full((h, w), 0.7)
    tissue = np.clip(150 * gain * depth * speckle, 0, 255)
    blood = np.zeros((h, w), bool)
    for cx, cy, ax, ay in geometry["chambers"]:
        blood |= _ellipse_mask((h, w), cx + dx, cy + dy, ax * beat, ay * beat, angle)
    if geometry.get("ring"):
        inner = geometry["chambers"][0]
        blood &= ~_ellipse_mask((h, w), inner[0] + dx, inner[1] + dy, inner[2] * 0.35, inner[3] * 0.35, angle)
    tissue[blood] *= 0.12
    grey = np.where(sector, tissue, 0).astype(np.uint8)
    image = cv2.merge([grey, grey, grey])
    flow = np.zeros((h, w), bool)
    jet = np.zeros((h, w), bool)
    if doppler:
        vx, vy = geometry["valve"]
        vx, vy = vx + dx, vy + dy
        # Laminar inflow during diastole (phase >= 0.45): red towards the probe, blue away from it.
        if phase >= 0.45:
            laminar = _ellipse_mask((h, w), vx, vy - 22, 14, 20, angle) & blood & sector
            intensity = int(150 + 100 * np.sin(np.pi * (phase - 0.45) / 0.55))
            image[laminar] = (0, 0, intensity)
            flow |= laminar
        else:
            outflow = _ellipse_mask((h, w), vx - 25, vy - 30, 10, 16, angle) & blood & sector
            image[outflow] = (200, 40, 0)
            flow |= outflow
        if jet_length_px > 0 and phase < 0.45:
            ux, uy = geometry["jet_dir"]
            end = (vx + ux * jet_length_px, vy + uy * jet_length_px)
            width_px = max(3.0, 0.35 * jet_length_px)
            jet_region = np.zeros((h, w), np.uint8)
            cv2.ellipse(jet_region, (int(round((vx + end[0]) / 2)), int(round((vy + end[1]) / 2))),
                        (max(1, int(jet_length_px / 2)), max(1, int(width_px / 2))),
                        float(np.degrees(np.arctan2(uy, ux))), 0, 360, 1, -1)
            jet = jet_region.astype(bool) & sector
            palette = np.array([(0, 220, 220), (0, 230, 0), (230, 230, 0), (0, 0, 230), (230, 0, 0), (0, 160, 255)],
                               np.uint8)
            image[jet] = palette[rng.integers(0, len(palette), int(jet.sum()))]
            flow |= jet
        # Colour bar with its Nyquist limit, right of the sector: red (towards) top, blue bottom.
        bar = np.linspace(1, -1, 120)
        for row, v in enumerate(bar):
            colour = (0, 0, int(255 * v)) if v > 0 else (int(-255 * v), 0, 0)
            image[60 + row, w - 18:w - 8] = colour
        cv2.putText(image, f"{config.nyquist_cm_s:.0f}", (w - 30, 52), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 255, 255), 1, cv2.LINE_AA)
    length_mm = float(jet_length_px * config.pixel_spacing_mm) if jet.any() else 0.0
    return image, FrameTruth(view, doppler, flow, jet, length_mm)


def _hidden(label: str, rng: np.random.Generator) -> dict:
    """Hidden disease parameters from which the label follows (a simplified WHF 2012 reading)."""
    if label == "normal":
        jet_mm = 0.0 if rng.random() < 0.7 else float(rng.uniform(3, 8))
        velocity = float(rng.uniform(0.8, 2.0))
    elif label == "borderline":
        jet_mm, velocity = float(rng.uniform(12, 22)), float(rng.uniform(2.0, 3.0))
    else:
        jet_mm, velocity = float(rng.uniform(24, 40)), float(rng.uniform(3.0, 5.0))
    return {"mr_jet_length_mm": round(jet_mm, 2), "mr_peak_velocity_m_s": round(velocity, 2)}


def make_study(study_id: str, label: str, rng: np.random.Generator, config: SynthConfig = SynthConfig()) -> Study:
    hidden = _hidden(label, rng)
    n = config.videos_per_study
    doppler_flags = rng.random(n) < config.doppler_share
    doppler_flags[rng.integers(0, n)] = True  # every study has at least one colour Doppler video
    videos = []
    for j in range(n):
        view = VIEWS[int(rng.integers(0, len(VIEWS)))]
        jet_mm = hidden["mr_jet_length_mm"] * float(rng.uniform(0.85, 1.15))
        jitter = (float(rng.uniform(-10, 10)), float(rng.uniform(-8, 8)), float(rng.uniform(-5, 5)),
                  float(rng.uniform(0.8, 1.2)))
        start = float(rng.random())
        frames = [render_frame(view, (start + k / config.frames_per_video) % 1.0, bool(doppler_flags[j]),
                               jet_mm / config.pixel_spacing_mm, rng, config, jitter)[0]
                  for k in range(config.frames_per_video)]
        videos.append(Video(f"{study_id}-V{j:02d}", view, bool(doppler_flags[j]), round(jet_mm, 2), frames))
    first, last = FIRST_NAMES[int(rng.integers(0, 10))], SURNAMES[int(rng.integers(0, 10))]
    metadata = {
        "study_id": study_id, "hospital_id": f"H{int(rng.integers(1, 5)):02d}",
        "hospital": HOSPITALS[int(rng.integers(0, len(HOSPITALS)))],
        "patient_name": f"{first} {last}", "patient_id": f"{int(rng.integers(10**8, 10**9))}",
        "birth_date": f"20{int(rng.integers(5, 16)):02d}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
        "sex": "F" if rng.random() < 0.5 else "M", "study_date": f"2026-{int(rng.integers(1, 11)):02d}-"
        f"{int(rng.integers(1, 29)):02d}", "operator": f"{FIRST_NAMES[int(rng.integers(0, 10))]} (sonographer)",
        "device": "Synthetic Vivid q", "pixel_spacing_mm": config.pixel_spacing_mm,
        "nyquist_cm_s": config.nyquist_cm_s, "fps": config.fps,
    }
    return Study(study_id, label, metadata, hidden, videos)


def write_study(study: Study, out_dir: Path, config: SynthConfig = SynthConfig()) -> Path:
    folder = Path(out_dir) / study.study_id
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for video in study.videos:
        filename = f"{video.video_id}.mp4"
        writer = cv2.VideoWriter(str(folder / filename), cv2.VideoWriter_fourcc(*"mp4v"), config.fps,
                                 (config.width, config.height))
        for frame in video.frames:
            writer.write(frame)
        writer.release()
        entries.append({"video_id": video.video_id, "filename": filename})
    (folder / "study.json").write_text(json.dumps({**study.metadata, "videos": entries}, indent=2) + "\n")
    truth = {"study_id": study.study_id, "label": study.label, "hidden": study.hidden,
             "config": asdict(config),
             "videos": [{"video_id": v.video_id, "view": v.view, "doppler": v.doppler,
                         "jet_length_mm": v.jet_length_mm, "frame_count": len(v.frames)} for v in study.videos]}
    (folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return folder


def synth_studies(seed: int, n_studies: int, out_dir: Path, config: SynthConfig = SynthConfig(),
                  balanced: bool = False) -> list[Path]:
    """Deterministic by seed: PROVAR prevalence, or labels cycling through the classes when balanced."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_studies):
        label = CLASSES[i % len(CLASSES)] if balanced else CLASSES[int(rng.choice(len(CLASSES), p=config.prevalence))]
        study = make_study(f"S{seed:04d}-{i:04d}", label, rng, config)
        paths.append(write_study(study, out_dir, config))
    return paths
