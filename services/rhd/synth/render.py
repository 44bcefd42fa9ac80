"""One echo frame from a scene: B-mode anatomy of a standard view inside the ultrasound fan (speckle, depth
attenuation, gain, contrast, probe pose, poor windows), colour Doppler flow in a colour box (laminar inflow
and outflow measured along the beam, aliasing, regurgitant jets as turbulent mosaic), and the scanner's
overlays; with the ground truth of every pixel that matters."""

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from rhd.synth import doppler, overlays, spectral

# Everything is laid out on a 320 x 240 reference frame (apex at the top centre) and scaled by height / 240.
REF_HEIGHT = 240.0
APEX_Y = 8.0
SECTOR_RADIUS = 212.0
SECTOR_HALF_ANGLE_DEG = 40.0
SYSTOLE_END = 0.42  # cardiac phase at which systole ends (phase 0 = QRS)
SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel centres and axes
SHIFT_SCALE = 1 << SHIFT
TISSUE, BLOOD, BRIGHT, LEAFLET = 1.0, 0.08, 1.6, 2.0  # echogenicity multipliers of the B-mode canvas
QUALITIES = ("good", "off_axis", "poor")
# Labels of the valve mask in each frame's truth: what the valve segmentation network learns to draw.
VALVE_LABELS = ("background", "mitral_leaflet", "chord", "aortic_cusp")
MITRAL_LEAFLET, CHORD, AORTIC_CUSP = 1, 2, 3

# Per view, on the reference frame. Shapes are painted in order onto the echogenicity canvas:
# ("ellipse", echo, (cx, cy), (ax, ay), angle_deg, group) or ("tube", echo, (x0, y0), (x1, y1), thickness, group);
# group "v" (ventricles) shrinks in systole while "a" (atria) fills, "-" does not move.
# A valve is given by its two hinge points and the direction of regurgitation (MR into the atrium, AR into the
# ventricle); "inflow" is the diastolic mitral flow (behind the valve, length, width), "outflow" the systolic
# ejection (centre, axes, tilt, flow direction).
VIEW_GEOMETRY: dict[str, dict] = {
    "plax": {
        "shapes": [
            ("ellipse", BLOOD, (160, 58), (40, 10), -8, "v"),  # right ventricle, near field
            ("ellipse", BLOOD, (128, 118), (70, 24), -8, "v"),  # long horizontal left ventricle
            ("tube", BLOOD, (188, 106), (236, 98), 22, "-"),  # aortic root
            ("ellipse", BLOOD, (214, 160), (30, 24), 0, "a"),  # left atrium behind the root
            ("ellipse", BLOOD, (236, 196), (8, 8), 0, "-"),  # descending aorta
            ("ellipse", BRIGHT, (150, 192), (95, 7), -6, "-"),  # pericardium
        ],
        "mitral": ((180, 128), (198, 146)),
        "mr_dir": (0.6, 0.8),
        "chords_to": (120, 136),
        "aortic": ((192, 95), (196, 116)),
        "ar_dir": (-0.97, 0.25),
        "inflow": (18, 16, 10),
        "outflow": ((176, 110), (14, 6), -10, (0.97, -0.25)),
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
        "mitral": ((134, 128), (186, 128)),
        "mr_dir": (0.25, 0.97),
        "fish_mouth": True,
        "inflow": (0, 20, 6),
        "outflow": ((160, 104), (16, 8), 0, (0.0, -1.0)),
    },
    "a4c": {
        "shapes": [
            ("ellipse", BLOOD, (124, 84), (24, 50), 14, "v"),  # right ventricle
            ("ellipse", BLOOD, (196, 84), (28, 52), -14, "v"),  # left ventricle
            ("ellipse", BLOOD, (125, 166), (26, 24), 0, "a"),  # right atrium
            ("ellipse", BLOOD, (196, 168), (29, 26), 0, "a"),  # left atrium
        ],
        "mitral": ((174, 138), (220, 138)),
        "mr_dir": (0.05, 1.0),
        "chords_to": (204, 70),
        "inflow": (22, 22, 12),
        "outflow": ((178, 110), (7, 18), -20, (-0.3, 0.95)),
    },
    "a5c": {
        "shapes": [
            ("ellipse", BLOOD, (122, 90), (22, 48), 14, "v"),  # right ventricle
            ("ellipse", BLOOD, (192, 88), (30, 54), -12, "v"),  # left ventricle
            ("ellipse", BLOOD, (122, 172), (24, 22), 0, "a"),  # right atrium
            ("ellipse", BLOOD, (204, 178), (26, 22), 0, "a"),  # left atrium
            ("tube", BLOOD, (172, 122), (160, 182), 17, "-"),  # outflow tract and aortic root: the fifth chamber
        ],
        "mitral": ((186, 148), (222, 148)),
        "mr_dir": (0.1, 1.0),
        "chords_to": (198, 74),
        "aortic": ((162, 134), (180, 138)),
        "ar_dir": (0.2, -0.98),
        "inflow": (22, 20, 11),
        "outflow": ((172, 116), (7, 16), -12, (-0.2, 0.98)),
    },
}
VIEWS = tuple(VIEW_GEOMETRY)


@dataclass(frozen=True)
class Pose:
    """Probe placement for one video: shift (px), rotation about the apex (degrees), anatomy scale."""

    dx: float = 0.0
    dy: float = 0.0
    angle_deg: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class JetScene:
    """A regurgitant jet as drawn in one video: its length, how long it lasts, how fast it leaves the valve."""

    length_mm: float
    duration: float  # fraction of systole (MR) or diastole (AR)
    late: bool  # starts late (ends with the phase) rather than at the phase's onset
    peak_cm_s: float


@dataclass(frozen=True)
class Scene:
    """Everything fixed for one video; render_frame adds the cardiac phase."""

    view: str
    colour: bool = False  # colour Doppler mode
    spectral: str | None = None  # continuous-wave spectral Doppler through this valve ("mitral" or "aortic")
    target: str = "mitral"  # valve under the colour box: "mitral" or "aortic"
    quality: str = "good"
    pose: Pose = Pose()
    gain: float = 1.0
    contrast: float = 1.0  # gamma applied to the grey image
    noise: float = 1.0  # speckle strength
    pixel_spacing_mm: float = 0.6
    nyquist_cm_s: float = 60.0
    wall_filter: float = 0.08  # |v| / Nyquist under which the scanner shows no colour
    chamber_flow: float = 0.25  # peak of the slow swirling flow in the chambers, as a share of Nyquist
    colour_bar: bool = False  # drawn even on B-mode frames when the preset shows it
    leaflet_mm: float = 2.0
    mitral_restricted: bool = False
    mitral_tip_excess: bool = False
    chordal_thickening: bool = False
    aortic_thick: bool = False
    aortic_restricted: bool = False
    aortic_coaptation_defect: bool = False  # the closed cusps do not meet: a gap between their tips in diastole
    aortic_prolapse: bool = False
    inflow_cm_s: float = 80.0
    ms_mean_gradient_mmhg: float = 0.0  # mitral stenosis: the spectral inflow's mean gradient
    outflow_cm_s: float = 90.0
    mr: JetScene | None = None
    ar: JetScene | None = None
    heart_rate_bpm: float = 90.0
    text_lines: tuple[tuple[str, str], ...] = ()  # (kind, text) at the top left
    device_lines: tuple[str, ...] = ()  # top right
    text_colour: tuple[int, int, int] = overlays.WHITE
    ecg: bool = True
    depth_marks: bool = True
    height: int = 240
    width: int = 320

    @property
    def view_class(self) -> str:
        return self.view if self.quality == "good" else "other"


@dataclass(frozen=True)
class FrameTruth:
    view: str
    view_class: str  # the view, or "other" for off-axis and poor-quality videos
    doppler: bool
    flow_mask: np.ndarray = field(repr=False)  # bool H x W: pixels showing colour flow (laminar + jets)
    jet_mask: np.ndarray = field(repr=False)  # bool H x W: pixels of regurgitant jets (turbulent mosaic)
    velocity_cm_s: np.ndarray = field(repr=False)  # float32 H x W: true velocity along the beam, 0 off flow
    mr_length_mm: float  # extent of the MR jet as drawn, along its axis; 0 when none shows
    ar_length_mm: float
    overlays: list[dict] = field(repr=False)  # drawn elements with their boxes
    valve_mask: np.ndarray = field(repr=False)  # uint8 H x W: VALVE_LABELS index of each pixel, as drawn

    @property
    def jet_length_mm(self) -> float:
        return max(self.mr_length_mm, self.ar_length_mm)


def _scale(height: int) -> float:
    return height / REF_HEIGHT


def apex(height: int, width: int) -> tuple[float, float]:
    return width / 2.0, APEX_Y * _scale(height)


@lru_cache(maxsize=8)
def _polar(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Radius (px), angle from the beam axis (degrees, positive to the right), and the unit vector towards
    the probe (x, y) of every pixel."""
    ax, ay = apex(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = np.hypot(x - ax, y - ay)
    angle = np.degrees(np.arctan2(x - ax, y - ay))
    safe = np.maximum(radius, 1e-3)
    bx, by = (ax - x) / safe, (ay - y) / safe
    for a in (radius, angle, bx, by):
        a.flags.writeable = False
    return radius, angle, bx, by


@lru_cache(maxsize=8)
def _sector(height: int, width: int) -> np.ndarray:
    radius, angle, _, _ = _polar(height, width)
    mask = (radius <= SECTOR_RADIUS * _scale(height)) & (np.abs(angle) <= SECTOR_HALF_ANGLE_DEG)
    mask.flags.writeable = False
    return mask


def sector_mask(height: int, width: int) -> np.ndarray:
    """Bool mask of the ultrasound fan: apex at the top centre, 80 degree opening."""
    return _sector(height, width).copy()


@lru_cache(maxsize=8)
def _attenuation(height: int, width: int) -> np.ndarray:
    """Brightness lost with depth and towards the fan's edges, where the beam is weaker."""
    radius, angle, _, _ = _polar(height, width)
    depth = 1.0 - 0.45 * np.clip(radius / (SECTOR_RADIUS * _scale(height)), 0, 1)
    lateral = np.maximum(np.cos(np.clip(np.abs(angle) / SECTOR_HALF_ANGLE_DEG, 0, 1) * np.pi / 2), 0) ** 0.25
    out = (depth * lateral * _sector(height, width)).astype(np.float32)
    out.flags.writeable = False
    return out


class _Placer:
    """Reference-frame coordinates to this frame's pixels: scale, rotation about the apex, shift."""

    def __init__(self, height: int, width: int, pose: Pose) -> None:
        self.s = _scale(height)
        self.apex = np.array(apex(height, width))
        self.ref_apex = np.array((160.0, APEX_Y))
        a = np.radians(pose.angle_deg)
        self.rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        self.k = pose.scale
        self.shift = np.array((pose.dx, pose.dy)) * self.s
        self.angle_deg = pose.angle_deg

    def point(self, p: tuple[float, float]) -> np.ndarray:
        return self.apex + self.rot @ ((np.asarray(p, float) - self.ref_apex) * self.s * self.k) + self.shift

    def length(self, v: float) -> float:
        return v * self.s * self.k

    def direction(self, d: tuple[float, float]) -> np.ndarray:
        u = self.rot @ np.asarray(d, float)
        return u / np.linalg.norm(u)


def _fixed(p: np.ndarray | tuple[float, float]) -> tuple[int, int]:
    return int(round(p[0] * SHIFT_SCALE)), int(round(p[1] * SHIFT_SCALE))


def _ellipse(
    canvas: np.ndarray,
    centre: np.ndarray,
    axes: tuple[float, float],
    angle_deg: float,
    value: float,
    thickness: int = -1,
) -> None:
    axes_fixed = (max(1, int(round(axes[0] * SHIFT_SCALE))), max(1, int(round(axes[1] * SHIFT_SCALE))))
    cv2.ellipse(canvas, _fixed(centre), axes_fixed, angle_deg, 0, 360, value, thickness, cv2.LINE_8, SHIFT)


def _line(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, value: float, thickness: int) -> None:
    cv2.line(canvas, _fixed(a), _fixed(b), value, max(1, thickness), cv2.LINE_8, SHIFT)


def _bar(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, value: float, width_px: float) -> None:
    """A straight band from a to b of the given width (sub-pixel: cv2.line would round it up to an odd number of
    pixels), as a leaflet of known thickness is drawn."""
    along = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
    side = np.array([-along[1], along[0]]) * max(width_px - 1.0, 0.0) / 2  # cv2 fills the edge pixels too
    corners = np.array([_fixed(p) for p in (a - side, b - side, b + side, a + side)], np.int32)
    cv2.fillConvexPoly(canvas, corners, value, cv2.LINE_8, SHIFT)


def _openness(phase: float) -> float:
    """Mitral leaflet opening, 0 (closed, systole) to 1 (early diastolic peak)."""
    if phase < SYSTOLE_END:
        return 0.0
    return float(np.sin(np.pi * (phase - SYSTOLE_END) / (1 - SYSTOLE_END)) ** 0.7)


def _jet_activity(jet: JetScene | None, phase: float, systolic: bool) -> float:
    """0 when the jet does not show at this phase, else its length fraction (grows, holds, shrinks)."""
    if jet is None or jet.length_mm <= 0:
        return 0.0
    if systolic:
        start, span = 0.0, SYSTOLE_END
    else:
        start, span = SYSTOLE_END, 1.0 - SYSTOLE_END
    tau = (phase - start) / span  # position within the phase, 0..1
    if not 0.0 <= tau < 1.0:
        return 0.0
    lo = 1.0 - jet.duration if jet.late else 0.0
    hi = lo + jet.duration
    if not lo <= tau <= hi:
        return 0.0
    within = (tau - lo) / max(jet.duration, 1e-6)
    return float(0.65 + 0.35 * np.sin(np.pi * within))


def _draw_anatomy(scene: Scene, phase: float, place: _Placer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Echogenicity canvas of the view at this phase, its blood pool mask and its valve labels (VALVE_LABELS)."""
    h, w = scene.height, scene.width
    geometry = VIEW_GEOMETRY[scene.view]
    cycle = np.cos(2 * np.pi * phase)  # +1 at end-diastole
    sizes = {"v": 1.0 + 0.08 * cycle, "a": 1.0 - 0.08 * cycle, "-": 1.0}
    echo = np.full((h, w), TISSUE, np.float32)
    for kind, value, a, b, c, group in geometry["shapes"]:
        k = sizes[group]
        if kind == "ellipse":
            _ellipse(echo, place.point(a), (place.length(b[0] * k), place.length(b[1] * k)), c + place.angle_deg, value)
        else:
            _line(echo, place.point(a), place.point(b), value, int(place.length(c * k)))
    blood = echo < 0.5 * TISSUE
    labels = np.zeros((h, w), np.uint8)

    leaflet_width = scene.leaflet_mm / scene.pixel_spacing_mm * place.s * place.k  # px, as drawn in profile
    leaflet_px = max(1, int(round(leaflet_width)))  # the short-axis ring's line thickness
    hinge_a, hinge_b = place.point(geometry["mitral"][0]), place.point(geometry["mitral"][1])
    valve = (hinge_a + hinge_b) / 2
    u = place.direction(geometry["mr_dir"])  # into the atrium
    opening = _openness(phase) * (0.45 if scene.mitral_restricted else 1.0)
    if geometry.get("fish_mouth"):
        # Short axis cuts the mitral orifice across: a leaflet ring that opens in diastole.
        half = np.linalg.norm(hinge_b - hinge_a) / 2
        axes = (half, half * (0.12 + 0.45 * opening))
        _ellipse(echo, valve, axes, place.angle_deg, LEAFLET, leaflet_px)
        _ellipse(labels, valve, axes, place.angle_deg, MITRAL_LEAFLET, leaflet_px)
    else:
        leaf = 0.55 * np.linalg.norm(hinge_b - hinge_a)
        bulge = (4.0 if scene.mitral_tip_excess and phase < SYSTOLE_END else -3.0) * place.s
        closed = valve + bulge * u
        tips = [(1 - opening) * closed + opening * (hinge - leaf * u) for hinge in (hinge_a, hinge_b)]
        if "chords_to" in geometry:
            papillary = place.point(geometry["chords_to"])
            chord_px = 2 if scene.chordal_thickening else 1
            for tip in tips:
                _line(echo, tip, papillary, BRIGHT if scene.chordal_thickening else 0.9 * BRIGHT, chord_px)
                _line(labels, tip, papillary, CHORD, chord_px)
        for hinge, tip in zip((hinge_a, hinge_b), tips, strict=True):  # the leaflet shows over the chords' ends
            _bar(echo, hinge, tip, LEAFLET, leaflet_width)
            _bar(labels, hinge, tip, MITRAL_LEAFLET, leaflet_width)
    if "aortic" in geometry:
        a, b = place.point(geometry["aortic"][0]), place.point(geometry["aortic"][1])
        into_lv = place.direction(geometry["ar_dir"])
        ejecting = phase < SYSTOLE_END
        open_frac = (0.5 if scene.aortic_restricted else 1.0) * np.sin(np.pi * phase / SYSTOLE_END) if ejecting else 0
        cusp = 0.5 * np.linalg.norm(b - a)
        centre = (a + b) / 2 + (3.0 * place.s * into_lv if scene.aortic_prolapse and not ejecting else 0)
        # With a coaptation defect the closed cusps stop short of each other: a gap of about 2 mm at their tips.
        gap_px = 1.0 / scene.pixel_spacing_mm if scene.aortic_coaptation_defect else 0.0  # 1 mm short, each
        short = 1.0 - gap_px / cusp
        for hinge in (a, b):
            closed_tip = hinge + short * (centre - hinge)
            tip = (1 - open_frac) * closed_tip + open_frac * (hinge - cusp * into_lv)
            _line(echo, hinge, tip, LEAFLET if scene.aortic_thick else BRIGHT, 3 if scene.aortic_thick else 1)
            _line(labels, hinge, tip, AORTIC_CUSP, 3 if scene.aortic_thick else 1)
    return echo, blood, labels


def _grey(scene: Scene, echo: np.ndarray, rng: np.random.Generator, place: _Placer) -> np.ndarray:
    h, w = scene.height, scene.width
    # Walls are not razor-sharp at this resolution; blur before the speckle, which stays sharp.
    echo = cv2.GaussianBlur(echo, (5, 5), 1.2)
    noise = scene.noise * (1.8 if scene.quality == "poor" else 1.0)
    speckle = rng.rayleigh(np.sqrt(2 / np.pi), (h, w)).astype(np.float32)  # unit-mean, fully developed
    if noise != 1.0:
        speckle = np.maximum(1.0 + noise * (speckle - 1.0), 0.0)
    linear = 120.0 * scene.gain * _attenuation(h, w) * echo * speckle
    if scene.quality == "poor":
        # A rib shadow across the fan and haze over the near field: a poor acoustic window.
        _, angle, _, _ = _polar(h, w)
        shadow_at = 18.0 * np.sign(place.angle_deg or 1.0)
        linear *= 1.0 - 0.85 * np.exp(-(((angle - shadow_at) / 7.0) ** 2))
        linear = cv2.GaussianBlur(linear, (0, 0), 2.0) + 35.0 * _attenuation(h, w)
    grey = 255.0 * np.power(np.clip(linear / 255.0, 0, 1), scene.contrast)
    return grey.astype(np.uint8)


def _ellipse_coords(
    centre: np.ndarray, half_axes: tuple[float, float], u: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates (along u, across u) of pixels relative to an ellipse: inside where a^2 + c^2 <= 1."""
    dx, dy = xs - centre[0], ys - centre[1]
    along = (dx * u[0] + dy * u[1]) / half_axes[0]
    across = (-dx * u[1] + dy * u[0]) / half_axes[1]
    return along, across


def _colour_box(scene: Scene, place: _Placer) -> np.ndarray:
    """The colour box over the target valve: a sector-shaped region, as scanners draw it."""
    h, w = scene.height, scene.width
    geometry = VIEW_GEOMETRY[scene.view]
    aortic = scene.target == "aortic" and "aortic" in geometry  # views without the aortic valve box the mitral
    hinges = geometry["aortic"] if aortic else geometry["mitral"]
    direction = geometry["ar_dir"] if aortic else geometry["mr_dir"]
    valve = (place.point(hinges[0]) + place.point(hinges[1])) / 2
    centre = valve + place.direction(direction) * 22 * place.s
    r_c = float(np.hypot(*(centre - place.apex)))
    a_c = float(np.degrees(np.arctan2(centre[0] - place.apex[0], centre[1] - place.apex[1])))
    half_depth = 62 * place.s
    half_angle = float(np.clip(np.degrees(np.arctan2(58 * place.s, r_c)), 10, 28))
    radius, angle, _, _ = _polar(h, w)
    return (np.abs(radius - r_c) <= half_depth) & (np.abs(angle - a_c) <= half_angle) & _sector(h, w)


def _flows(
    scene: Scene, phase: float, place: _Placer, blood: np.ndarray, inner: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Velocity along the beam (cm/s, NaN where no flow), turbulence (0..1), MR and AR jet regions."""
    h, w = scene.height, scene.width
    geometry = VIEW_GEOMETRY[scene.view]
    _, _, bx, by = _polar(h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    velocity = np.full((h, w), np.nan, np.float32)
    turbulence = np.zeros((h, w), np.float32)
    s = place.s
    hinge_a, hinge_b = place.point(geometry["mitral"][0]), place.point(geometry["mitral"][1])
    mitral = (hinge_a + hinge_b) / 2
    u_mr = place.direction(geometry["mr_dir"])

    # Velocity estimates vary smoothly over a few pixels (the scanner's colour resolution), not pixel by pixel.
    estimate_noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 1.5 * s)
    estimate_noise *= 0.05 * scene.nyquist_cm_s / max(float(estimate_noise.std()), 1e-6)

    def laminar(region: np.ndarray, speed: np.ndarray, direction: np.ndarray) -> None:
        along_beam = speed * (direction[0] * bx + direction[1] * by) + estimate_noise
        velocity[region] = along_beam[region]

    if phase >= SYSTOLE_END:  # diastolic inflow from the atrium into the ventricle
        behind, length, width = geometry["inflow"]
        opening = _openness(phase) * (0.45 if scene.mitral_restricted else 1.0)
        half = (place.length(length), place.length(width) * (0.5 + 0.5 * opening))
        along, across = _ellipse_coords(mitral - place.length(behind) * u_mr, half, u_mr, ys, xs)
        r2 = along**2 + across**2
        region = (r2 <= 1.0) & blood & inner
        envelope = 0.35 + 0.65 * _openness(phase)
        laminar(region, scene.inflow_cm_s * envelope * (1.0 - 0.8 * r2), -u_mr)
    else:  # systolic ejection towards the aortic valve
        centre, axes, tilt, flow_dir = geometry["outflow"]
        d = place.direction(flow_dir)
        along, across = _ellipse_coords(place.point(centre), (place.length(axes[1]), place.length(axes[0])), d, ys, xs)
        del tilt  # the ellipse is aligned with the flow direction
        r2 = along**2 + across**2
        region = (r2 <= 1.0) & blood & inner
        envelope = 0.35 + 0.65 * np.sin(np.pi * phase / SYSTOLE_END)
        laminar(region, scene.outflow_cm_s * envelope * (1.0 - 0.8 * r2), d)

    # Slow swirling flow everywhere else in the blood pools under the box: patchy red and blue, much of it
    # under the wall filter.
    if scene.chamber_flow > 0:
        rest = blood & inner & np.isnan(velocity)
        swirl = 0.5 * (
            np.sin(2 * np.pi * ((xs / 70 + ys / 130) / s + phase))
            + np.sin(2 * np.pi * ((ys / 60 - xs / 110) / s - 0.7 * phase))
        )
        slow = scene.chamber_flow * scene.nyquist_cm_s * swirl + estimate_noise
        velocity[rest] = slow[rest]

    jets = {}
    for name, jet, systolic, hinges_key, dir_key in (
        ("mr", scene.mr, True, "mitral", "mr_dir"),
        ("ar", scene.ar, False, "aortic", "ar_dir"),
    ):
        activity = _jet_activity(jet, phase, systolic)
        region = np.zeros((h, w), bool)
        if activity > 0 and hinges_key in geometry:
            hinges = geometry[hinges_key]
            origin = (place.point(hinges[0]) + place.point(hinges[1])) / 2
            u = place.direction(geometry[dir_key])
            length_px = jet.length_mm * activity / scene.pixel_spacing_mm
            half = (length_px / 2, max(2.0 * s, 0.17 * length_px))
            along, across = _ellipse_coords(origin + u * length_px / 2, half, u, ys, xs)
            region = (along**2 + across**2 <= 1.0) & inner
            position = np.clip((along + 1.0) / 2.0, 0, 1)  # 0 at the orifice, 1 at the tip
            speed = jet.peak_cm_s * (1.0 - 0.6 * position) * (1.0 - 0.4 * np.clip(across**2, 0, 1))
            along_beam = speed * (u[0] * bx + u[1] * by)
            velocity[region] = along_beam[region]
            turbulence[region] = rng.uniform(0.35, 1.0, int(region.sum())).astype(np.float32)
        jets[name] = region
    return velocity, turbulence, jets["mr"], jets["ar"]


def _extent_mm(region: np.ndarray, origin: np.ndarray, u: np.ndarray, spacing_mm: float) -> float:
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return 0.0
    along = (xs - origin[0]) * u[0] + (ys - origin[1]) * u[1]
    return round(float(along.max() - along.min()) * spacing_mm, 3)


def render_frame(scene: Scene, phase: float, rng: np.random.Generator) -> tuple[np.ndarray, FrameTruth]:
    """One BGR uint8 frame of the scene at cardiac `phase` (0 = QRS; systole until SYSTOLE_END); the whole part
    counts beats since the video started, which only the ECG sweep shows."""
    sweep, phase = phase, phase % 1.0
    if scene.view not in VIEW_GEOMETRY:
        raise ValueError(f"unknown view {scene.view!r}; expected one of {VIEWS}")
    if scene.quality not in QUALITIES:
        raise ValueError(f"unknown quality {scene.quality!r}; expected one of {QUALITIES}")
    h, w = scene.height, scene.width
    if scene.spectral is not None:
        return _render_spectral(scene, sweep, rng)
    place = _Placer(h, w, scene.pose)
    echo, blood, valve_mask = _draw_anatomy(scene, phase, place)
    image = cv2.cvtColor(_grey(scene, echo, rng, place), cv2.COLOR_GRAY2BGR)

    flow = np.zeros((h, w), bool)
    jet = np.zeros((h, w), bool)
    velocity = np.zeros((h, w), np.float32)
    mr_mm = ar_mm = 0.0
    drawn: list[dict] = []
    if scene.colour:
        box = _colour_box(scene, place)
        inner = cv2.erode(box.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
        image[box & ~inner] = 170  # the box outline, grey as on a scanner
        v, turbulence, mr_region, ar_region = _flows(scene, phase, place, blood, inner, rng)
        nyquist = scene.nyquist_cm_s
        finite = np.isfinite(v)
        shown = np.zeros((h, w), bool)
        shown[finite] = (np.abs(doppler.wrap(v[finite], nyquist)) >= scene.wall_filter * nyquist) | (
            turbulence[finite] > 0.2
        )
        image[shown] = doppler.add_variance(doppler.colourise(v[shown], nyquist), turbulence[shown])
        flow, jet = shown, shown & (mr_region | ar_region)
        velocity[shown] = v[shown]
        geometry = VIEW_GEOMETRY[scene.view]

        def jet_mm(region: np.ndarray, valve: str, direction: str) -> float:
            """How far the shown jet reaches from the valve's centre along its direction."""
            centre = (place.point(geometry[valve][0]) + place.point(geometry[valve][1])) / 2
            return _extent_mm(shown & region, centre, place.direction(geometry[direction]), scene.pixel_spacing_mm)

        if mr_region.any():
            mr_mm = jet_mm(mr_region, "mitral", "mr_dir")
        if ar_region.any():
            ar_mm = jet_mm(ar_region, "aortic", "ar_dir")
    if scene.colour or scene.colour_bar:
        drawn += doppler.draw_colour_bar(image, scene.nyquist_cm_s)
    if scene.depth_marks:
        drawn.append(
            overlays.draw_depth_marks(
                image, apex(h, w), SECTOR_HALF_ANGLE_DEG, SECTOR_RADIUS * _scale(h), scene.pixel_spacing_mm
            )
        )
    drawn += _overlays(scene, image, sweep)
    truth = FrameTruth(scene.view, scene.view_class, scene.colour, flow, jet, velocity, mr_mm, ar_mm, drawn, valve_mask)
    return image, truth


def _overlays(scene: Scene, image: np.ndarray, sweep: float) -> list[dict]:
    """Text at the top left and right, and the ECG sweep along the bottom; their boxes."""
    h, w = scene.height, scene.width
    drawn: list[dict] = []
    if scene.text_lines:
        drawn += overlays.draw_text_block(image, list(scene.text_lines), (round(4 * _scale(h)), 0), scene.text_colour)
    if scene.device_lines:
        drawn += overlays.draw_text_block(
            image,
            [("device", t) for t in scene.device_lines],
            (w - round(4 * _scale(h)), 0),
            overlays.WHITE,
            align_right=True,
        )
    if scene.ecg:
        drawn.append(overlays.draw_ecg(image, sweep, _beats_on_screen(scene)))
    return drawn


def _beats_on_screen(scene: Scene) -> float:
    return spectral.SWEEP_S * scene.heart_rate_bpm / 60.0


def spectral_jets(scene: Scene) -> tuple[tuple[float, float, bool] | None, tuple[float, float, bool] | None]:
    """The MR and AR a spectral scene shows: (peak cm/s, duration share, late), or None."""
    mr = (scene.mr.peak_cm_s, scene.mr.duration, scene.mr.late) if scene.mr else None
    ar = (scene.ar.peak_cm_s, scene.ar.duration, scene.ar.late) if scene.ar else None
    return mr, ar


def spectral_inflow_cm_s(scene: Scene) -> float:
    """The mitral inflow's peak: the stenosis's when there is one, else the scene's normal inflow."""
    if scene.ms_mean_gradient_mmhg > 0:
        return spectral.inflow_peak_for_gradient(scene.ms_mean_gradient_mmhg)
    return scene.inflow_cm_s


def _render_spectral(scene: Scene, sweep: float, rng: np.random.Generator) -> tuple[np.ndarray, FrameTruth]:
    """A continuous-wave spectral Doppler frame: the spectrum sweeping in step with the ECG, the usual text."""
    h, w = scene.height, scene.width
    if scene.spectral not in spectral.VALVES:
        raise ValueError(f"unknown spectral valve {scene.spectral!r}; expected one of {spectral.VALVES}")
    image = np.zeros((h, w, 3), np.uint8)
    strip = spectral.region(h, w, scene.spectral)
    _, beat_phase, visible = overlays.sweep_columns(strip.x0, strip.x1, sweep, _beats_on_screen(scene), h / 240.0)
    mr, ar = spectral_jets(scene)
    toward, away = spectral.velocities(
        beat_phase,
        scene.spectral,
        SYSTOLE_END,
        spectral_inflow_cm_s(scene),
        scene.ms_mean_gradient_mmhg > 0,
        scene.outflow_cm_s,
        mr,
        ar,
    )
    spectral.draw_spectrum(image, strip, visible, toward, away, scene.gain, rng)
    drawn = [{"kind": "spectral", "text": "", "box": [strip.x0, strip.y0, strip.x1, strip.y1]}]
    drawn += _overlays(scene, image, sweep)
    empty = np.zeros((h, w), bool)
    zeros = np.zeros((h, w), np.float32)
    truth = FrameTruth(
        scene.view, scene.view_class, False, empty, empty, zeros, 0.0, 0.0, drawn, np.zeros((h, w), np.uint8)
    )
    return image, truth
