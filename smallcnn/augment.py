"""Data augmentation in ImageDataGenerator's terms, run as Keras preprocessing layers.

Users of the classic recipe know `rotation_range=40, width_shift_range=0.2, ...`; the
options here mean the same things, but run on whole batches inside the tf.data
pipeline (never on validation or test data), not image by image in Python.
"""

import dataclasses

from smallcnn.errors import UsageError

FLIP_MODES = {
    "none": None,
    "horizontal": "horizontal",
    "vertical": "vertical",
    "both": "horizontal_and_vertical",
}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    rotation: float = 0.0  # degrees, either way
    shift: float = 0.0  # fraction of width and height, either way
    shear: float = 0.0  # shear factor (x and y), either way
    zoom: float = 0.0  # scale in [1 - zoom, 1 + zoom]
    flip: str = "none"  # none | horizontal | vertical | both
    brightness: float = 0.0  # fraction of the [0, 255] range added or removed
    contrast: float = 0.0  # contrast factor in [1 - contrast, 1 + contrast]


PRESETS = {
    "none": Augmentation(),
    "light": Augmentation(rotation=10, shift=0.05, zoom=0.1, flip="horizontal"),
    "standard": Augmentation(
        rotation=20, shift=0.1, shear=0.1, zoom=0.15, flip="horizontal", brightness=0.1, contrast=0.1
    ),
    "strong": Augmentation(
        rotation=40, shift=0.2, shear=0.2, zoom=0.2, flip="horizontal", brightness=0.2, contrast=0.2
    ),
}
DEFAULT_PRESET = "standard"


def resolve_augmentation(preset=DEFAULT_PRESET, **overrides):
    """The preset's settings with every override that is not None put in its place."""
    if preset not in PRESETS:
        raise UsageError(f"Unknown --augment preset {preset!r}. Choose one of: {', '.join(PRESETS)}.")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    if "flip" in chosen and chosen["flip"] not in FLIP_MODES:
        raise UsageError(
            f"Unknown --flip {chosen['flip']!r}. Choose one of: {', '.join(FLIP_MODES)}."
        )
    limits = {"rotation": 180, "shift": 1, "shear": 1, "zoom": 1, "brightness": 1, "contrast": 1}
    for name, top in limits.items():
        if name in chosen and not 0 <= chosen[name] <= top:
            raise UsageError(f"--{name} must be between 0 and {top}. Received: {chosen[name]}")
    return dataclasses.replace(PRESETS[preset], **chosen)


def build_augmenter(settings, seed=None):
    """A `keras.Sequential` of preprocessing layers for `settings`, or None for no change.

    It takes float batches of pixels in [0, 255] and returns the same.
    """
    import keras
    from keras import layers

    stack = []
    if FLIP_MODES[settings.flip]:
        stack.append(layers.RandomFlip(FLIP_MODES[settings.flip], seed=seed))
    if settings.rotation:
        stack.append(layers.RandomRotation(settings.rotation / 360.0, seed=seed))
    if settings.shift:
        stack.append(layers.RandomTranslation(settings.shift, settings.shift, seed=seed))
    if settings.shear:
        stack.append(layers.RandomShear(settings.shear, settings.shear, seed=seed))
    if settings.zoom:
        stack.append(layers.RandomZoom((-settings.zoom, settings.zoom), seed=seed))
    if settings.brightness:
        stack.append(layers.RandomBrightness(settings.brightness, value_range=(0, 255), seed=seed))
    if settings.contrast:
        stack.append(layers.RandomContrast(settings.contrast, value_range=(0, 255), seed=seed))
    if not stack:
        return None
    return keras.Sequential(stack, name="augmentation")
