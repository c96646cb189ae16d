"""Building, compiling and (un)freezing the classifier: base + pooling + dense head."""

import re

import keras
from keras import layers

from smallcnn.errors import ModelError, UsageError
from smallcnn.model.head import check_optimizer
from smallcnn.model.layers import preprocessing_layer
from smallcnn.model.taps import HeadInput, pooling, tapped

HEAD_NAME = "head"


def build_head(feature_width, num_classes, dropout=0.5, hidden=0):
    """The dense classifier on pooled features: [Dense(hidden, relu)], Dropout, softmax."""
    if not 0 <= dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1). Received: {dropout}")
    stack = [keras.Input((feature_width,), name="features")]
    if hidden:
        stack.append(layers.Dense(hidden, activation="relu", name="head_hidden"))
    stack.append(layers.Dropout(dropout, name="head_dropout"))
    stack.append(layers.Dense(num_classes, activation="softmax", name="predictions"))
    return keras.Sequential(stack, name=HEAD_NAME)


def build_classifier(spec, base, head, image_size, taps=False):
    """Raw RGB pixels in [0, 255] -> preprocessing -> base -> pooling -> head; with
    `taps`, the pooling of the base's intermediate taps too (`smallcnn.model.taps`).

    The base is called with `training=False`, so its BatchNormalization layers stay in
    inference mode even when some of its layers are unfrozen for fine-tuning.
    """
    head_input = HeadInput.of(spec, taps)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = preprocessing_layer(spec.preprocessing)(inputs)
    x = (tapped(spec, base) if head_input.taps else base)(x, training=False)
    if isinstance(x, (list, tuple)) and not head_input.taps:  # a tapped base, taps unused
        x = x[0]
    features = pooling(head_input, normalise=True)(x)
    outputs = head(features)
    return keras.Model(inputs, outputs, name=f"smallcnn_{spec.name}")


def feature_extractor(spec, base, image_size):
    """Raw pixels -> pooled base features (what `extract` caches): the last layer's, then
    each intermediate tap's, raw (`smallcnn.model.taps`)."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = preprocessing_layer(spec.preprocessing)(inputs)
    x = tapped(spec, base)(x, training=False)
    features = pooling(HeadInput.of(spec), normalise=False)(x)
    return keras.Model(inputs, features, name=f"{spec.name}_features")


def find_base(model, base_layer):
    try:
        return model.get_layer(base_layer)
    except ValueError:
        raise ModelError(
            f"The model has no base layer named {base_layer!r}; it was not made by smallcnn."
        ) from None


def make_optimizer(name, learning_rate, momentum=0.9, nesterov=False, schedule="constant",
                   steps_per_epoch=1, epochs=1, warmup_steps=0):
    """A Keras optimizer; `exponential` and `cosine` schedules decay per step; with
    `warmup_steps`, a constant or cosine rate first rises linearly from 0."""
    check_optimizer(name, learning_rate, schedule)
    rate = learning_rate
    if warmup_steps and schedule in ("constant", "cosine"):  # alpha 1: constant after it
        rate = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, steps_per_epoch * epochs - warmup_steps),
            alpha=1.0 if schedule == "constant" else 0.0, warmup_target=learning_rate,
            warmup_steps=warmup_steps)
    elif schedule == "exponential":  # a tenth of the rate after 20 epochs
        rate = keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps=max(1, steps_per_epoch), decay_rate=0.1 ** (1 / 20)
        )
    elif schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, steps_per_epoch * epochs)
        )
    if name == "adam":
        return keras.optimizers.Adam(rate)
    if name == "sgd":
        return keras.optimizers.SGD(rate, momentum=momentum, nesterov=nesterov)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(rate)
    return keras.optimizers.Adagrad(rate)


def compile_model(model, optimizer):
    """Compiles for integer labels."""
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def count_params(weights):
    return int(sum(int(w.numpy().size) for w in weights))


def unfreeze_candidates(base):
    """The base's layers that `--unfreeze` counts: those with weights, BatchNormalization
    excepted (its statistics and scales stay as pretrained)."""
    return [layer for layer in base.layers
            if layer.weights and not isinstance(layer, layers.BatchNormalization)]


def base_blocks(base, block_pattern):
    """The unfreeze candidates grouped into the base's blocks, bottom first.

    A layer's block is named by the first match of `block_pattern` (a registry entry's
    `BaseSpec.block_pattern`) in its name: the match's first group if it has one, else
    the whole match. Consecutive layers with the same block name form one block; a layer
    that does not match is a block of its own, as is every layer without a pattern.
    """
    blocks, previous = [], None
    for layer in unfreeze_candidates(base):
        found = re.search(block_pattern, layer.name) if block_pattern else None
        name = (found.group(1) if found.re.groups else found.group(0)) if found else None
        if name is None or name != previous:
            blocks.append([])
        blocks[-1].append(layer)
        previous = name
    return blocks


def layers_to_unfreeze(base, count, blocks=None, block_pattern=None):
    """The top `count` unfreeze candidates, or, with `blocks`, every candidate of the top
    `blocks` blocks (see `base_blocks`); a count the base cannot take is refused."""
    if blocks is not None:
        grouped = base_blocks(base, block_pattern)
        if not 1 <= blocks <= len(grouped):
            raise UsageError(f"--unfreeze-blocks must be between 1 and {len(grouped)}, the "
                             f"blocks of the {base.name} base. Received: {blocks}")
        return [layer for block in grouped[-blocks:] for layer in block]
    if count < 1:
        raise UsageError(f"--unfreeze must be at least 1. Received: {count}")
    candidates = unfreeze_candidates(base)
    if count > len(candidates):
        raise UsageError(
            f"--unfreeze {count} is more than the {len(candidates)} layers with weights "
            f"in the {base.name} base; give at most {len(candidates)}."
        )
    return candidates[-count:]


def unfreeze_top(base, count, blocks=None, block_pattern=None):
    """Makes the layers `layers_to_unfreeze` chooses trainable, and only those.
    Returns their names, top first."""
    chosen = layers_to_unfreeze(base, count, blocks, block_pattern)
    base.trainable = True
    for layer in base.layers:
        layer.trainable = False
    for layer in chosen:
        layer.trainable = True
    return [layer.name for layer in reversed(chosen)]
