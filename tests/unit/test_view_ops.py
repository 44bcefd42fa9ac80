"""The view stage names the most probable view of a frame from the model's outputs, in VIEW_CLASSES order."""

import numpy as np
import pytest
from rhd.labels import VIEW_CLASSES as VIEWS
from rhd.view.ops import ViewResult, prediction_from_outputs


def test_the_most_probable_view_is_the_label_and_every_probability_is_kept():
    row = {"probabilities": np.array([0.1, 0.2, 0.5, 0.1, 0.1], np.float32), "view_index": np.int64(2)}
    result = prediction_from_outputs(row, model_version=3)
    assert result == ViewResult("a4c", pytest.approx(dict(zip(VIEWS, [0.1, 0.2, 0.5, 0.1, 0.1], strict=True))), 3)
    assert list(result.probabilities) == list(VIEWS)
    assert all(type(p) is float for p in result.probabilities.values())


@pytest.mark.parametrize("index", range(len(VIEWS)))
def test_each_output_position_is_the_view_of_the_same_position(index):
    probabilities = np.full(len(VIEWS), 0.1)
    probabilities[index] = 0.7
    assert prediction_from_outputs({"probabilities": probabilities}, 1).label == VIEWS[index]


def test_a_row_with_a_leading_unit_axis_is_read_too():
    assert prediction_from_outputs({"probabilities": np.array([[0.0, 0.0, 0.0, 1.0, 0.0]])}, 1).label == "a5c"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"view_index": np.int64(0)}, "lack 'probabilities'"),
        ({"probabilities": np.array([0.5, 0.5])}, "expected 5 view probabilities"),
        ({"probabilities": np.array([np.nan, 0.2, 0.3, 0.4, 0.1])}, "not finite"),
    ],
    ids=["missing", "wrong-length", "nan"],
)
def test_outputs_of_another_model_are_refused(row, message):
    with pytest.raises(ValueError, match=message):
        prediction_from_outputs(row, 1)
