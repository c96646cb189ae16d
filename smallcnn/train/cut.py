"""Fine-tuning from activations cached at the cut: the frozen bottom of the base runs
once per image view on the inference engine; the unfrozen top and the head train in
TensorFlow from its outputs.

With `--unfreeze N` (or `--unfreeze-blocks N`) only the top of the base trains. The cut
is the highest layer below the first unfrozen one whose output is the only tensor alive
there: inside a residual block the skip connection is alive too, so the cut falls at a
block boundary, and the frozen layers between it and the first unfrozen layer run,
frozen, in the top. The bottom (the base's input to the cut) runs on the engine once per
augmented view of each training image (one drawn per epoch, a fresh one each epoch up to
`MAX_VIEWS` and as many as the budget holds, made by
`FeatureSource.augmented_views` as extract's `--views` are) and once per evaluation
split, unaugmented; its outputs are cached as float16. The top (the cut to the base's
output) with pooling and the head is `CutTraining.network`: it shares its layers with the
whole model, which is what the run saves.

The activations held must fit `budget_bytes()` (`BUDGET_GB`, or `$SMALLCNN_CUT_BUDGET_GB`);
over it, or where the cut would be the base's input, or where training runs on several
devices or in mixed precision, fine-tuning runs end to end as before, said in one line.
"""

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from smallcnn.runtime.ranges import Range, from_environment

BUDGET_GB = 2.0  # GiB of cut activations held in memory (every view and split together)
BUDGET_VARIABLE = "SMALLCNN_CUT_BUDGET_GB"
BUDGET = Range(0, 2**20)
# Augmented views of each training image at most (one is drawn per epoch; fewer where the
# budget holds fewer). food101-10, EfficientNet-B0, finetune's defaults: with 4 views the
# top met each view about four times in 15 epochs and val peaked at epoch 2 (80.0%); with
# 15, at epoch 8 (83.6%, test 84.4% against extract's 82.8%).
MAX_VIEWS = 16
ACTIVATIONS = np.float16
BATCH = 32  # images run through the bottom at a time
# The largest relative error (RMS) float16 may add to the activations: an untrained base's
# can be too small for it (~1e-10, below float16's smallest number: all would be 0).
FLOAT16_ERROR = 1e-2


def budget_bytes():
    """`$SMALLCNN_CUT_BUDGET_GB`, else `BUDGET_GB`, in bytes."""
    return from_environment(BUDGET_VARIABLE, BUDGET_GB, BUDGET) * 2**30


def single_tensor_points(base):
    """Indices in `base.layers` (graph order) of the layers whose output is the only
    tensor alive at that point of the network: every earlier layer's output is consumed
    by that layer at the latest. The input layer is always one. Operations that are not
    layers count as users (ConvNeXt's residual sums `x + f(x)`), never as points."""
    operations = base._operations  # graph order; `base.layers` leaves out plain operations
    index = {id(operation): i for i, operation in enumerate(operations)}
    last_use = list(range(len(operations)))
    for i, operation in enumerate(operations):
        for node in operation._inbound_nodes:
            for tensor in node.input_tensors:
                j = index.get(id(tensor._keras_history.operation))
                if j is not None:
                    last_use[j] = max(last_use[j], i)
    position = {id(layer): i for i, layer in enumerate(base.layers)}
    points, alive_until = [], -1
    for i, operation in enumerate(operations):
        if alive_until <= i and id(operation) in position:
            points.append(position[id(operation)])
        alive_until = max(alive_until, last_use[i])
    return points


def find_cut(base, unfrozen):
    """The index in `base.layers` of the cut below the `unfrozen` layers: the highest
    single-tensor point (`single_tensor_points`) below the first of them."""
    names = {layer.name for layer in unfrozen}
    first = min(i for i, layer in enumerate(base.layers) if layer.name in names)
    return max(i for i in single_tensor_points(base) if i < first)


def split_base(base, cut):
    """`(bottom, top)`: Keras models from the base's input to the output of layer `cut`,
    and from there to the base's output, sharing the base's layers and weights."""
    import keras

    tensor = base.layers[cut].output
    bottom = keras.Model(base.input, tensor, name=f"{base.name}_bottom")
    top = keras.Model(tensor, base.output, name=f"{base.name}_top")
    return bottom, top


def layout(session, base, phases):
    """`(cut, views, bytes, reason)` of fine-tuning `base` for `phases`: the cut's index,
    the views of each training image, the bytes their activations and the evaluation
    splits' take, and why they cannot be used (None where they can, as far as is known
    before running the bottom)."""
    from smallcnn.model.networks import layers_to_unfreeze

    plan = session.plan
    s, placement = plan.settings, plan.placement
    unfrozen = layers_to_unfreeze(base, s.unfreeze, s.unfreeze_blocks, plan.spec.block_pattern)
    cut = find_cut(base, unfrozen)
    trained = [p.epochs for p in phases if not p.features]  # the head trains on features
    per_image = int(np.prod(base.layers[cut].output.shape[1:])) * np.dtype(ACTIVATIONS).itemsize
    evaluated = sum(len(plan.dataset.splits[name]) for name in plan.eval_splits()) * per_image
    per_view = len(plan.dataset.train) * per_image
    views = 1
    if _augmenting(s):  # a fresh view each epoch, as many as the budget holds
        fit = int((budget_bytes() - evaluated) // per_view) if per_view else MAX_VIEWS
        views = max(1, min(MAX_VIEWS, max(trained + [1]), fit))
    needed = evaluated + views * per_view
    reason = None
    if placement.replicas > 1 or placement.multi_worker or placement.precision != "float32":
        reason = "it runs on several devices or in mixed precision"
    elif len(base.outputs) > 1:
        reason = "its head reads the base's intermediate taps, below any cut"
    elif cut == 0:
        reason = (f"the unfrozen layers are not a top block of the network: below "
                  f"{unfrozen[0].name!r} no single tensor but the base's input holds it all")
    elif needed > budget_bytes():
        reason = (f"its activations at {base.layers[cut].name!r} ({needed / 2**20:,.1f} MB for "
                  f"{views} view(s)) exceed the budget of {budget_bytes() / 2**30:g} GB "
                  f"(${BUDGET_VARIABLE})")
    return cut, views, needed, reason


def plan_cut(session, model, base, phases):
    """A `CutTraining` for `phases` of `model`, or None, said in one line, when they train
    end to end instead (the reason named)."""
    cut, views, needed, reason = layout(session, base, phases)
    if reason is not None:
        session.reporter.note(f"Fine-tuning end to end: {reason}.")
        return None
    training = CutTraining(session, model, base, cut, views)
    training.split("val")  # first: whether float16 holds them
    error = training.exact_engine().relative_error() if training.opened() else 0.0
    if error > FLOAT16_ERROR:
        session.reporter.note(f"Fine-tuning end to end: float16 cannot hold the activations at "
                              f"{training.cut_name!r} (relative error {error:.2g}; they are "
                              f"too small).")
        return None
    session.reporter.note(
        f"Fine-tuning from activations at {training.cut_name!r} "
        f"{tuple(base.layers[cut].output.shape[1:])}, cached as float16: "
        f"the layers below it run once per image view ({views} view(s), "
        f"{needed / 2**20:,.0f} MB).")
    return training


class CutTraining:
    """The base split at its cut: the bottom's activations (computed once, cached) and
    `network`, the top with pooling and the head, trained from them."""

    def __init__(self, session, model, base, cut, views):
        import keras

        from smallcnn.model.networks import HEAD_NAME

        self.session, self.model, self.views_wanted = session, model, views
        self.cut_name = base.layers[cut].name
        self.bottom, self.top = split_base(base, cut)
        inputs = keras.Input(self.top.input_shape[1:], name="activations")
        x = self.top(inputs, training=False)  # BatchNormalization in inference mode, as before
        outputs = model.get_layer(HEAD_NAME)(model.get_layer("pool")(x))
        self.network = keras.Model(inputs, outputs, name=f"{model.name}_top")
        self._engine = self._exact = None
        self._views = None
        self._splits = {}

    def views(self):
        """`(views, labels)`: the bottom's float16 outputs on each augmented view of the
        training images, and their labels."""
        if self._views is None:
            if not _augmenting(self.session.plan.settings):  # one view: the images as they are
                values, labels = self.split("train")
                self._views = [values], labels
                return self._views
            source = self.session.source
            views = source.augmented_views(self.views_wanted, engine=self.engine(),
                                           rekey=self._rekey)
            self._views = views, np.asarray(source.decoded("train").labels, dtype=np.int32)
        return self._views

    def split(self, name):
        """`(activations, labels)` of a split, unaugmented (cached), from the bottom in
        float32 (`exact_engine`)."""
        from smallcnn.train import feature_store

        if name not in self._splits:
            source, reporter = self.session.source, self.session.reporter
            key = self._rekey(source.key(name), precision="float32")
            cached = feature_store.load(key, reporter.warning)
            if cached is not None:
                values, labels = cached[0], cached[1]
                reporter.note(f"{name}: activations at {self.cut_name!r} from the cache")
            else:
                decoded = source.decoded(name)
                engine = self.exact_engine()
                values, labels = self._run_bottom(decoded.images, name, engine), decoded.labels
                if engine.relative_error() <= FLOAT16_ERROR:
                    feature_store.store(key, values, labels, [], reporter.warning)
            self._splits[name] = values, np.asarray(labels, dtype=np.int32)
        return self._splits[name]

    def _run_bottom(self, images, name, engine):
        values = []
        with self.session.reporter.progress(f"Running the base to {self.cut_name!r} on {name} "
                                            f"({engine.name})", len(images)) as advance:
            for start in range(0, len(images), BATCH):
                values.append(engine(images[start : start + BATCH]))
                advance(start + len(values[-1]))
        return np.concatenate(values)

    def _rekey(self, key, **extra):
        """The cache key of the activations at the cut of what `key` names the features of
        (`extra`: how they differ from those, such as their precision)."""
        from smallcnn.runtime import cache

        return None if key is None else cache.key("features", of=key, cut=self.cut_name,
                                                   code=_code(), dtype=np.dtype(ACTIVATIONS).name,
                                                   **extra)

    def opened(self):
        """Whether the evaluation splits' engine was opened (not all came from the cache)."""
        return self._exact is not None

    def engine(self):
        """The bottom on the run's engine (its LiteRT conversion cached in `engines`), in
        the engine's best precision (bf16 on AMX), returning float16: for the training
        images' augmented views."""
        if self._engine is None:
            if self._exact is not None and (self._fast_precision() == "float32" or
                                            self._exact.name != "openvino"):
                # float32 is the fastest, or OpenVINO could not run the bottom (auto fell
                # back to LiteRT): one bottom serves both
                self._engine = self._exact
            else:
                with self.session.timings("convert"):
                    self._engine = _Float16(self._open_engine())
        return self._engine

    def _fast_precision(self):
        """The precision `engine` opens the bottom in, known without opening it."""
        from smallcnn.runtime.engine import expected_engine

        plan = self.session.plan
        return expected_engine(plan.settings.engine, plan.placement)[1]

    def exact_engine(self):
        """The bottom in float32, returning float16: for the evaluation splits, so that
        early stopping and the recorded accuracies are those of the saved model, which
        predicts in float32 (bf16 moved food101-10's test accuracy by 1.2 points)."""
        if self._exact is None:
            if self._engine is not None and self._engine.precision != "bfloat16":
                self._exact = self._engine
            else:
                with self.session.timings("convert"):
                    self._exact = _Float16(self._open_engine("float32"))
        return self._exact

    def _extractor(self):
        import keras

        from smallcnn.model.layers import preprocessing_layer

        spec, size = self.session.plan.spec, self.session.plan.settings.image_size
        inputs = keras.Input((size, size, 3), name="image")
        x = preprocessing_layer(spec.preprocessing)(inputs)
        return keras.Model(inputs, self.bottom(x, training=False), name=f"{spec.name}_bottom")

    def _open_engine(self, precision=None):
        from smallcnn.errors import UsageError, described
        from smallcnn.runtime import cache
        from smallcnn.runtime.engine import TensorFlowEngine, chosen_engine, open_engine
        from smallcnn.runtime.litert import convert_to_litert

        plan, reporter = self.session.plan, self.session.reporter
        engine = chosen_engine(plan.settings.engine, plan.placement)
        if engine == "tensorflow":
            return TensorFlowEngine(self._extractor())

        def opened(path):
            return open_engine(path, engine, reporter, plan.placement, precision)

        try:
            if plan.weights == "none":  # the run's own weights: a conversion of its own
                return _uncached(self._extractor(), opened, reporter.warning)
            name = self._engine_name()
            found = cache.load("engines", name, opened, warn=reporter.warning, checksum=True)
            if found is None:
                reporter.note(f"Converting the base up to {self.cut_name!r} for the engine "
                              f"(once): {name}")
                model = self._extractor()
                stored = cache.store("engines", name, lambda temp: convert_to_litert(
                    model, Path(temp), warn=reporter.warning), warn=reporter.warning,
                    checksum=True)
                found = opened(stored) if stored else _uncached(model, opened,
                                                                reporter.warning)
            return found
        except UsageError:  # a forced engine that cannot run says so itself
            raise
        except Exception as error:  # no LiteRT wheel here, or an op it lacks
            if engine == "litert":
                raise UsageError(f"--engine litert: LiteRT cannot run the base here "
                                 f"({described(error)}); use --engine auto or --engine tf.") \
                    from error
            reporter.warning(f"LiteRT is not usable here ({described(error)}); running the "
                             "base up to the cut in TensorFlow.")
            return TensorFlowEngine(self._extractor())

    def _engine_name(self):
        """The `engines` entry: keyed as the base's conversion is, and by the cut."""
        from smallcnn.runtime import cache

        plan = self.session.plan
        spec, size = plan.spec, plan.settings.image_size
        key = cache.key("engines", base=spec.name, weights=cache.weights_identity(plan.weights),
                        size=size, preprocessing=spec.preprocessing, cut=self.cut_name,
                        code=_code())
        return f"{spec.name}-{size}-to-{self.cut_name}-{key[:32]}.tflite"

    def describe(self):
        """The cut's layer, its views, and the engine that ran the bottom (None: every
        activation came from the cache)."""
        engine = self._engine._engine if self._engine is not None else None
        exact = self._exact._engine if self._exact is not None else None
        return {"layer": self.cut_name, "views": self.views_wanted,
                "engine": getattr(engine, "name", None),
                "engine_precision": getattr(engine, "precision", None),
                "evaluation_engine": getattr(exact, "name", None),
                "evaluation_precision": getattr(exact, "precision", None)}

    def evaluate(self, _model=None):
        """Loss and accuracy of the network (the whole model's) on each evaluation split's
        activations; `_model`, the whole model, shares its weights."""
        from smallcnn.model.networks import compile_model

        if getattr(self.network, "optimizer", None) is None or \
                self.network.loss != "sparse_categorical_crossentropy":  # trained smoothed
            compile_model(self.network, "adam")
        s = self.session
        splits = {name: self.split(name) for name in s.plan.eval_splits()}
        with s.timings("evaluate"):
            return {name: [float(v) for v in self.network.evaluate(
                        values, labels, batch_size=s.plan.settings.batch_size, verbose=0)]
                    for name, (values, labels) in splits.items()}


class _Float16:
    """An engine whose outputs are cast to the activations' dtype (float16), keeping
    count of the error that adds."""

    def __init__(self, engine):
        self._engine, self.name = engine, engine.name
        self.precision = getattr(engine, "precision", None)
        self._error = self._energy = 0.0

    def __call__(self, images):
        values = np.asarray(self._engine(images), dtype=np.float32)
        half = values.astype(ACTIVATIONS)
        self._error += float(np.square(half - values).sum())
        self._energy += float(np.square(values).sum())
        return half

    def relative_error(self):
        """The RMS error float16 added so far, relative to the values' RMS (inf for all 0)."""
        return float(np.sqrt(self._error / self._energy)) if self._energy else \
            (0.0 if not self._error else np.inf)


def _uncached(model, opened, warn):
    """The model converted in a temporary folder, `opened`, the folder removed."""
    from smallcnn.runtime.litert import convert_to_litert

    folder = Path(tempfile.mkdtemp(prefix="smallcnn-cut-"))
    try:
        convert_to_litert(model, folder / "model.tflite", warn=warn)
        return opened(folder / "model.tflite")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _augmenting(settings):
    """Whether the settings augment the training images (else one view is all there is)."""
    from smallcnn.data.augment import build_augmenter

    return build_augmenter(settings.augmentation(), seed=settings.seed) is not None


def _code():
    """This module's source digest: a change to how the cut is made makes new cache keys."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
