"""inspect, segment and features as plain functions, measured against the generator's ground truth on decoded
MP4 frames (what the services see), plus the edge cases that must end in a clear reason, never a crash."""

import cv2
import numpy as np
import pytest
from rhd.features.ops import FEATURE_NAMES, FeatureError, frame_features, unalias
from rhd.imaging.colour import AWAY, MOSAIC, TOWARD, decode_velocity, find_colour_bar
from rhd.imaging.sector import fan_with_flow, frame_sector, sector_mask, sector_message, video_sector
from rhd.imaging.video import VideoDecodeError, decode_video
from rhd.inspect.ops import ANATOMICAL, DOPPLER, NO_IMAGE, NOT_ECHO, inspect
from rhd.labels import VIEWS
from rhd.runtime.codec import decode_png, encode_png
from rhd.segment.ops import segment
from rhd.synth.generator import SynthConfig, load_frame_truth, load_truth, synth_studies
from rhd.synth.render import JetScene, Scene, render_frame
from rhd.v1 import rhd_pb2 as pb

TEXT = (("phi", "Hospital Santa Rita"), ("phi", "Maria Silva Costa"))
# The hard cases on purpose: low gain, colour bar and yellow text on most B-mode videos, many off-axis and
# poor-window videos; 9 studies x 10 videos x 24 frames = 2,160 frames.
HARD = SynthConfig(
    videos_per_study=10,
    duration_s=(1.0, 1.0),
    gain=(0.5, 1.3),
    bmode_colour_bar_rate=0.7,
    coloured_text_rate=0.7,
    off_axis_rate=0.1,
    poor_quality_rate=0.15,
)


@pytest.fixture(scope="module")
def hard_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("hard")
    return synth_studies(21, 9, out, HARD, balanced=True)


def videos(studies, doppler_only=False):
    """(study truth, video truth, decoded frames, per-frame arrays or None, the video's sector as split finds it), one
    video at a time."""
    for study in studies:
        truth = load_truth(study)
        for video in truth["videos"]:
            if doppler_only and not video["doppler"]:
                continue
            frames = decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames
            arrays = load_frame_truth(study, video["video_id"]) if video["doppler"] else None
            yield truth, video, frames, arrays, sector_mask(video_sector(frames), frames[0].shape)


# The line finds each video's sector once (split); a record without one has each frame's own fan found instead.
FANS = pytest.mark.parametrize("per_video", [True, False], ids=["video-sector", "frame-fan"])


@FANS
def test_inspect_tells_doppler_from_b_mode_on_2000_hard_frames(hard_set, per_video):
    right = total = 0
    for _, video, frames, _, sector in videos(hard_set):
        for frame in frames:
            right += inspect(frame, fan=sector if per_video else None).doppler == video["doppler"]
            total += 1
    assert total >= 2000
    assert right / total >= 0.995, f"{right}/{total}"


@FANS
def test_segment_flow_masks_reach_dice_090(hard_set, per_video):
    dice = []
    for _, _, frames, arrays, sector in videos(hard_set, doppler_only=True):
        for k in range(0, len(frames), 3):
            truth = arrays["flow"][k]
            if truth.any():
                flow = segment(frames[k], sector if per_video else None).labels > 0
                dice.append(2 * (flow & truth).sum() / (flow.sum() + truth.sum()))
    assert len(dice) > 200
    assert np.mean(dice) >= 0.90, np.mean(dice)


@FANS
def test_velocity_through_the_colour_bar_and_jet_length_meet_their_targets(hard_set, per_video):
    errors, jets = [], []
    for study, video, frames, arrays, sector in videos(hard_set[:6], doppler_only=True):
        nyquist = study["acquisition"]["nyquist_cm_s"]
        fan = sector if per_video else None
        for k in range(0, len(frames), 3):
            labels = segment(frames[k], fan).labels
            laminar = (labels == TOWARD) | (labels == AWAY)
            bar = find_colour_bar(frames[k], nyquist, fan)
            decoded = np.zeros(laminar.shape, np.float32)
            decoded[laminar] = unalias(decode_velocity(frames[k], laminar, bar), laminar, nyquist)
            true = arrays["velocity_cm_s"][k]
            plain = laminar & arrays["flow"][k] & ~arrays["jet"][k] & (np.abs(true) < nyquist)
            errors.append(np.abs(decoded[plain] - true[plain]) / nyquist)
            drawn = max(video["frames"][k]["mr_length_mm"], video["frames"][k]["ar_length_mm"])
            if drawn > 0:
                values = dict(zip(FEATURE_NAMES, frame_features(frames[k], labels, 0.6, nyquist, fan), strict=True))
                jets.append(abs(values["jet_length_mm"] - drawn))
    errors = np.concatenate(errors)
    assert errors.size > 10_000
    assert errors.mean() <= 0.10, errors.mean()  # mean absolute error <= 10% of Nyquist, non-aliased pixels
    assert len(jets) >= 10 and np.median(jets) <= 3.0, jets


def test_aliased_inflow_is_read_beyond_the_nyquist_limit():
    # A fast inflow towards the probe in A4C, 110 cm/s at a 55 cm/s limit: its core wraps to blue on screen.
    scene = Scene("a4c", colour=True, nyquist_cm_s=55.0, inflow_cm_s=110.0, chamber_flow=0.0, text_lines=TEXT)
    image, truth = render_frame(scene, 0.62, np.random.default_rng(0))
    values = dict(zip(FEATURE_NAMES, frame_features(image, segment(image).labels, 0.6, 55.0), strict=True))
    true_peak = float(np.abs(truth.velocity_cm_s).max())
    assert true_peak > 55.0
    assert values["velocity_peak_cm_s"] == pytest.approx(true_peak, rel=0.15)
    assert values["unwrapped_fraction"] > 0


def test_segment_names_the_mosaic_of_a_jet_and_not_fast_laminar_flow():
    for i, view in enumerate(VIEWS):
        jet_scene = Scene(view, colour=True, mr=JetScene(30.0, 1.0, False, 450.0), text_lines=TEXT)
        image, truth = render_frame(jet_scene, 0.2, np.random.default_rng(i))
        mosaic = segment(image).labels == MOSAIC
        assert 2 * (mosaic & truth.jet_mask).sum() / (mosaic.sum() + truth.jet_mask.sum()) > 0.9
        calm = Scene(view, colour=True, inflow_cm_s=100.0, nyquist_cm_s=55.0, text_lines=TEXT)
        image, _ = render_frame(calm, 0.65, np.random.default_rng(i))
        assert (segment(image).labels == MOSAIC).sum() <= 10


def test_masks_travel_compactly():
    sizes = []
    for phase in np.linspace(0, 1, 8, endpoint=False):
        image, _ = render_frame(
            Scene("plax", colour=True, mr=JetScene(30.0, 1.0, False, 450.0)), float(phase), np.random.default_rng(1)
        )
        labels = segment(image).labels
        data = encode_png(labels)
        assert np.array_equal(decode_png(data), labels)
        sizes.append(len(data))
    assert max(sizes) < 4_000  # bytes: a label PNG, against ~230 kB for the frame


@pytest.mark.parametrize(
    ("image", "kind"),
    [
        (np.zeros((240, 320, 3), np.uint8), NO_IMAGE),
        (np.full((240, 320, 3), (0, 0, 200), np.uint8), NOT_ECHO),
    ],
)
def test_inspect_gives_a_reason_for_frames_that_are_not_echo_images(image, kind):
    result = inspect(image)
    assert result.kind == kind and not result.doppler and result.reason


def test_inspect_calls_b_mode_with_overlays_anatomical_and_a_tiny_jet_doppler():
    bmode, _ = render_frame(
        Scene("plax", colour_bar=True, text_lines=TEXT, text_colour=(60, 230, 230)), 0.3, np.random.default_rng(0)
    )
    assert inspect(bmode).kind == ANATOMICAL
    tiny = Scene(
        "a4c", colour=True, chamber_flow=0.0, inflow_cm_s=0.0, outflow_cm_s=0.0, mr=JetScene(4.0, 1.0, False, 300.0)
    )
    image, truth = render_frame(tiny, 0.2, np.random.default_rng(0))
    assert 0 < truth.flow_mask.sum() < 150
    assert inspect(image).kind == DOPPLER


def test_inspect_rejects_a_grey_single_channel_frame():
    with pytest.raises(ValueError, match="H x W x 3"):
        inspect(np.zeros((240, 320), np.uint8))


def doppler_frame():
    return render_frame(
        Scene("a4c", colour=True, mr=JetScene(25.0, 1.0, False, 450.0), text_lines=TEXT), 0.2, np.random.default_rng(3)
    )[0]


def test_a_frame_without_a_colour_bar_fails_with_the_reason():
    image = doppler_frame()
    image[:, 290:] = 0  # the bar and its labels cut off
    with pytest.raises(FeatureError, match="no colour bar"):
        frame_features(image, segment(image).labels, 0.6, 60.0)


def test_an_unreadable_colour_bar_and_unknown_metadata_fail_with_the_reason():
    image = doppler_frame()
    image[40:140, 288:] = (0, 0, 255)  # a red block, 32 px wide, where the bar should be
    with pytest.raises(FeatureError, match="unreadable"):
        frame_features(image, segment(image).labels, 0.6, 60.0)
    image = doppler_frame()
    with pytest.raises(FeatureError, match="Nyquist"):
        frame_features(image, segment(image).labels, 0.6, 0.0)
    with pytest.raises(FeatureError, match="spacing"):
        frame_features(image, segment(image).labels, 0.0, 60.0)
    with pytest.raises(FeatureError, match="shape"):
        frame_features(image, np.zeros((10, 10), np.uint8), 0.6, 60.0)


def test_segment_of_an_all_black_frame_or_a_single_colour_pixel():
    result = segment(np.zeros((240, 320, 3), np.uint8))
    assert result.flow_pixels == 0 and not result.labels.any()
    image, _ = render_frame(Scene("plax"), 0.3, np.random.default_rng(0))
    image[120, 160] = (0, 0, 255)
    assert segment(image).flow_pixels <= 1


def test_features_are_named_finite_and_versioned():
    image = doppler_frame()
    values = frame_features(image, segment(image).labels, 0.6, 60.0)
    assert len(values) == len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    assert np.all(np.isfinite(values))
    named = dict(zip(FEATURE_NAMES, values, strict=True))
    assert named["mosaic_area_mm2"] > 0 and named["jet_length_mm"] > 10 and named["nyquist_cm_s"] == 60.0


def test_png_round_trip_is_lossless():
    image = doppler_frame()
    assert np.array_equal(decode_png(encode_png(image)), image)


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"%PDF-1.4 not a video", "not a decodable video")])
def test_split_refuses_what_is_not_a_video(data, reason):
    with pytest.raises(VideoDecodeError, match=reason):
        decode_video(data)


def test_a_videos_sector_is_found_once_and_stands_for_each_of_its_frames(tmp_path):
    """Split finds the sector of each video; the records carry it and the stages fill it in. A shadow over part of
    the fan in a few frames, or a mark beside it in one, does not move it: its frames vote."""
    [study] = synth_studies(5, 1, tmp_path, SynthConfig(videos_per_study=1, duration_s=(1.0, 1.0)))
    [video] = load_truth(study)["videos"]
    frames = decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames
    sector = sector_mask(video_sector(frames), frames[0].shape)
    own = [fan_with_flow(cv2.cvtColor(f, cv2.COLOR_BGR2HSV)) for f in frames]
    assert min((sector & fan).sum() / (sector | fan).sum() for fan in own) > 0.85
    # Shadow the left half of the fan in 3 frames and put a bright block below it in the last.
    altered = [f.copy() for f in frames]
    rows, cols = np.nonzero(sector)
    for f in altered[:3]:
        f[:, : int(np.median(cols))][sector[:, : int(np.median(cols))]] = 0
    altered[-1][rows.max() + 2 : rows.max() + 14, 10:40] = 255  # the last frame is always one that votes
    moved = sector_mask(video_sector(altered), frames[0].shape)
    assert (moved & sector).sum() / (moved | sector).sum() > 0.99  # its edge, where half the frames agree, may shift
    assert not moved[rows.max() + 2 :].any()
    # Through a record and back, as the stages read it; none in the record: the frame's own fan is found.
    record = pb.Frame(height=frames[0].shape[0], width=frames[0].shape[1], sector=sector_message(video_sector(frames)))
    assert np.array_equal(frame_sector(record), sector)
    assert frame_sector(pb.Frame(height=240, width=320)) is None
    blank = np.zeros((240, 320, 3), np.uint8)
    assert not sector_mask(video_sector([blank] * 4), blank.shape).any()
    assert inspect(blank, fan=sector_mask(video_sector([blank]), blank.shape)).kind == NO_IMAGE


def test_segment_sends_the_frames_the_view_model_does_not_read_straight_on_to_features():
    """Of a 50-frame video the view model reads 8 frames (0, 7, ..., 49): segment sends those to the view stage and the
    others to features directly (frames.viewed, no view), one hop fewer."""
    from rhd.runtime.codec import frame_pixels
    from rhd.runtime.stage import Position
    from rhd.runtime.topics import FRAMES_SEGMENTED, FRAMES_VIEWED
    from rhd.segment.service import Segment

    image, _ = render_frame(Scene(view="plax", colour=True), 0.3, np.random.default_rng(3))
    stage = Segment()
    routed = {}
    for index in (7, 8, 49):
        key = pb.FrameKey(study_id="S", video_id="S-V00", frame_index=index, video_frame_count=50)
        frame = pb.Frame(key=key, height=image.shape[0], width=image.shape[1], **frame_pixels(image, "raw"))
        [output] = stage.handle(pb.DopplerFrame(frame=frame, colour_fraction=0.1), Position(0, index, 0.0))
        routed[index] = output.topic
        message = output.message.segmented if output.topic == FRAMES_VIEWED else output.message
        assert message.mask.flow_pixels > 0 and message.frame.key.frame_index == index
        assert not (output.topic == FRAMES_VIEWED and output.message.HasField("view"))
    assert routed == {7: FRAMES_SEGMENTED, 8: FRAMES_VIEWED, 49: FRAMES_SEGMENTED}
