"""inspect, segment and features as plain functions, checked against the generator's ground truth."""

import numpy as np
import pytest
from rhd.features.ops import FEATURE_NAMES, frame_features
from rhd.inspect.ops import colour_fraction, is_doppler
from rhd.labels import VIEWS
from rhd.segment.ops import MOSAIC, segment
from rhd.split.ops import VideoDecodeError, decode_png, decode_video, encode_png
from rhd.synth.render import JetScene, Scene, render_frame

TEXT = (("phi", "Hospital Santa Rita"), ("phi", "Maria Silva Costa"))


def frames(doppler, n=24, jet=30.0, seed=0):
    rng = np.random.default_rng(seed)
    return [render_frame(Scene(VIEWS[i % 4], colour=doppler, mr=JetScene(jet, 1.0, False, 450.0), text_lines=TEXT,
                               colour_bar=True), (i / n) % 1.0, rng) for i in range(n)]


def test_inspect_tells_doppler_from_b_mode():
    assert all(is_doppler(colour_fraction(img)) for img, _ in frames(True))
    assert not any(is_doppler(colour_fraction(img)) for img, _ in frames(False))


def test_inspect_rejects_a_grey_single_channel_frame():
    with pytest.raises(ValueError, match="H x W x 3"):
        colour_fraction(np.zeros((240, 320), np.uint8))


def test_segment_covers_the_true_flow_and_finds_the_jet():
    for image, truth in frames(True):
        labels = segment(image).labels
        flow = labels > 0
        inside = flow & truth.flow_mask
        assert inside.sum() / truth.flow_mask.sum() > 0.95  # the colour bar adds to flow, not replaces it
        if truth.jet_mask.any():
            mosaic = labels == MOSAIC
            dice = 2 * (mosaic & truth.jet_mask).sum() / (mosaic.sum() + truth.jet_mask.sum())
            assert dice > 0.9


def test_segment_of_an_all_black_frame_is_empty():
    result = segment(np.zeros((240, 320, 3), np.uint8))
    assert result.flow_pixels == 0 and not result.labels.any()


def test_jet_length_feature_matches_ground_truth():
    errors = []
    for image, truth in frames(True, jet=40.0):
        if truth.jet_mask.any():
            values = dict(zip(FEATURE_NAMES, frame_features(image, segment(image).labels, 0.6, 60.0), strict=True))
            errors.append(abs(values["jet_length_mm"] - truth.jet_length_mm))
            assert values["aliased"] == 1.0 and values["velocity_index_cm_s"] >= 60.0
    assert errors and np.median(errors) <= 3.0


def test_features_refuse_unknown_spacing_and_mismatched_masks():
    image, _ = frames(True, n=1)[0]
    with pytest.raises(ValueError, match="spacing"):
        frame_features(image, segment(image).labels, 0.0, 60.0)
    with pytest.raises(ValueError, match="shape"):
        frame_features(image, np.zeros((10, 10), np.uint8), 0.6, 60.0)


def test_png_round_trip_is_lossless():
    image, _ = frames(True, n=1)[0]
    assert np.array_equal(decode_png(encode_png(image)), image)


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"%PDF-1.4 not a video", "not a decodable video")])
def test_split_refuses_what_is_not_a_video(data, reason):
    with pytest.raises(VideoDecodeError, match=reason):
        decode_video(data)
