"""Keras layers the served networks share for their in-graph preprocessing (Keras 3 alone: any backend)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="rhd")
class BgrToGrey(keras.layers.Layer):
    """uint8 BGR [..., 3] -> float32 luma [..., 1], with OpenCV's weights (0.114 B + 0.587 G + 0.299 R)."""

    def call(self, frames):  # type: ignore[no-untyped-def]
        weights = ops.convert_to_tensor([0.114, 0.587, 0.299], dtype="float32")
        return ops.sum(ops.cast(frames, "float32") * weights, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], 1)


def sector_preprocessor(
    frame_shape: tuple[int, int, int], crop: tuple[tuple[int, int], tuple[int, int]], pool: int, name: str
) -> keras.Model:
    """Frames as decoded (uint8 BGR) -> what a network sees, with no weights: grey (BT.601 luma), cropped to the
    sector's bounding box (crop: (top, bottom), (left, right) pixels cut off), pool x pool area downscale, / 255."""
    frames = keras.Input(frame_shape, dtype="uint8", name="frames")
    x = BgrToGrey(name="grey")(frames)
    x = keras.layers.Cropping2D(crop, name="sector")(x)
    x = keras.layers.AveragePooling2D(pool, name="downscale")(x)
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(x)
    return keras.Model(frames, x, name=name)
