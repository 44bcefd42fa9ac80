"""view stage's pure functions: the view model's outputs for one frame -> the named probe view (the contract itself
lives in rhd.runtime.views, since the valve stage asks the same model about B-mode frames)."""

from rhd.runtime.views import INPUT_NAME, PROBABILITIES, VIEW_INDEX, ViewResult, prediction_from_outputs

__all__ = ["INPUT_NAME", "PROBABILITIES", "VIEW_INDEX", "ViewResult", "prediction_from_outputs"]
