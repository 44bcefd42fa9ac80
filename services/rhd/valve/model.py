"""The valve segmentation network, in Keras 3 alone (no TensorFlow import): a small U-Net that labels every pixel
of the fan as background, mitral leaflet, chord or aortic cusp.

It takes frames as split decodes them, uint8 BGR [batch, 240, 320, 3], and does its own preprocessing in its first
layers (grey -> crop to the sector's bounding box -> 2 x 2 area downscale -> [0, 1]), so training and serving cannot
drift apart. It answers at half resolution (1.2 mm per pixel at the default spacing): it says where each structure
is; the valve stage measures thickness on the full-resolution frame inside what it found.
"""

import keras

from rhd.imaging.layers import sector_preprocessor

FRAME_SHAPE = (240, 320, 3)
SECTOR_CROP = ((6, 18), (24, 24))  # (top, bottom), (left, right): the fan's bounding box, as the view model's
POOL = 2
INPUT_SHAPE = (
    (FRAME_SHAPE[0] - sum(SECTOR_CROP[0])) // POOL,
    (FRAME_SHAPE[1] - sum(SECTOR_CROP[1])) // POOL,
    1,
)  # (108, 136, 1)
LABELS = ("background", "mitral_leaflet", "chord", "aortic_cusp")  # the generator's VALVE_LABELS, in its order
FILTERS = (12, 24, 48)


def preprocessor() -> keras.Model:
    """Frames as decoded -> the network's input; no weights."""
    return sector_preprocessor(FRAME_SHAPE, SECTOR_CROP, POOL, "valve_preprocess")


def segmenter(seed: int) -> keras.Model:
    """Preprocessed frames -> per-pixel label probabilities [batch, 108, 136, len(LABELS)]; initialised from the
    seed. Three levels, two convolutions on the way down, one on the way up, skip connections."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE)
    x, skips = inputs, []
    for level, filters in enumerate(FILTERS):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        if level < len(FILTERS) - 1:
            skips.append(x)
            x = keras.layers.MaxPooling2D()(x)
    for filters, skip in zip(reversed(FILTERS[:-1]), reversed(skips), strict=True):
        x = keras.layers.UpSampling2D()(x)
        x = keras.layers.Concatenate()([x, skip])
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(len(LABELS), 1, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="valve_unet")


def served_model(preprocess: keras.Model, unet: keras.Model) -> keras.Model:
    """Frames as decoded -> label probabilities at half resolution: what is exported and served."""
    frames = keras.Input(FRAME_SHAPE, dtype="uint8", name="frames")
    return keras.Model(frames, unet(preprocess(frames)), name="valve")
