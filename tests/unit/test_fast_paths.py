"""The fast paths of issue 20 give what the libraries' general routines give: each is checked against them."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rhd.features.ops import (
    FIRST_ORDER,
    GLCM_ANGLES,
    GLCM_DISTANCES,
    GLCM_PROPS,
    PERCENTILES,
    first_order,
    glcm_properties,
)
from scipy import stats
from skimage.feature import graycomatrix, graycoprops


def _reference(values: np.ndarray) -> dict[str, float]:
    """First-order statistics as scipy.stats and numpy compute them from every value."""
    values = values.astype(np.float64)
    flat = values.std() == 0
    histogram = np.bincount(values.astype(np.int64), minlength=256) / values.size
    nonzero = histogram[histogram > 0]
    out = {
        "mean": values.mean(),
        "var": values.var(),
        "skewness": 0.0 if flat else stats.skew(values),
        "kurtosis": 0.0 if flat else stats.kurtosis(values),
        "entropy": -(nonzero * np.log2(nonzero)).sum(),
    }
    out.update({f"p{p}": v for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)})
    return {f"x_{k}": float(v) for k, v in out.items()}


@settings(max_examples=300, deadline=None)
@given(arrays(np.uint8, st.integers(2, 3000), elements=st.integers(0, 255)))
def test_first_order_from_the_histogram_is_what_scipy_and_numpy_give(values):
    fast, slow = first_order(values, "x"), _reference(values)
    assert fast.keys() == slow.keys() == {f"x_{s}" for s in FIRST_ORDER}
    for name, value in slow.items():
        assert np.isclose(fast[name], value, rtol=1e-9, atol=1e-9), (name, fast[name], value)


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(0, 31)),
    st.booleans(),
)
def test_glcm_properties_in_one_pass_are_what_graycoprops_gives(image, sparse):
    """Any image, including constant ones and ones too small for a distance (empty matrices)."""
    image = image if not sparse else np.where(image > 15, image, 0).astype(np.uint8)
    counts = graycomatrix(image, GLCM_DISTANCES, GLCM_ANGLES, levels=32, symmetric=True)
    fast = glcm_properties(counts)
    for prop in GLCM_PROPS:
        assert np.allclose(fast[prop], graycoprops(counts, prop), rtol=1e-12, atol=1e-12, equal_nan=True), prop


def test_first_order_of_fewer_than_two_values_is_zero():
    assert set(first_order(np.array([7], np.uint8), "x").values()) == {0.0}
    assert first_order(np.full(50, 9, np.uint8), "x")["x_skewness"] == 0.0


def test_valve_measures_the_image_the_network_read_without_cutting_it_out_again():
    from rhd.imaging.sector import image_only
    from rhd.synth.render import Scene, render_frame
    from rhd.valve import ops

    scene = Scene(view="plax", leaflet_mm=4.0)
    image, truth = render_frame(scene, 0.62, np.random.default_rng(1))
    answer = np.eye(len(ops.LABELS), dtype=np.float32)[ops.half_resolution(truth.valve_mask)]
    alone = ops.valve_features(image, answer, scene.pixel_spacing_mm)
    assert alone[0] == 1.0  # the leaflets were found: the comparison is of real measurements
    assert ops.valve_features(image, answer, scene.pixel_spacing_mm, seen=image_only(image)) == alone


def test_aliasing_and_the_jet_are_worked_out_in_the_box_around_the_flow_as_on_the_whole_frame():
    """unalias and jet_length_px label regions within the box around their pixels: a frame padded with empty
    margins gives the same answer, and no flow gives none."""
    from rhd.features.ops import jet_length_px, unalias

    rng = np.random.default_rng(5)
    laminar = np.zeros((60, 80), bool)
    laminar[10:40, 20:50] = True
    velocity = np.where(np.arange(30)[:, None] < 12, 55.0, -50.0) * np.ones((30, 30))
    aliased = velocity[laminar[10:40, 20:50]].astype(np.float32)
    aliased += rng.normal(0, 0.5, aliased.shape).astype(np.float32)
    padded = np.pad(laminar, ((25, 7), (3, 40)))
    assert np.array_equal(unalias(aliased, laminar, 60.0), unalias(aliased, padded, 60.0))
    assert (np.abs(unalias(aliased, laminar, 60.0)) > 60.0).any()  # a seam was found and unwrapped
    assert unalias(np.zeros(0, np.float32), np.zeros((10, 10), bool), 60.0).size == 0
    mosaic = np.zeros((60, 80), bool)
    mosaic[5:9, 10:40] = True
    mosaic[30:32, 60:62] = True
    assert jet_length_px(mosaic) == jet_length_px(np.pad(mosaic, ((9, 2), (30, 1)))) == 29.0
    assert jet_length_px(np.zeros((60, 80), bool)) == 0.0


def test_image_only_blacks_out_exactly_what_lies_outside_the_fan():
    from rhd.imaging.sector import fan_mask, image_only
    from rhd.synth.render import Scene, render_frame

    image, _ = render_frame(Scene(view="a4c"), 0.3, np.random.default_rng(2))
    fan = fan_mask(image)
    assert 0.2 < fan.mean() < 0.9
    assert np.array_equal(image_only(image), np.where(fan[..., None], image, np.uint8(0)))
