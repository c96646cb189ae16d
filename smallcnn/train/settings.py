"""Every option of the training commands, declared once.

Each field of `Settings` carries its help text, its choices (from the registries)
and the commands that take it; the command line is derived from these declarations
(`smallcnn.cli`), and so is the default that `--help` shows for each command. A
setting resolves as: the value given, else the command's default (`COMMAND_DEFAULTS`),
else the base's own (image size, weights), else the field's default.
"""

import dataclasses
import importlib.util
import os
from typing import Optional

from smallcnn.data import dataset
from smallcnn.data.augment import (
    DEFAULT_PRESET,
    FLIP_MODES,
    LIMITS,
    PRESETS,
    resolve_augmentation,
)
from smallcnn.data.table import TABLE_DEFAULTS, TABLE_HELP
from smallcnn.errors import UsageError
from smallcnn.model.bases import BASES, DEFAULT_BASE, get_base
from smallcnn.model.head import LR_SCHEDULES, OPTIMIZERS, check_optimizer
from smallcnn.runtime.devices import (
    DEVICES_HELP,
    PRECISION_HELP,
    PRECISIONS,
    check_devices,
)
from smallcnn.runtime.engine import CHOICES as ENGINES
from smallcnn.runtime.ranges import Range, from_environment
from smallcnn.train.taps import CHOICES as TAPS

COMMANDS = ("extract", "train", "finetune")
CLASS_WEIGHTS = ("none", "balanced")

COMMAND_DEFAULTS = {
    "extract": dict(epochs=100, learning_rate=1e-3, patience=10, augment="none", heads=5,
                    lr_schedule="constant"),
    "train": dict(epochs=50, patience=8, augment=DEFAULT_PRESET, lr_schedule="constant"),
    # Finetune's recipe (bench/finetune_recipe.py, chosen on food101-10's val: the lowest
    # val_loss at no lower val accuracy): extract's heads first (head_epochs,
    # head_learning_rate and HEAD_RECIPE are extract's), then the top 6 blocks (EfficientNet-
    # B0: from block6a), warmup and cosine decay, lower blocks at lower rates (rate_decay),
    # RandAugment-style views.
    "finetune": dict(epochs=15, learning_rate=1e-4, patience=5, augment="randaugment",
                     head_epochs=100, head_learning_rate=1e-3, lr_schedule="cosine",
                     unfreeze_blocks=6),
}
# What finetune's head (trained as extract trains its own, on the base's cached features)
# takes from extract's defaults besides its epochs and learning rate.
HEAD_RECIPE = {name: COMMAND_DEFAULTS["extract"][name]
               for name in ("heads", "patience", "lr_schedule")}
# A frozen base leaves a linear head to train: a high rate reaches the same accuracy in a
# third of the epochs (ants-bees: 93.46% either way, best epoch 10 against 30 at 1e-3);
# every layer training needs the usual 1e-3.
FROZEN_LEARNING_RATE, FULL_LEARNING_RATE = 1e-2, 1e-3

# The ranges of the numeric settings. Their tops are far beyond any sensible choice, and
# below the sizes that overflow what the values become (a batch of 10^19 images is past
# int64; 2^32 is past what NumPy's seeding takes).
EPOCHS = Range(1, 100_000)
BATCH_SIZE = Range(1, 8192)
IMAGE_SIZE = Range(min(spec.min_size for spec in BASES.values()), 1024)  # and the base's own
LEARNING_RATE = Range(0, 10_000, above=True)
FRACTION = Range(0, 1, below=True)  # dropout, momentum
SEED = Range(0, 2**32 - 1)
HEADS = Range(1, 32)
AUGMENTED_VIEWS = Range(0, 100)
HIDDEN = Range(0, 16384)
# Seconds between two saves of the checkpoint (saving a classifier takes about a second);
# the environment variable sets another (the tests use a few), up to a day. Declared here,
# not with the checkpoint (which imports Keras), so that a command checks it as it starts.
CHECKPOINT_SECONDS = 30.0
CHECKPOINT_VARIABLE = "SMALLCNN_CHECKPOINT_SECONDS"
CHECKPOINT_INTERVAL = Range(0, 24 * 3600)


def checkpoint_seconds():
    """`$SMALLCNN_CHECKPOINT_SECONDS`, else `CHECKPOINT_SECONDS`."""
    return from_environment(CHECKPOINT_VARIABLE, CHECKPOINT_SECONDS, CHECKPOINT_INTERVAL)


def option(default, help, type, commands=COMMANDS, choices=None, flag=None, allowed=None):
    """A setting's declaration: its default, help, type, the commands that take it,
    its choices, for a switch its flag (e.g. '--freeze/--no-freeze'), and for a number
    the `Range` it must be in."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, type=type, commands=commands, choices=choices, flag=flag, allowed=allowed))


_AUGMENT_HELP = "(overrides the --augment preset)"
_AUGMENT = {name: Range(0, top) for name, top in LIMITS.items()}
AUGMENTATION_OPTIONS = ("rotation", "shift", "shear", "zoom", "flip", "brightness", "contrast")


@dataclasses.dataclass
class Settings:
    """Everything a training command can be told. None means: the command's default."""

    freeze: Optional[bool] = option(None, "Keep the base frozen and train the head only.", bool,
                                    ("train",), flag="--freeze/--no-freeze")
    unfreeze: Optional[int] = option(None, "Top base layers with weights to unfreeze "
                                     "(BatchNorm excluded), instead of --unfreeze-blocks.",
                                     int, ("finetune",), allowed=Range(1))
    unfreeze_blocks: Optional[int] = option(
        None, "Unfreeze the top N blocks of the base, each whole (the blocks of its "
        "registry entry; BatchNorm excluded).", int, ("finetune",), allowed=Range(1))
    head_epochs: Optional[int] = option(None, "Epochs for the head on the frozen base's "
                                        "cached features, trained as extract trains its "
                                        "heads (without --from).", int, ("finetune",),
                                        allowed=Range(0, EPOCHS.high))
    head_learning_rate: Optional[float] = option(None, "Learning rate for that head phase.",
                                                 float, ("finetune",), allowed=LEARNING_RATE)
    rate_decay: float = option(0.5, "Learning-rate factor of each unfrozen block below the "
                               "top one (the block below the top trains at this times the "
                               "rate, the next at its square...; 1: one rate for all).", float,
                               ("finetune",), allowed=Range(0, 1, above=True))
    warmup_epochs: float = option(1.0, "Epochs over which fine-tuning's learning rate rises "
                                  "linearly from 0 (with a constant or cosine "
                                  "--lr-schedule).", float,
                                  ("finetune",), allowed=Range(0, EPOCHS.high))
    label_smoothing: float = option(0.0, "Label smoothing of fine-tuning's loss from cached "
                                    "activations (val_loss stays the plain cross-entropy).",
                                    float, ("finetune",),
                                    allowed=Range(0, 1, below=True))
    base: Optional[str] = option(None, "Conv base.", str, choices=tuple(BASES))
    weights: Optional[str] = option(None, "imagenet, none, or a .weights.h5 file of the base.",
                                    str)
    image_size: Optional[int] = option(None, "Image side in pixels.", int, allowed=IMAGE_SIZE)
    batch_size: int = option(32, "Images per batch.", int, allowed=BATCH_SIZE)
    epochs: Optional[int] = option(None, "Most epochs to train (early stopping may end sooner).",
                                   int, allowed=EPOCHS)
    learning_rate: Optional[float] = option(None, "Learning rate.", float,
                                            allowed=LEARNING_RATE)
    optimizer: str = option("adam", "Optimizer.", str, choices=OPTIMIZERS)
    momentum: float = option(0.9, "Momentum for sgd.", float, allowed=FRACTION)
    nesterov: bool = option(False, "Nesterov momentum for sgd.", bool,
                            flag="--nesterov/--no-nesterov")
    lr_schedule: Optional[str] = option(None, "Learning-rate schedule.", str,
                                        choices=LR_SCHEDULES)
    dropout: float = option(0.5, "Dropout before the last dense layer.", float,
                            allowed=FRACTION)
    hidden: int = option(0, "Units of a hidden dense layer in the head (0: none).", int,
                         allowed=HIDDEN)
    patience: Optional[int] = option(None, "Epochs without a better val_loss before stopping.",
                                     int, allowed=Range(0, EPOCHS.high))
    seed: int = option(dataset.SEED, "Random seed (split, shuffling, augmentation, init).", int,
                       allowed=SEED)
    val_split: float = option(dataset.VAL_SPLIT, "Fraction of each class held out for validation "
                              "when DATA has no validation folder.", float,
                              allowed=Range(0, 1, above=True, below=True))
    labels: Optional[str] = option(None, TABLE_HELP["labels"], str)
    images: Optional[str] = option(None, TABLE_HELP["images"], str)
    path_column: Optional[str] = option(None, TABLE_HELP["path_column"], str)
    label_column: Optional[str] = option(None, TABLE_HELP["label_column"], str)
    split_column: Optional[str] = option(None, TABLE_HELP["split_column"], str)
    augment: Optional[str] = option(None, "Augmentation preset.", str, choices=tuple(PRESETS))
    rotation: Optional[float] = option(None, f"Random rotation range in degrees {_AUGMENT_HELP}.",
                                       float, allowed=_AUGMENT["rotation"])
    shift: Optional[float] = option(None, f"Random shift, fraction of width and height "
                                    f"{_AUGMENT_HELP}.", float, allowed=_AUGMENT["shift"])
    shear: Optional[float] = option(None, f"Random shear factor {_AUGMENT_HELP}.", float,
                                    allowed=_AUGMENT["shear"])
    zoom: Optional[float] = option(None, f"Random zoom: scale in [1-zoom, 1+zoom] "
                                   f"{_AUGMENT_HELP}.", float, allowed=_AUGMENT["zoom"])
    flip: Optional[str] = option(None, f"Random flips {_AUGMENT_HELP}.", str,
                                 choices=tuple(FLIP_MODES))
    brightness: Optional[float] = option(None, f"Random brightness change, fraction of the range "
                                         f"{_AUGMENT_HELP}.", float, allowed=_AUGMENT["brightness"])
    contrast: Optional[float] = option(None, f"Random contrast change factor {_AUGMENT_HELP}.",
                                       float, allowed=_AUGMENT["contrast"])
    engine: str = option("auto", "Engine for the frozen base's forward pass (auto: TensorFlow "
                         "on GPUs or several devices, else OpenVINO where it runs, in bfloat16 "
                         "on CPUs with BF16, else LiteRT; tf is tensorflow; $SMALLCNN_ENGINE "
                         "sets it when this is auto).", str, choices=ENGINES)
    devices: str = option("auto", f"Devices to run on: {DEVICES_HELP}", str)
    precision: str = option("auto", PRECISION_HELP, str, choices=PRECISIONS)
    class_weight: str = option("none", "balanced: weight each class by the inverse of its "
                               "frequency.", str, choices=CLASS_WEIGHTS)
    tensorboard: bool = option(False, "Also write TensorBoard logs to RUN/tensorboard/.", bool,
                               flag="--tensorboard")
    views: int = option(0, "Also train on the features of this many augmented copies of each "
                        "training image (computed once, cached; needs an --augment preset).", int,
                        ("extract",), allowed=AUGMENTED_VIEWS)
    heads: Optional[int] = option(None, "Train this many heads from different seeds, each "
                                  "early-stopped on its own, and save them merged into one "
                                  "(their mean logits).", int, ("extract",), allowed=HEADS)
    taps: str = option("auto", "Whether the heads also read the pooled features of the "
                       "base's intermediate blocks (auto: where they gain on val).", str,
                       ("extract",), choices=TAPS)
    unlabeled: Optional[str] = option(
        None, "Also learn from these unlabelled images (a folder, searched recursively, or a "
        "list file of paths, one a line): the heads' confident guesses on them join the "
        "training images for a few rounds (self-training), kept only if val accuracy gains.",
        str, ("extract",))

    def resolve(self, command, spec=None):
        """A checked copy with every None replaced by the command's or the base's default."""
        values = dataclasses.asdict(self)
        if command == "extract" and values["views"] and values["augment"] is None:
            values["augment"] = DEFAULT_PRESET  # augmented views need an augmentation
        for name, value in COMMAND_DEFAULTS[command].items():
            if name == "unfreeze_blocks" and values["unfreeze"] is not None:
                continue  # --unfreeze N layers instead
            if values[name] is None:
                values[name] = value
        values["base"] = values["base"] or DEFAULT_BASE
        for name in ("labels", "images", "unlabeled"):  # recorded: found from any folder later
            if values[name]:
                values[name] = os.path.abspath(os.path.expanduser(values[name]))
        spec = spec or get_base(values["base"])
        if values["image_size"] is None:
            values["image_size"] = spec.default_size
        if values["freeze"] is None:
            # A random base (--weights none, or a base without pretrained weights) has
            # nothing to keep: every layer trains.
            weights = values["weights"] or spec.default_weights
            values["freeze"] = str(weights).lower() != "none"
        if values["learning_rate"] is None:
            values["learning_rate"] = FROZEN_LEARNING_RATE if values["freeze"] else FULL_LEARNING_RATE
        resolved = Settings(**values)
        resolved.check()
        return resolved

    def check(self):
        """Refuses any value out of range; called before any image is decoded."""
        for field in dataclasses.fields(self):
            value, declared = getattr(self, field.name), field.metadata
            if value is None:
                continue
            if declared["allowed"] is not None:
                declared["allowed"].check(_flag(field.name), value)
            if declared["choices"] and value not in declared["choices"]:
                raise UsageError(f"Unknown {_flag(field.name)} {value!r}. "
                                 f"Choose one of: {', '.join(declared['choices'])}.")
        for rate in (self.learning_rate, self.head_learning_rate):
            if rate is not None:
                check_optimizer(self.optimizer, rate, self.lr_schedule)
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package: "
                             "pip install tensorboard (or pip install 'smallcnn[tensorboard]').")
        if self.augment is not None:
            self.augmentation()
        check_devices(self.devices)

    def augmentation(self):
        return resolve_augmentation(
            self.augment, **{name: getattr(self, name) for name in AUGMENTATION_OPTIONS})


def _declared(name):
    return next(f.metadata for f in dataclasses.fields(Settings) if f.name == name)


def _flag(name):
    return f"--{name.replace('_', '-')}"


def allowed(name):
    """The `Range` of the numeric setting `name`; None for another name."""
    field = next((f for f in dataclasses.fields(Settings) if f.name == name), None)
    return field.metadata["allowed"] if field is not None else None


def options(command):
    """[(name, declaration)] of the settings that `command` takes, in declaration order."""
    return [(f.name, {**f.metadata, "default": f.default}) for f in dataclasses.fields(Settings)
            if command in f.metadata["commands"]]


def default_text(command, name):
    """What `--help` says the default of an option is for `command`: the value the code
    uses with the default base, and how it depends on the base or on other options."""
    resolved = Settings().resolve(command)
    value = getattr(resolved, name)
    spec = get_base(DEFAULT_BASE)
    if name in TABLE_DEFAULTS:
        return TABLE_DEFAULTS[name]
    if name == "image_size":
        return f"the base's: {value} for {spec.name}"
    if name == "weights":
        return f"{spec.default_weights}; none for a base without pretrained weights"
    if name == "freeze":
        return "--freeze with pretrained weights, --no-freeze with random ones"
    if name == "unfreeze":
        return f"{value}; --unfreeze-blocks' blocks are unfrozen"
    if name == "learning_rate" and command == "train":
        return (f"{_number(FROZEN_LEARNING_RATE)} with a frozen base, "
                f"{_number(FULL_LEARNING_RATE)} when every layer trains")
    if name == "augment" and command == "extract":
        return f"{value}; {DEFAULT_PRESET} with --views"
    if value is None and name in AUGMENTATION_OPTIONS:
        return f"the preset's: {getattr(resolved.augmentation(), name)}"
    if isinstance(value, bool):
        flag = _declared(name)["flag"].split("/")
        return flag[0] if value else (flag[1] if len(flag) > 1 else "off")
    return _number(value) if isinstance(value, float) else str(value)


def _number(value):
    """0.001 as 1e-3, 0.5 as 0.5: how people write learning rates."""
    if value and abs(value) <= 0.01:
        mantissa, exponent = f"{value:e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return repr(value)
