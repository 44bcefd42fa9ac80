"""The video network, in Keras 3 alone (no TensorFlow import): a C3D-style 3D CNN (Tran et al. 2015: 3 x 3 x 3
convolutions throughout, the first pooling spatial only) over 16-frame clips of one video, answering per video:
P(a pathological regurgitant jet shows) for a colour Doppler video and P(a morphological change of a valve shows)
for a B-mode video.

It takes clips as split decodes their frames, uint8 BGR [batch, 16, 240, 320, 3], and does its own preprocessing
in its first layers (crop to the sector's bounding box -> area resize of each frame to 112 x 112 -> [0, 1]; colour
kept, since the jets are colour), so training and serving cannot drift apart. Smaller than the published C3D (4
blocks of 8-64 filters instead of 8 convolutions of 64-512): it is trained on CPUs here, and on the generator's
videos a larger one gained nothing.
"""

import keras

FRAME_SHAPE = (240, 320, 3)
CLIP_FRAMES = 16
CLIP_SHAPE = (CLIP_FRAMES, *FRAME_SHAPE)
SIZE = 112
SECTOR_CROP = ((6, 18), (24, 24))  # (top, bottom), (left, right): the fan's bounding box, as the other networks'
INPUT_SHAPE = (CLIP_FRAMES, SIZE, SIZE, 3)
OUTPUTS = ("jet", "morphology")  # what each video is asked; a colour video answers the first, a B-mode one the second
FILTERS = (8, 16, 32, 64)
INPUT_NAME = "clips"
PROBABILITIES = "finding_probabilities"


def preprocessor() -> keras.Model:
    """Clips as decoded -> the network's input; no weights."""
    clips = keras.Input(CLIP_SHAPE, dtype="uint8", name=INPUT_NAME)
    x = keras.layers.Cropping3D(((0, 0), *SECTOR_CROP), name="sector")(clips)
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(x)  # to float: the area resize is linear, its order free
    x = keras.layers.TimeDistributed(keras.layers.Resizing(SIZE, SIZE, interpolation="area"), name="resize")(x)
    return keras.Model(clips, x, name="video_preprocess")


def c3d(seed: int, filters: tuple[int, ...] = FILTERS, dense: int = 64) -> keras.Model:
    """Preprocessed clips -> P(finding) [batch, len(OUTPUTS)], initialised from the seed. Each block a 3 x 3 x 3
    convolution (ReLU) and a max pooling (1 x 2 x 2 first, so the early frames keep their timing, then 2 x 2 x 2);
    global max pooling (a jet or a thick leaflet is a small part of the clip: averaged over it, it would fade); one
    hidden dense layer. The last layer answers in float32 under mixed precision."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE)
    x = inputs
    for level, width in enumerate(filters):
        # He initialisation (for ReLU) and no normalisation layer: a batch statistic would differ between one worker
        # and several, and a per-clip one (group normalisation) let Adam turn float rounding into 2 x its step.
        x = keras.layers.Conv3D(
            width, 3, padding="same", activation="relu", kernel_initializer="he_normal", name=f"conv{level + 1}"
        )(x)
        x = keras.layers.MaxPooling3D((1, 2, 2) if level == 0 else (2, 2, 2), name=f"pool{level + 1}")(x)
    x = keras.layers.GlobalMaxPooling3D(name="pool")(x)  # a finding is local (a jet, a leaflet): its strongest place
    x = keras.layers.Dense(dense, activation="relu", kernel_initializer="he_normal", name="fc")(x)
    outputs = keras.layers.Dense(len(OUTPUTS), activation="sigmoid", dtype="float32", name="findings")(x)
    return keras.Model(inputs, outputs, name="video_c3d")


def served_model(preprocess: keras.Model, network: keras.Model) -> keras.Model:
    """Clips as decoded -> P(finding): what is exported and served."""
    clips = keras.Input(CLIP_SHAPE, dtype="uint8", name=INPUT_NAME)
    return keras.Model(clips, network(preprocess(clips)), name="video")
