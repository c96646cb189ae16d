"""Intermediate taps: the pooled features of inner blocks, beside the last layer's.

A base's last layer describes objects; its inner blocks describe textures and parts,
which help on some fine-grained sets (leaf diseases) and not on others. Each registry
entry names a few taps (`BaseSpec.taps`: the end of its last two stages below the top);
pooling them costs nothing more than the forward pass the last layer needs.

The base's feature extractor (what `extract` caches and the engines run) puts out the
last layer's pooled features followed by each tap's, raw. A run's head reads either the
last layer's alone (`HeadInput(taps=False)`, what smallcnn always did) or every group,
each L2-normalised and scaled to `GROUP_NORM`; `extract` decides which on val
(`smallcnn.train.taps`) and records it, and the saved model computes the same in its
`pool` layer (standard Keras layers only: `pooling`), so predict, serve and export give
the same answers.
"""

import dataclasses

import numpy as np

from smallcnn.runtime.devices import POOL_LAYER

# The norm of each group of the head's input with taps: near the last layer's own (about
# 12 for EfficientNet-B0), so the head's learning rate and early stopping fit both inputs.
GROUP_NORM = 20.0
# As keras.layers.UnitNormalization divides: by the norm, or by this where it is smaller.
EPSILON = 1e-12


@dataclasses.dataclass(frozen=True)
class HeadInput:
    """What a head reads of the extractor's output: its groups' widths (the last layer's,
    then each tap's), and whether it reads the taps (each group normalised) or the last
    layer's features alone."""

    widths: tuple
    taps: bool = False

    @classmethod
    def of(cls, spec, taps=False):
        """The head input of a registry entry's extractor; `taps` only where it has some."""
        return cls((spec.feature_width, *(width for _, width in spec.taps)),
                   taps=bool(taps and spec.taps))

    @classmethod
    def from_dict(cls, recorded):
        """What a run recorded (`to_dict`); None for a run made before taps, whose base's
        conversion puts out its head's input as it is."""
        return cls(tuple(recorded["widths"]), bool(recorded["taps"])) if recorded else None

    def to_dict(self):
        return {"widths": list(self.widths), "taps": self.taps}

    @property
    def width(self):
        """The head's input width."""
        return sum(self.widths) if self.taps else self.widths[0]

    def __call__(self, values):
        """The head's input, from rows of the extractor's output."""
        values = np.asarray(values)
        if values.shape[-1] != sum(self.widths):
            raise ValueError(f"features of width {values.shape[-1]}, but the extractor's "
                             f"groups are {list(self.widths)} wide")
        if not self.taps:
            return values[..., : self.widths[0]]
        groups = np.split(values.astype(np.float32), np.cumsum(self.widths)[:-1], axis=-1)
        return np.concatenate([normalised(group) for group in groups], axis=-1)


def normalised(group):
    """A group of features scaled to the norm `GROUP_NORM` (keras' UnitNormalization,
    then a Rescaling)."""
    norm = np.sqrt(np.sum(np.square(group), axis=-1, keepdims=True))
    return group / np.maximum(norm, EPSILON) * np.float32(GROUP_NORM)


def layer_names(taps):
    """The layers of `taps` (`BaseSpec.taps`), their ":input" suffixes dropped."""
    return [name.partition(":")[0] for name, _ in taps]


def tap_tensors(base, taps):
    """The tensors of `taps` (`BaseSpec.taps`) in a built base: a layer's output, or with
    an ":input" suffix its input (ConvNeXt's stages end in an unnamed residual sum)."""
    return [base.get_layer(layer).input if name.endswith(":input") else
            base.get_layer(layer).output
            for layer, (name, _) in zip(layer_names(taps), taps)]


def tapped(spec, base):
    """The base with its taps as further outputs (the same layers, so the same weights);
    the base itself without taps, or when it is already tapped (a run's loaded model)."""
    import keras

    if not spec.taps or len(base.outputs) > 1:
        return base
    return keras.Model(base.inputs, [base.outputs[0], *tap_tensors(base, spec.taps)],
                       name=base.name)


def pooling(head_input, normalise):
    """The `pool` layer: global average pooling of the last layer's map; with taps, of
    every group's (a small model of standard layers, so model.keras loads in plain
    Keras), each group normalised when `normalise` (a head's input) or raw (the
    extractor's output)."""
    import keras
    from keras import layers

    if len(head_input.widths) == 1 or (normalise and not head_input.taps):
        return layers.GlobalAveragePooling2D(name=POOL_LAYER)
    maps = [keras.Input((None, None, width), name=f"group_{i}")
            for i, width in enumerate(head_input.widths)]
    pooled = [layers.GlobalAveragePooling2D(name=f"pool_{i}")(m) for i, m in enumerate(maps)]
    if normalise:
        pooled = [layers.Rescaling(GROUP_NORM, name=f"scale_{i}")(
            layers.UnitNormalization(name=f"normalise_{i}")(p)) for i, p in enumerate(pooled)]
    return keras.Model(maps, layers.Concatenate(name="groups")(pooled), name=POOL_LAYER)
