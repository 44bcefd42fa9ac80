"""Per-frame cost of each stage's functions, next to raw OpenCV decode and raw HSV conversion measured
in the same run on the same core. Prints figures; asserts nothing."""

import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from google.protobuf import json_format
from rhd.features.ops import frame_features
from rhd.imaging.burned_in import clean_frames
from rhd.imaging.ecg import read_ecg, reading_message
from rhd.imaging.sector import image_only, sector_mask, video_sector
from rhd.imaging.video import decode_video, encode_lossless
from rhd.inspect.ops import inspect
from rhd.runtime.codec import frame_image, frame_pixels
from rhd.runtime.frames import FrameStore
from rhd.segment.ops import segment
from rhd.spectral.ops import spectral_features, spectral_region
from rhd.synth.generator import synth_studies
from rhd.v1 import rhd_pb2 as pb
from rhd.valve.ops import valve_features


def per_frame_ms(fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return 1000 * (time.perf_counter() - started) / len(items)


def main(n_studies: int = 2) -> None:
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        studies = synth_studies(99, n_studies, Path(tmp), balanced=True)
        seconds = time.perf_counter() - started
        videos = [p.read_bytes() for s in studies for p in sorted(s.glob("*.mp4"))]
        # Each spectral video's frames with its calibrated region, as split hands them on.
        traces, images, fans = [], [], []  # spectral frames; the other videos' frames (images of the heart), sectors
        for s in studies:
            for video in json.loads((s / "study.json").read_text())["videos"]:
                region = spectral_region(
                    [json_format.ParseDict(r, pb.UltrasoundRegion()) for r in video.get("regions", [])]
                )
                decoded = decode_video((s / video["filename"]).read_bytes()).frames
                if region is not None:
                    traces += [(f, region) for f in decoded]
                else:
                    images += decoded
                    fans += [sector_mask(video_sector(decoded), decoded[0].shape)] * len(decoded)
        truth_bytes = sum(p.stat().st_size for p in (Path(tmp) / "truth").rglob("*") if p.is_file())
    generated = sum(len(decode_video(v).frames) for v in videos)
    print(
        f"generator (rhd synth, default knobs): {n_studies} studies, {generated} frames in {seconds:.1f} s = "
        f"{n_studies / seconds:.2f} studies/s, {generated / seconds:.0f} frames/s; "
        f"{sum(map(len, videos)) / n_studies / 1e6:.1f} MB of MP4 + {truth_bytes / n_studies / 1e6:.2f} MB of "
        "ground truth per study"
    )
    frames = [f for v in videos for f in decode_video(v).frames]
    kinds = [inspect(f, fan=fan).kind for f, fan in zip(images, fans, strict=True)]
    colour = [f for f, kind in zip(images, kinds, strict=True) if kind == "doppler"]
    colour_fans = [fan for fan, kind in zip(fans, kinds, strict=True) if kind == "doppler"]
    bmode = [f for f, kind in zip(images, kinds, strict=True) if kind == "anatomical"]
    # The valve network's answers, from the model in-process (its cost per frame served is bench_view's kind of
    # figure); the stage's own measurements are what is timed.
    from rhd.valve.local import LocalValveModel

    valve_model = LocalValveModel(Path("models"))
    bmode_fans = [fan for fan, kind in zip(fans, kinds, strict=True) if kind == "anatomical"]
    seen = [image_only(f, fan) for f, fan in zip(bmode, bmode_fans, strict=True)]  # as the valve stage cuts it out
    answers = valve_model(np.stack(bmode), bmode_fans) if bmode else []
    network_ms = 1000 * _time(lambda: valve_model(np.stack(bmode))) / max(len(bmode), 1)
    ecgs = [reading_message(r) if (r := read_ecg(f)) is not None else None for f, _ in traces]
    masks = [segment(f, fan).labels for f, fan in zip(colour, colour_fans, strict=True)]
    raws = [pb.Frame(height=f.shape[0], width=f.shape[1], **frame_pixels(f, "raw")) for f in frames]
    pngs = [pb.Frame(height=f.shape[0], width=f.shape[1], **frame_pixels(f, "png")) for f in frames]
    n_frames = len(frames)
    store_dir = tempfile.TemporaryDirectory()
    store = FrameStore(Path(store_dir.name), 3600.0)  # the frame store (RHD_FRAME_CODEC=store), on this machine's disk
    stored = []
    frame_fans = []  # each frame's video's sector, as split finds it
    for n, decoded in enumerate(decode_video(v).frames for v in videos):
        uri = store.put_video(f"S{n}", decoded)
        h, w = decoded[0].shape[:2]
        stored += [pb.Frame(height=h, width=w, stored=pb.StoredFrame(uri=uri, index=i)) for i in range(len(decoded))]
        frame_fans += [sector_mask(video_sector(decoded), decoded[0].shape)] * len(decoded)
    by_video = [decode_video(v).frames for v in videos]
    lossless = [encode_lossless(clean_frames(f), 24.0) for f in by_video]
    rows = [
        ("raw OpenCV decode (VideoCapture)", 1000 * _time(lambda: [decode_video(v) for v in videos]) / n_frames),
        ("raw HSV conversion", per_frame_ms(lambda f: cv2.cvtColor(f, cv2.COLOR_BGR2HSV), frames)),
        (
            "split: decode + frame store write (default)",
            1000
            * _time(lambda: [store.put_video(f"V{i}", decode_video(v).frames) for i, v in enumerate(videos)])
            / n_frames,
        ),
        ("stage: read a stored frame (memory map)", per_frame_ms(store.image, stored)),
        (
            "split: decode + raw frame in the record",
            1000 * _time(lambda: [frame_pixels(f, "raw") for v in videos for f in decode_video(v).frames]) / n_frames,
        ),
        (
            "split: decode + PNG (RHD_FRAME_CODEC=png)",
            1000 * _time(lambda: [frame_pixels(f, "png") for v in videos for f in decode_video(v).frames]) / n_frames,
        ),
        (
            "deid: decode + clean pixels + HuffYUV encode",
            1000
            * _time(
                lambda: [encode_lossless(clean_frames(decode_video(v).frames, in_place=True), 24.0) for v in videos]
            )
            / n_frames,
        ),
        (
            "deid: decode + clean pixels + frame store write (one region)",
            1000
            * _time(
                lambda: [
                    store.put_video(f"D{i}", clean_frames(decode_video(v).frames, in_place=True))
                    for i, v in enumerate(videos)
                ]
            )
            / n_frames,
        ),
        (
            "split: the video's sector (8 frames' fans)",
            1000 * _time(lambda: [video_sector(f) for f in by_video]) / n_frames,
        ),
        (
            "deid: clean pixels alone (layout per video)",
            1000 * _time(lambda: [clean_frames([x.copy() for x in f], in_place=True) for f in by_video]) / n_frames,
        ),
        (
            "split: decode of deid's lossless HuffYUV + raw frame",
            1000 * _time(lambda: [frame_pixels(f, "raw") for v in lossless for f in decode_video(v).frames]) / n_frames,
        ),
        (
            "inspect: stored frame + colour (the line: video's sector)",
            per_frame_ms(lambda i: inspect(store.image(stored[i]), fan=frame_fans[i]), range(len(stored))),
        ),
        ("inspect: raw frame + its own fan + colour", per_frame_ms(lambda r: inspect(frame_image(r)), raws)),
        ("inspect: PNG decode + its own fan + colour", per_frame_ms(lambda p: inspect(frame_image(p)), pngs)),
        (
            "segment: k-means on colour pixels (video's sector)",
            per_frame_ms(lambda i: segment(colour[i], colour_fans[i]), range(len(colour))),
        ),
        ("segment: the same, each frame's own fan", per_frame_ms(segment, colour)),
        (
            "features: texture + bar + velocity (video's sector)",
            per_frame_ms(lambda i: frame_features(colour[i], masks[i], 0.6, 60.0, colour_fans[i]), range(len(colour))),
        ),
        ("inspect: ECG sweep alone (read_ecg)", per_frame_ms(read_ecg, frames)),
        (
            "spectral: envelope + phases + gradient",
            per_frame_ms(lambda i: spectral_features(traces[i][0], traces[i][1], ecgs[i]), range(len(traces))),
        ),
        ("valve: network in-process (batches of 64)", network_ms),
        (
            "valve: profiles + shapes (measurements)",
            per_frame_ms(lambda i: valve_features(bmode[i], answers[i], 0.6, seen[i]), range(len(bmode))),
        ),
    ]
    print(
        f"{n_frames} frames ({len(colour)} colour Doppler, {len(bmode)} B-mode, {len(traces)} spectral Doppler) of "
        f"{len(videos)} videos, "
        "one core"
    )
    for name, ms in rows:
        print(f"  {name:<62} {ms:7.3f} ms/frame  {1000 / ms:8.0f} frames/s")
    decode_ms, store_ms, raw_ms, png_ms = rows[0][1], rows[2][1], rows[4][1], rows[5][1]
    print(
        f"frame splitting vs raw OpenCV decode: {decode_ms / store_ms:.2f}x with the frame store, "
        f"{decode_ms / raw_ms:.2f}x with raw frames, {decode_ms / png_ms:.2f}x with PNG (goal >= 0.7x)"
    )
    store_dir.cleanup()


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
