"""The evidence a cardiologist wants beside a criterion: the frame its measurement was read on, from the frame store
(kept RHD_FRAME_RETENTION_S), with what was measured drawn on it: the colour jet's outline for a regurgitation, the
valve network's leaflets, chords and cusps for a morphology criterion. PNG bytes, drawn on a copy."""

import asyncio
from collections.abc import Awaitable, Callable

import cv2
import numpy as np

from rhd.imaging.sector import flow_mask, image_only
from rhd.runtime.codec import encode_png
from rhd.runtime.frames import FrameStore
from rhd.valve.ops import AORTIC, CHORD, MITRAL, PROBABILITIES, full_resolution, labels_from_probabilities

JET_CRITERIA = ("pathological_mr", "pathological_ar")
VALVE_CRITERIA = ("mitral_features", "aortic_features")
# BGR: what each outline shows (the page's legend says the same)
JET_COLOUR = (255, 255, 255)
VALVE_COLOURS = {MITRAL: (80, 220, 80), CHORD: (40, 200, 230), AORTIC: (220, 80, 220)}
SCALE = 2  # drawn at twice the frame's size, for the page

ValveModel = Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]]


def _outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> int:
    """Draw the outlines of a mask's regions on the (scaled) canvas; how many regions."""
    big = cv2.resize(mask.astype(np.uint8), (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, 2, cv2.LINE_AA)
    return len(contours)


def _canvas(bgr: np.ndarray) -> np.ndarray:
    """The frame at SCALE times its size, to draw on."""
    return cv2.resize(bgr, (bgr.shape[1] * SCALE, bgr.shape[0] * SCALE), interpolation=cv2.INTER_CUBIC)


def _caption(canvas: np.ndarray, text: str) -> np.ndarray:
    cv2.rectangle(canvas, (0, canvas.shape[0] - 26), (canvas.shape[1], canvas.shape[0]), (0, 0, 0), -1)
    cv2.putText(canvas, text, (8, canvas.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def jet_evidence(bgr: np.ndarray, caption: str) -> np.ndarray:
    """The colour jet's outline (the saturated flow inside the fan) on the frame."""
    canvas = _canvas(bgr)
    _outline(canvas, flow_mask(bgr), JET_COLOUR)
    return _caption(canvas, caption)


def valve_evidence(bgr: np.ndarray, probabilities: np.ndarray, caption: str) -> np.ndarray:
    """The valve network's structures outlined on the frame (leaflet green, chord gold, cusp magenta)."""
    labels = full_resolution(labels_from_probabilities(probabilities), bgr.shape[:2])
    canvas = _canvas(bgr)
    for label, colour in VALVE_COLOURS.items():
        _outline(canvas, labels == label, colour)
    return _caption(canvas, caption)


async def evidence_png(
    frames: FrameStore, video_id: str, index: int, criterion: str, caption: str, valve_model: ValveModel | None
) -> bytes:
    """The evidence image of one criterion's frame; FrameStoreError when the frame is gone. Reading and drawing run
    in a worker thread, off the page's event loop."""
    bgr = await asyncio.to_thread(frames.video_frame, video_id, index)
    if criterion in VALVE_CRITERIA and valve_model is not None:
        answer = await valve_model(image_only(bgr))
        return await asyncio.to_thread(lambda: encode_png(valve_evidence(bgr, answer[PROBABILITIES], caption)))
    if criterion in JET_CRITERIA:
        return await asyncio.to_thread(lambda: encode_png(jet_evidence(bgr, caption)))
    return await asyncio.to_thread(lambda: encode_png(_caption(_canvas(bgr), caption)))
