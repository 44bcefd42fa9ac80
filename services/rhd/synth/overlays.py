"""What a scanner burns into every frame besides the image: identifying text, device settings, the ECG
trace with its sweep, and depth marks. They fool naive colour inspection, and de-identification must
remove the identifying part, so each element is returned with its box for the ground truth."""

import unicodedata

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, YELLOW, GREEN = (235, 235, 235), (60, 230, 230), (40, 210, 40)


def ascii_fold(text: str) -> str:
    """Scanner fonts have no accents: 'Conceição' is burned in as 'Conceicao'."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def draw_text_block(
    image: np.ndarray,
    lines: list[tuple[str, str]],
    origin: tuple[int, int],
    colour: tuple,
    align_right: bool = False,
    max_chars: int = 24,
) -> list[dict]:
    """Lines of (kind, text) from origin (top-left, or top-right when align_right); returns their boxes."""
    s = image.shape[0] / 240.0
    scale, step = 0.32 * s, round(11 * s)
    elements = []
    x, y = origin
    for kind, raw in lines:
        text = ascii_fold(raw)[:max_chars]
        if not text:
            continue
        (tw, th), descent = cv2.getTextSize(text, FONT, scale, 1)
        y += step
        left = x - tw if align_right else x
        cv2.putText(image, text, (left, y), FONT, scale, colour, 1, cv2.LINE_AA)
        elements.append({"kind": kind, "text": text, "box": [left - 1, y - th - 1, left + tw + 1, y + descent + 1]})
    return elements


def ecg_wave(phase: np.ndarray) -> np.ndarray:
    """A lead II-like beat over the cardiac phase (0 = QRS at the onset of systole): QRS, T and P waves."""
    p = np.mod(phase, 1.0)
    qrs = 1.0 * np.exp(-(((p - 0.02) / 0.012) ** 2)) - 0.25 * np.exp(-(((p - 0.05) / 0.012) ** 2))
    t_wave = 0.28 * np.exp(-(((p - 0.33) / 0.05) ** 2))
    p_wave = 0.12 * np.exp(-(((p - 0.88) / 0.03) ** 2))
    return qrs + t_wave + p_wave


def sweep_columns(
    x0: int, x1: int, phase: float, beats_on_screen: float, s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sweep display's columns x0..x1: the cardiac phase (in beats) each shows and whether it is visible. A cursor
    moves left to right, overwriting the oldest trace, with a gap at the cursor: each column shows the beat it was
    last swept at, behind the cursor this sweep, ahead of it the previous one."""
    xs = np.arange(x0, x1)
    cursor = x0 + (phase / beats_on_screen % 1.0) * (x1 - x0)
    behind = (cursor - xs) / (x1 - x0) * beats_on_screen
    ahead = xs > cursor
    return xs, phase - behind - ahead * beats_on_screen, np.abs(xs - cursor) > 4 * s


def draw_ecg(image: np.ndarray, phase: float, beats_on_screen: float, colour: tuple = GREEN) -> dict:
    """The ECG along the bottom: a sweep that overwrites the oldest trace, with a gap at the cursor."""
    h, w = image.shape[:2]
    s = h / 240.0
    x0, x1 = round(24 * s), w - round(24 * s)
    baseline, amplitude = h - round(6 * s), 11 * s
    xs, beat_phase, visible = sweep_columns(x0, x1, phase, beats_on_screen, s)
    ys = baseline - amplitude * ecg_wave(beat_phase)
    points = np.stack([xs, ys], axis=1).round().astype(np.int32)
    segments = np.split(points, np.nonzero(np.diff(visible.astype(np.int8)))[0] + 1)
    drawn = [seg for seg in segments if len(seg) > 1 and visible[seg[0][0] - x0]]
    cv2.polylines(image, drawn, False, colour, 1, cv2.LINE_AA)
    top = int(np.floor(baseline - amplitude * 1.05)) - 1
    return {"kind": "ecg", "text": "", "box": [x0 - 1, max(0, top), x1 + 1, min(h, baseline + round(4 * s) + 1)]}


def draw_depth_marks(
    image: np.ndarray, apex: tuple[float, float], half_angle_deg: float, radius_px: float, spacing_mm: float
) -> dict:
    """Dots every centimetre just outside the fan's right edge, numbers every 5 cm, as scanners mark depth."""
    h = image.shape[0]
    s = h / 240.0
    a = np.radians(half_angle_deg + 3.0)
    direction = np.array([np.sin(a), np.cos(a)])
    xs, ys = [], []
    for cm in range(1, int(radius_px * spacing_mm / 10) + 1):
        r = cm * 10.0 / spacing_mm
        x, y = (np.array(apex) + r * direction).round().astype(int)
        size = 2 if cm % 5 == 0 else 1
        cv2.rectangle(
            image, (int(x) - size // 2, int(y) - size // 2), (int(x) + size // 2, int(y) + size // 2), WHITE, -1
        )
        xs += [x - 1, x + 2]
        ys += [y - 1, y + 2]
        if cm % 5 == 0:
            cv2.putText(
                image, str(cm), (int(x) + round(3 * s), int(y) + round(3 * s)), FONT, 0.28 * s, WHITE, 1, cv2.LINE_AA
            )
            xs.append(x + round(14 * s))
            ys += [y - round(4 * s), y + round(5 * s)]
    return {"kind": "depth_marks", "text": "", "box": [int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))]}
