"""Synthetic echo studies: speckled B-mode views and colour Doppler frames whose mitral regurgitant jet
length follows the study's class, written as a hospital would export them, with the ground truth apart."""

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from rhd.labels import CLASSES, VIEWS

# Everything is laid out on a 320 x 240 reference frame and scaled by height / 240.
REF_HEIGHT = 240.0
APEX_Y = 8.0
SECTOR_RADIUS = 225.0
SECTOR_HALF_ANGLE_DEG = 40.0
SYSTOLE_END = 0.45  # cardiac phase at which the mitral valve opens again
SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel centres and axes
SHIFT_SCALE = 1 << SHIFT

# Echogenicity multipliers of the B-mode canvas.
TISSUE, BLOOD, BRIGHT, LEAFLET = 1.0, 0.08, 1.6, 2.0


@dataclass(frozen=True)
class SynthConfig:
    videos_per_study: int = 4
    frames_per_video: int = 24
    fps: float = 24.0
    height: int = 240
    width: int = 320
    pixel_spacing_mm: float = 0.6  # mm per pixel; the anatomy is sized for 0.6 at 240 px high
    nyquist_cm_s: float = 60.0
    doppler_share: float = 0.5  # share of videos in colour Doppler (at least one per study)
    prevalence: tuple[float, float, float] = (0.951, 0.042, 0.007)  # normal, borderline, definite (PROVAR)
    noise: float = 1.0  # speckle strength multiplier


@dataclass(frozen=True)
class FrameTruth:
    view: str
    doppler: bool
    flow_mask: np.ndarray = field(repr=False)  # bool H x W: colour flow pixels (laminar + jet)
    jet_mask: np.ndarray = field(repr=False)  # bool H x W: mosaic regurgitant jet pixels
    jet_length_mm: float  # extent of jet_mask along the jet axis, as drawn


class Jitter(NamedTuple):
    """Per-video probe placement: shift (px), rotation about the sector apex (degrees), gain."""

    dx: float = 0.0
    dy: float = 0.0
    angle_deg: float = 0.0
    gain: float = 1.0


NO_JITTER = Jitter()


@dataclass
class Video:
    video_id: str
    view: str
    doppler: bool
    jet_length_mm: float  # longest jet drawn in any frame; 0 for B-mode
    jitter: Jitter
    start_phase: float
    frames: list[np.ndarray] = field(repr=False)
    truths: list[FrameTruth] = field(repr=False)


@dataclass
class Study:
    study_id: str
    label: str
    metadata: dict  # study.json without its video list
    hidden: dict  # the disease parameters the label follows from
    videos: list[Video]
    config: SynthConfig


# Per view, on the reference frame. Shapes are painted in order onto the echogenicity canvas:
# ("ellipse", echo, (cx, cy), (ax, ay), angle_deg, group) or ("tube", echo, (x0, y0), (x1, y1), thickness, group);
# group "v" (ventricles) shrinks in systole while "a" (atria) fills, "-" does not move.
# The mitral valve is given by its two hinge points; the jet leaves their midpoint along jet_dir into the atrium.
VIEW_GEOMETRY: dict[str, dict] = {
    "plax": {
        "shapes": [
            ("ellipse", BLOOD, (160, 58), (40, 10), -8, "v"),  # right ventricle, near field
            ("ellipse", BLOOD, (128, 118), (70, 24), -8, "v"),  # long horizontal left ventricle
            ("tube", BLOOD, (188, 106), (236, 98), 22, "-"),  # aortic root
            ("ellipse", BLOOD, (214, 160), (30, 24), 0, "a"),  # left atrium behind the root
            ("ellipse", BLOOD, (236, 204), (8, 8), 0, "-"),  # descending aorta
            ("ellipse", BRIGHT, (150, 196), (95, 7), -6, "-"),  # pericardium
        ],
        "mitral": ((180, 128), (198, 146)), "jet_dir": (0.6, 0.8),
        "inflow": (18, 16, 10), "systolic": ((178, 104), (14, 7), -10),  # into the aortic root
    },
    "psax": {
        "shapes": [
            ("ellipse", BLOOD, (124, 70), (52, 16), -28, "v"),  # right ventricle crescent...
            ("ellipse", TISSUE, (160, 128), (62, 62), 0, "-"),  # ...cut by the septum
            ("ellipse", BRIGHT, (160, 128), (58, 58), 0, "v"),  # myocardial ring
            ("ellipse", BLOOD, (160, 128), (44, 44), 0, "v"),  # left ventricle cavity
            ("ellipse", TISSUE, (136, 154), (7, 6), 0, "v"),  # papillary muscles
            ("ellipse", TISSUE, (184, 154), (7, 6), 0, "v"),
        ],
        "mitral": ((134, 128), (186, 128)), "jet_dir": (0.25, 0.97), "fish_mouth": True,
        "inflow": (0, 20, 6), "systolic": ((160, 104), (16, 8), 0),  # towards the outflow, obliquely
    },
    "a4c": {
        "shapes": [
            ("ellipse", BLOOD, (124, 84), (24, 50), 14, "v"),  # right ventricle
            ("ellipse", BLOOD, (196, 84), (28, 52), -14, "v"),  # left ventricle
            ("ellipse", BLOOD, (125, 166), (26, 24), 0, "a"),  # right atrium
            ("ellipse", BLOOD, (196, 168), (29, 26), 0, "a"),  # left atrium
        ],
        "mitral": ((174, 138), (220, 138)), "jet_dir": (0.05, 1.0),
        "inflow": (22, 22, 12), "systolic": ((178, 110), (7, 18), -20),  # along the septum to the LVOT
    },
    "a2c": {
        "shapes": [
            ("ellipse", BLOOD, (160, 82), (34, 54), 0, "v"),  # left ventricle
            ("ellipse", BLOOD, (160, 172), (36, 28), 0, "a"),  # left atrium below it
        ],
        "mitral": ((134, 140), (186, 140)), "jet_dir": (0.0, 1.0),
        "inflow": (24, 24, 14), "systolic": ((160, 104), (14, 22), 0),  # basal LV towards the outflow
    },
}

# Colour Doppler box around the mitral valve, in sector coordinates relative to the valve.
ROI_BEHIND_PX, ROI_AHEAD_PX, ROI_HALF_ANGLE_DEG = 55.0, 95.0, 17.0
# Mosaic of the aliased, turbulent jet, pixel by pixel: mostly the variance colours (green, yellow, cyan),
# a few aliased reds and blues.
MOSAIC_PALETTE = np.array([(0, 230, 0), (0, 230, 230), (230, 230, 0), (0, 0, 230), (230, 0, 0)], np.uint8)
MOSAIC_WEIGHTS = np.array([0.3, 0.3, 0.3, 0.05, 0.05])

FIRST_NAMES_F = ("Ana", "Maria", "Júlia", "Beatriz", "Larissa", "Gabriela", "Fernanda", "Camila", "Letícia",
                 "Isabela", "Mariana", "Vitória", "Yasmin", "Luana", "Rafaela", "Sofia")
FIRST_NAMES_M = ("João", "Pedro", "Lucas", "Gabriel", "Rafael", "Mateus", "Gustavo", "Felipe", "Thiago",
                 "Davi", "Enzo", "Miguel", "Arthur", "Samuel", "Vinícius", "Caio")
SURNAMES = ("Silva", "Santos", "Oliveira", "Souza", "Pereira", "Costa", "Almeida", "Ferreira", "Lima", "Gomes",
            "Ribeiro", "Carvalho", "Rodrigues", "Martins", "Araújo", "Barbosa", "Rocha", "Teixeira", "Moreira",
            "Nascimento", "Cardoso", "Mendes", "Conceição", "Batista")
HOSPITALS = ("Hospital Regional do Norte de Minas", "Policlínica Municipal Vale do Jequitinhonha",
             "UBS Jardim das Acácias", "Hospital Municipal Santa Rita", "Centro de Saúde São Vicente")


def _scale(height: int) -> float:
    return height / REF_HEIGHT


def _apex(height: int, width: int) -> tuple[float, float]:
    return width / 2.0, APEX_Y * _scale(height)


@lru_cache(maxsize=8)
def _polar(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius (px) and angle from the beam axis (degrees, positive to the right) of every pixel."""
    ax, ay = _apex(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = np.hypot(x - ax, y - ay)
    angle = np.degrees(np.arctan2(x - ax, y - ay))
    radius.flags.writeable = angle.flags.writeable = False
    return radius, angle


@lru_cache(maxsize=8)
def _sector(height: int, width: int) -> np.ndarray:
    radius, angle = _polar(height, width)
    mask = (radius <= SECTOR_RADIUS * _scale(height)) & (np.abs(angle) <= SECTOR_HALF_ANGLE_DEG)
    mask.flags.writeable = False
    return mask


def sector_mask(height: int, width: int) -> np.ndarray:
    """Bool mask of the ultrasound fan: apex at the top centre, 80 degree opening."""
    return _sector(height, width).copy()


@lru_cache(maxsize=8)
def _attenuation(height: int, width: int) -> np.ndarray:
    """Brightness lost with depth and towards the fan's edges, where the beam is weaker."""
    radius, angle = _polar(height, width)
    depth = 1.0 - 0.45 * np.clip(radius / (SECTOR_RADIUS * _scale(height)), 0, 1)
    lateral = np.maximum(np.cos(np.clip(np.abs(angle) / SECTOR_HALF_ANGLE_DEG, 0, 1) * np.pi / 2), 0) ** 0.25
    out = (depth * lateral * _sector(height, width)).astype(np.float32)
    out.flags.writeable = False
    return out


def _bar_layout(height: int, width: int) -> tuple[int, int, int, int]:
    """Rows and columns of the colour bar, high and right enough to stay clear of the fan."""
    s = _scale(height)
    return int(0.1 * height), int(0.5 * height), width - round(14 * s), width - round(6 * s)


@lru_cache(maxsize=8)
def _colour_bar(height: int, width: int, nyquist_cm_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The velocity scale right of the fan: red (towards the probe) on top, black, blue at the bottom,
    with the Nyquist limit written beside both ends. Returns the BGR overlay and where it is drawn."""
    overlay = np.zeros((height, width, 3), np.uint8)
    top, bottom, x0, x1 = _bar_layout(height, width)
    v = np.linspace(1.0, -1.0, bottom - top)
    overlay[top:bottom, x0:x1, 2] = np.clip(255 * v, 0, 255)[:, None]
    overlay[top:bottom, x0:x1, 0] = np.clip(-255 * v, 0, 255)[:, None]
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.3 * _scale(height)
    for text, baseline in ((f"{nyquist_cm_s:.0f}", top + 8 * _scale(height)), (f"-{nyquist_cm_s:.0f}", bottom)):
        (tw, _), _ = cv2.getTextSize(text, font, font_scale, 1)
        cv2.putText(overlay, text, (x0 - 3 - tw, int(baseline)), font, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    mask = overlay.any(axis=2)
    overlay.flags.writeable = mask.flags.writeable = False
    return overlay, mask


def overlay_mask(height: int, width: int) -> np.ndarray:
    """Where Doppler frames may carry the colour bar and its Nyquist labels (outside the fan)."""
    top, bottom, _, _ = _bar_layout(height, width)
    s = _scale(height)
    region = np.zeros((height, width), bool)
    region[max(0, top - round(10 * s)):bottom + round(4 * s), width - round(48 * s):] = True
    return region


class _Pose:
    """Reference-frame coordinates to this frame's pixels: scale, rotation about the apex, shift."""

    def __init__(self, height: int, width: int, jitter: Jitter) -> None:
        self.s = _scale(height)
        self.apex = np.array(_apex(height, width))
        self.ref_apex = np.array((160.0, APEX_Y))
        a = np.radians(jitter.angle_deg)
        self.rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        self.shift = np.array((jitter.dx, jitter.dy)) * self.s
        self.angle_deg = jitter.angle_deg

    def point(self, p: tuple[float, float]) -> np.ndarray:
        return self.apex + self.rot @ ((np.asarray(p, float) - self.ref_apex) * self.s) + self.shift

    def direction(self, d: tuple[float, float]) -> np.ndarray:
        u = self.rot @ np.asarray(d, float)
        return u / np.linalg.norm(u)


def _fixed(p: np.ndarray | tuple[float, float]) -> tuple[int, int]:
    return int(round(p[0] * SHIFT_SCALE)), int(round(p[1] * SHIFT_SCALE))


def _ellipse(canvas: np.ndarray, centre: np.ndarray, axes: tuple[float, float], angle_deg: float,
             value: float) -> None:
    axes_fixed = (max(1, int(round(axes[0] * SHIFT_SCALE))), max(1, int(round(axes[1] * SHIFT_SCALE))))
    cv2.ellipse(canvas, _fixed(centre), axes_fixed, angle_deg, 0, 360, value, -1, cv2.LINE_8, SHIFT)


def _ellipse_mask(shape: tuple[int, int], centre: np.ndarray, axes: tuple[float, float],
                  angle_deg: float) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    _ellipse(canvas, centre, axes, angle_deg, 1)
    return canvas.view(bool)


def _openness(phase: float) -> float:
    """Mitral leaflet opening, 0 (closed, systole) to 1 (early diastolic peak)."""
    if phase < SYSTOLE_END:
        return 0.0
    return float(np.sin(np.pi * (phase - SYSTOLE_END) / (1 - SYSTOLE_END)) ** 0.7)


def render_frame(view: str, phase: float, doppler: bool, jet_length_px: float, rng: np.random.Generator,
                 config: SynthConfig, jitter: Jitter = NO_JITTER, *, leaflet_px: float = 3.0,
                 inflow_cm_s: float = 45.0) -> tuple[np.ndarray, FrameTruth]:
    """One BGR uint8 frame of `view` at cardiac `phase` in [0, 1); systole is phase < 0.45, when a jet of
    `jet_length_px` (0 for none) leaves the mitral valve into the atrium on colour Doppler frames."""
    if view not in VIEW_GEOMETRY:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    h, w = config.height, config.width
    geometry = VIEW_GEOMETRY[view]
    pose = _Pose(h, w, jitter)
    s = pose.s
    cycle = np.cos(2 * np.pi * phase)  # +1 at end-diastole, -1 mid-cycle
    sizes = {"v": 1.0 + 0.08 * cycle, "a": 1.0 - 0.08 * cycle, "-": 1.0}

    echo = np.full((h, w), TISSUE, np.float32)
    for kind, value, a, b, c, group in geometry["shapes"]:
        k = sizes[group]
        if kind == "ellipse":
            _ellipse(echo, pose.point(a), (b[0] * k * s, b[1] * k * s), c + pose.angle_deg, value)
        else:
            cv2.line(echo, _fixed(pose.point(a)), _fixed(pose.point(b)), value, max(1, int(c * k * s)),
                     cv2.LINE_8, SHIFT)
    blood = echo < 0.5 * TISSUE

    hinge_a, hinge_b = pose.point(geometry["mitral"][0]), pose.point(geometry["mitral"][1])
    valve = (hinge_a + hinge_b) / 2
    u = pose.direction(geometry["jet_dir"])  # into the atrium
    opening = _openness(phase)
    thickness = max(1, int(round(leaflet_px)))
    if geometry.get("fish_mouth"):
        # Short axis cuts the mitral orifice across: a leaflet ring that opens in diastole.
        half = np.linalg.norm(hinge_b - hinge_a) / 2
        axes = (half, half * (0.12 + 0.45 * opening))
        cv2.ellipse(echo, _fixed(valve), _fixed(axes), pose.angle_deg, 0, 360, LEAFLET, thickness, cv2.LINE_8,
                    SHIFT)
    else:
        leaf = 0.55 * np.linalg.norm(hinge_b - hinge_a)
        closed = valve - 3 * s * u
        for hinge in (hinge_a, hinge_b):
            tip = (1 - opening) * closed + opening * (hinge - leaf * u)
            cv2.line(echo, _fixed(hinge), _fixed(tip), LEAFLET, thickness, cv2.LINE_8, SHIFT)

    # Walls are not razor-sharp at this resolution; blur before the speckle, which stays sharp.
    echo = cv2.GaussianBlur(echo, (5, 5), 1.2)
    # Fully developed speckle: unit-mean Rayleigh, scaled by the config's noise strength.
    speckle = rng.rayleigh(np.sqrt(2 / np.pi), (h, w)).astype(np.float32)
    if config.noise != 1.0:
        speckle = 1.0 + config.noise * (speckle - 1.0)
    grey = np.clip(120.0 * jitter.gain * _attenuation(h, w) * echo * speckle, 0, 255).astype(np.uint8)
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)

    flow = np.zeros((h, w), bool)
    jet = np.zeros((h, w), bool)
    jet_length_mm = 0.0
    if doppler:
        radius, angle = _polar(h, w)
        apex = pose.apex
        valve_r = float(np.hypot(*(valve - apex)))
        valve_a = float(np.degrees(np.arctan2(valve[0] - apex[0], valve[1] - apex[1])))
        roi = ((radius >= valve_r - ROI_BEHIND_PX * s) & (radius <= valve_r + ROI_AHEAD_PX * s)
               & (np.abs(angle - valve_a) <= ROI_HALF_ANGLE_DEG) & _sector(h, w))
        inner = cv2.erode(roi.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
        image[roi & ~inner] = 170  # the box outline, grey as on a scanner
        nyquist = config.nyquist_cm_s
        behind, length, width = geometry["inflow"]
        # Some laminar flow shows in every phase: mitral inflow in diastole, ejection in systole.
        if phase >= SYSTOLE_END:
            # Diastolic inflow towards the probe: red, brighter the faster it runs relative to Nyquist.
            centre = valve - behind * s * u
            inflow = _ellipse_mask((h, w), centre, (length * s, width * s * (0.5 + 0.5 * opening)),
                                   float(np.degrees(np.arctan2(u[1], u[0]))))
            inflow &= blood & inner
            red = 200 + 55 * opening * min(1.0, inflow_cm_s / nyquist)
            image[inflow] = (0, 0, int(red))
            flow |= inflow
        else:
            # Systolic ejection away from the probe: blue.
            centre, axes, tilt = geometry["systolic"]
            ejection = np.sin(np.pi * phase / SYSTOLE_END)
            outflow = _ellipse_mask((h, w), pose.point(centre), (axes[0] * s, axes[1] * s), tilt + pose.angle_deg)
            outflow &= blood & inner
            image[outflow] = (int(200 + 55 * ejection), 0, 0)
            flow |= outflow
        if jet_length_px > 0 and phase < SYSTOLE_END:
            jet_width = max(3.0, 0.35 * jet_length_px)
            region = _ellipse_mask((h, w), valve + u * jet_length_px / 2, (jet_length_px / 2, jet_width / 2),
                                   float(np.degrees(np.arctan2(u[1], u[0]))))
            jet = region & inner
            ys, xs = np.nonzero(jet)
            if ys.size:
                image[ys, xs] = MOSAIC_PALETTE[rng.choice(len(MOSAIC_PALETTE), size=ys.size, p=MOSAIC_WEIGHTS)]
                # Centre to centre of the extreme pixels, as a length is read off an image.
                along = (xs - valve[0]) * u[0] + (ys - valve[1]) * u[1]
                jet_length_mm = float(along.max() - along.min()) * config.pixel_spacing_mm
            flow |= jet
        bar, bar_mask = _colour_bar(h, w, nyquist)
        image[bar_mask] = bar[bar_mask]
    return image, FrameTruth(view, doppler, flow, jet, round(jet_length_mm, 3))


def _hidden(label: str, rng: np.random.Generator) -> dict:
    """Disease parameters the label follows from (a simplified WHF 2012 reading: the MR jet length)."""
    if label == "normal":
        # Most children have no MR at all; the rest a trivial jet, under 8 mm even after per-video variation.
        jet_mm = 0.0 if rng.random() < 0.7 else float(rng.uniform(2.0, 6.9))
        velocity = float(rng.uniform(1.5, 2.5)) if jet_mm else 0.0
        leaflet_mm, inflow = float(rng.uniform(1.2, 2.6)), float(rng.uniform(35, 50))
    elif label == "borderline":
        jet_mm, velocity = float(rng.uniform(12, 22)), float(rng.uniform(2.5, 3.5))
        leaflet_mm, inflow = float(rng.uniform(2.0, 3.5)), float(rng.uniform(40, 55))
    elif label == "definite":
        jet_mm, velocity = float(rng.uniform(22, 40)), float(rng.uniform(3.5, 5.0))
        leaflet_mm, inflow = float(rng.uniform(3.0, 5.0)), float(rng.uniform(45, 60))
    else:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASSES}")
    return {
        "mr_jet_length_mm": round(jet_mm, 2),
        "peak_velocity_m_s": round(velocity, 2),  # recorded only: any MR jet aliases at this Nyquist
        "leaflet_thickness_mm": round(leaflet_mm, 2),
        "mitral_inflow_cm_s": round(inflow, 1),
        "heart_rate_bpm": round(float(rng.uniform(75, 115)), 1),
    }


def _metadata(study_id: str, rng: np.random.Generator, config: SynthConfig) -> dict:
    """Identifying fields as a hospital export carries them (all invented)."""
    sex = "F" if rng.random() < 0.5 else "M"
    first = rng.choice(FIRST_NAMES_F if sex == "F" else FIRST_NAMES_M)
    surnames = rng.choice(SURNAMES, size=2, replace=False)
    hospital = int(rng.integers(len(HOSPITALS)))
    study_date = dt.date(2025, 3, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    birth_date = study_date - dt.timedelta(days=int(rng.integers(5 * 365, 18 * 365)))  # school-age screening
    operator_first = rng.choice(FIRST_NAMES_F + FIRST_NAMES_M)
    return {
        "study_id": study_id,
        "hospital_id": f"H{hospital + 1:03d}",
        "hospital": HOSPITALS[hospital],
        "patient_name": f"{first} {surnames[0]} {surnames[1]}",
        "patient_id": "7" + "".join(str(d) for d in rng.integers(0, 10, 14)),  # 15 digits, as a CNS card
        "birth_date": birth_date.isoformat(),
        "sex": sex,
        "study_date": study_date.isoformat(),
        "operator": f"{operator_first} {rng.choice(SURNAMES)}",
        "device": "Synthetic handheld echo 1.0",
        "pixel_spacing_mm": config.pixel_spacing_mm,
        "nyquist_cm_s": config.nyquist_cm_s,
        "fps": config.fps,
    }


def make_study(study_id: str, label: str, rng: np.random.Generator, config: SynthConfig = SynthConfig()) -> Study:
    """A study in memory: one video per standard view in turn, at least one of them in colour Doppler."""
    hidden = _hidden(label, rng)
    metadata = _metadata(study_id, rng, config)
    n = config.videos_per_study
    views = [VIEWS[i] for i in np.concatenate([rng.permutation(len(VIEWS)) for _ in range(-(-n // len(VIEWS)))])]
    doppler = rng.random(n) < config.doppler_share
    doppler[int(rng.integers(n))] = True
    phase_step = hidden["heart_rate_bpm"] / 60.0 / config.fps
    leaflet_px = hidden["leaflet_thickness_mm"] / config.pixel_spacing_mm
    videos = []
    for j in range(n):
        jet_px = hidden["mr_jet_length_mm"] * float(rng.uniform(0.85, 1.15)) / config.pixel_spacing_mm
        jitter = Jitter(float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10)), float(rng.uniform(-5, 5)),
                        float(rng.uniform(0.8, 1.2)))
        start = float(rng.random())
        frames, truths = [], []
        for k in range(config.frames_per_video):
            image, truth = render_frame(views[j], (start + k * phase_step) % 1.0, bool(doppler[j]), jet_px, rng,
                                        config, jitter, leaflet_px=leaflet_px,
                                        inflow_cm_s=hidden["mitral_inflow_cm_s"])
            frames.append(image)
            truths.append(truth)
        drawn = max(t.jet_length_mm for t in truths)
        videos.append(Video(f"{study_id}-V{j:02d}", views[j], bool(doppler[j]), round(drawn, 2),
                            Jitter(*(round(v, 3) for v in jitter)), round(start, 4), frames, truths))
    return Study(study_id, label, metadata, hidden, videos, config)


def write_study(study: Study, out_dir: Path) -> Path:
    """Write <out_dir>/<study_id>/: study.json, one MP4 per video, and truth.json kept apart."""
    config = study.config
    folder = Path(out_dir) / study.study_id
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for video in study.videos:
        filename = f"{video.video_id}.mp4"
        writer = cv2.VideoWriter(str(folder / filename), cv2.VideoWriter_fourcc(*"mp4v"), config.fps,
                                 (config.width, config.height))
        if not writer.isOpened():
            raise OSError(f"cannot open an mp4v writer for {folder / filename}")
        try:
            for frame in video.frames:
                writer.write(frame)
        finally:
            writer.release()
        entries.append({"video_id": video.video_id, "filename": filename})
    (folder / "study.json").write_text(json.dumps({**study.metadata, "videos": entries}, indent=2) + "\n")
    truth = {
        "study_id": study.study_id,
        "label": study.label,
        "hidden": study.hidden,
        "config": asdict(config),
        "videos": [{"video_id": v.video_id, "view": v.view, "doppler": v.doppler, "jet_length_mm": v.jet_length_mm,
                    "frame_count": len(v.frames), "start_phase": v.start_phase, "jitter": v.jitter._asdict()}
                   for v in study.videos],
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return folder


def synth_studies(seed: int, n_studies: int, out_dir: Path, config: SynthConfig = SynthConfig(),
                  balanced: bool = False) -> list[Path]:
    """Deterministic by seed; study i depends only on (seed, i). Labels cycle through the classes when
    balanced, else follow config.prevalence."""
    children = np.random.SeedSequence(seed).spawn(n_studies)
    paths = []
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        label = CLASSES[i % len(CLASSES)] if balanced else CLASSES[int(rng.choice(len(CLASSES), p=config.prevalence))]
        paths.append(write_study(make_study(f"S{seed:04d}-{i:04d}", label, rng, config), out_dir))
    return paths
