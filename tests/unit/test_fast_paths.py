"""The fast paths of issue 20 give what the libraries' general routines give: each is checked against them."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rhd.features.ops import FIRST_ORDER, PERCENTILES, first_order
from scipy import stats


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


def test_first_order_of_fewer_than_two_values_is_zero():
    assert set(first_order(np.array([7], np.uint8), "x").values()) == {0.0}
    assert first_order(np.full(50, 9, np.uint8), "x")["x_skewness"] == 0.0
