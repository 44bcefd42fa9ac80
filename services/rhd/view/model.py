"""The view CNN, in Keras 3 alone (no TensorFlow import): the same model code runs on any Keras backend.

The model takes frames as split decodes them, uint8 BGR [batch, 240, 320, 3], and does its own
preprocessing in its first layers, so training and serving cannot drift apart:

    grey (BT.601 luma) -> crop to the sector's bounding box -> 4 x 4 area downscale -> scale to [0, 1]

then four conv/pool blocks, global average pooling and a softmax over VIEW_CLASSES.
"""

import keras

from rhd.imaging.layers import sector_preprocessor
from rhd.labels import VIEW_CLASSES

FRAME_SHAPE = (240, 320, 3)  # what the generator writes and split decodes
# Rows 6-221 and columns 24-295 hold the 80 degree fan (rows 8-220, columns 25-295) and little else: the
# burned-in text, colour bar, ECG and depth marks mostly fall outside. 216 x 272 is a multiple of the pool.
SECTOR_CROP = ((6, 18), (24, 24))  # (top, bottom), (left, right) pixels cut off
POOL = 4
INPUT_SHAPE = (
    (FRAME_SHAPE[0] - sum(SECTOR_CROP[0])) // POOL,
    (FRAME_SHAPE[1] - sum(SECTOR_CROP[1])) // POOL,
    1,
)  # (54, 68, 1): what the classifier sees
FILTERS = (16, 32, 64, 64)


def preprocessor() -> keras.Model:
    """Frames as decoded -> the network's input; no weights."""
    return sector_preprocessor(FRAME_SHAPE, SECTOR_CROP, POOL, "view_preprocess")


def classifier(seed: int) -> keras.Model:
    """Preprocessed frames -> view probabilities; initialised from the seed."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE)
    x = inputs
    for filters in FILTERS:
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(VIEW_CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs, name="view_cnn")


def served_model(preprocess: keras.Model, cnn: keras.Model) -> keras.Model:
    """Frames as decoded -> view probabilities: what is exported and served."""
    frames = keras.Input(FRAME_SHAPE, dtype="uint8", name="frames")
    return keras.Model(frames, cnn(preprocess(frames)), name="view")
