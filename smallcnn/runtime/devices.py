"""Where a training command runs: which devices, in which precision, under which
`tf.distribute` strategy.

`--devices auto` takes every GPU TensorFlow can use, else the CPU; `--devices N` takes N
GPUs (on a machine without one, it splits the CPU into N logical devices: a rehearsal of
a multi-GPU run, no faster); `--devices cpu` hides the GPUs. More than one device trains
under `tf.distribute.MirroredStrategy`; a `TF_CONFIG` that describes a cluster of
several tasks trains under `MultiWorkerMirroredStrategy` (see docs/distributed.md).

`--precision auto` is mixed_float16 on GPUs of compute capability 7.0 or more (Keras'
guidance: they have tensor cores), float32 elsewhere: on this project's reference CPU
(AMX-BF16) mixed_bfloat16 trained slower (bench/precision.py: 0.73x for MobileNetV2).

On a machine without an NVIDIA device node, nothing here imports TensorFlow unless a
choice needs it (`extract` on a CPU stays free of it).
"""

import dataclasses
import glob
import json
import os
from typing import Optional

from smallcnn.errors import UsageError
from smallcnn.runtime.ranges import Range

DEVICE_CHOICES = ("auto", "cpu", "all")  # or a number of devices
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
DEVICES_HELP = ("auto: every GPU, else the CPU; cpu; all: every GPU; N: N GPUs (without a "
                "GPU, N logical CPU devices, to rehearse a multi-GPU run).")
PRECISION_HELP = ("Compute precision (auto: mixed_float16 on GPUs of compute capability "
                  ">= 7.0, float32 elsewhere). The last layer and the saved model stay float32.")
# Keras' mixed-precision guide: float16 pays off from compute capability 7.0 (tensor cores).
MIXED_FLOAT16_CAPABILITY = (7, 0)
# The layer that gives the probabilities stays float32 (Keras' guidance for mixed precision).
OUTPUT_LAYER = "predictions"
# So does the pooling: with taps it normalises each group, and in float16 a sum of squares
# past 65504 overflows and a zero group gives 0 x inf (smallcnn.model.taps).
POOL_LAYER = "pool"


def check_devices(value):
    """Refuses a --devices value that is neither a choice nor a positive number."""
    if value in DEVICE_CHOICES:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise UsageError(f"Unknown --devices {value!r}. Choose auto, cpu, all, or a number "
                         "of devices (1 or more).")
    return str(number)


def has_gpu_driver():
    """Whether an NVIDIA driver shows a device (a file check: no TensorFlow import)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/proc/driver/nvidia/gpus/*"))


def cluster():
    """`(task_type, task_index, number of tasks)` from `TF_CONFIG`, or None when it
    describes no cluster of several tasks."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        tasks = sum(len(addresses) for name, addresses in config["cluster"].items()
                    if name in ("chief", "worker"))
        task = config["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        raise UsageError(f"TF_CONFIG is not a TensorFlow cluster description ({error!r}); "
                         'expected {"cluster": {"worker": ["host:port", ...]}, '
                         '"task": {"type": "worker", "index": 0}}.') from None
    if kind not in ("chief", "worker"):
        raise UsageError(f"TF_CONFIG's task is a {kind!r}: smallcnn runs on the chief and "
                         "worker tasks of a cluster (MultiWorkerMirroredStrategy has no "
                         "parameter servers or evaluators).")
    listed = len(config["cluster"].get(kind) or ())
    if tasks > 1 and index not in Range(0, listed - 1):
        raise UsageError(f"TF_CONFIG's task is {kind} {index}, but its cluster lists {listed} "
                         f"{kind} address(es), counted from 0.")
    return (kind, index, tasks) if tasks > 1 else None


@dataclasses.dataclass
class Placement:
    """The resolved devices, precision and strategy of one command."""

    devices: list  # TensorFlow device names, e.g. ['/gpu:0', '/gpu:1'], or ['/cpu:0']
    precision: str  # a Keras dtype policy name
    kind: str = "cpu"  # 'gpu' or 'cpu'
    workers: int = 1
    task: Optional[tuple] = None  # (type, index) in a cluster
    _strategy: object = dataclasses.field(default=None, repr=False)

    @property
    def replicas(self):
        return len(self.devices) * self.workers

    @property
    def multi_worker(self):
        return self.workers > 1

    @property
    def distributed(self):
        return self.replicas > 1

    @property
    def is_chief(self):
        """The task that writes the run folder: the chief, else worker 0."""
        return self.task is None or self.task[0] == "chief" or \
            (self.task == ("worker", 0) and not _has_chief())

    @property
    def worker_index(self):
        """This task's place among the workers: 0 for the chief."""
        if self.task is None or self.task[0] == "chief":
            return 0
        return self.task[1] + (1 if _has_chief() else 0)

    @property
    def strategy_name(self):
        if self.multi_worker:
            return "MultiWorkerMirroredStrategy"
        return "MirroredStrategy" if self.distributed else None

    def strategy(self):
        """The `tf.distribute` strategy (created once), or None on one device."""
        if self._strategy is None and self.distributed:
            import tensorflow as tf

            if self.multi_worker:
                self._strategy = tf.distribute.MultiWorkerMirroredStrategy()
            else:
                self._strategy = tf.distribute.MirroredStrategy(self.devices)
        return self._strategy

    def scope(self):
        """The strategy's scope, or a scope that does nothing."""
        import contextlib

        strategy = self.strategy()
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    def working_copy(self, model, distributed=True):
        """The model to train or run: `model` itself on one device in float32, else a
        copy in this precision (its output layer float32), made in the strategy's scope
        when `distributed` (mirrored variables)."""
        import contextlib

        distributed = distributed and self.distributed
        if self.precision == "float32" and not distributed:
            return model
        with self.scope() if distributed else contextlib.nullcontext():
            return with_precision(model, self.precision)

    def record(self):
        """What smallcnn.json records under "distribution"."""
        return {"strategy": self.strategy_name or "none", "workers": self.workers,
                "replicas": self.replicas, "devices": self.devices,
                "precision": self.precision}

    def describe(self):
        """One line for the console: 'on 2 GPUs (MirroredStrategy), mixed_float16'."""
        count = len(self.devices)
        what = (f"{count} {self.kind.upper()}s" if count > 1 and self.kind == "gpu" else
                f"{count} logical CPU devices" if count > 1 else self.kind.upper())
        if self.multi_worker:
            what = f"{self.workers} workers x {what}"
        strategy = f" ({self.strategy_name})" if self.strategy_name else ""
        return f"{what}{strategy}, {self.precision}"


def _has_chief():
    try:
        return bool(json.loads(os.environ["TF_CONFIG"])["cluster"].get("chief"))
    except (KeyError, ValueError, AttributeError):
        return False


def needs_tensorflow(devices="auto", use_cluster=True):
    """Whether resolving these --devices takes TensorFlow: not for the CPU of a machine
    without an NVIDIA driver, outside a cluster."""
    if use_cluster and cluster() is not None:
        return True
    return has_gpu_driver() if devices in ("auto", "cpu") else True


def place(devices="auto", precision="auto", note=None, use_cluster=True):
    """Resolves --devices and --precision on this machine (and its cluster, from
    TF_CONFIG); configures TensorFlow's visible and logical devices accordingly.

    Must run before TensorFlow first places an operation (it fixes the devices); a
    process whose devices are already fixed keeps them if they match.

    Args:
        note: called with one line for a choice the user should know about.
        use_cluster: whether the command runs on every task of a TF_CONFIG cluster
            (train and finetune do; extract runs on its machine alone).
    """
    devices = check_devices(devices)
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown --precision {precision!r}. Choose one of: "
                         f"{', '.join(PRECISIONS)}.")
    task = cluster()
    if task is not None and not use_cluster:
        if note is not None:
            note("TF_CONFIG describes a cluster, but this command runs on this machine alone.")
        task = None
    count = None if devices in DEVICE_CHOICES else int(devices)
    if not needs_tensorflow(devices, task is not None):
        return _noted(Placement(["/cpu:0"], "float32" if precision == "auto" else precision),
                      note)
    from smallcnn.runtime.quiet import import_tensorflow

    import_tensorflow()
    import tensorflow as tf

    if devices == "cpu":
        _hide_gpus()
    gpus = [] if devices == "cpu" else tf.config.list_physical_devices("GPU")
    if gpus:
        chosen = gpus if count is None else gpus[:count]
        if count is not None and count > len(gpus):
            raise UsageError(f"--devices {count}: this machine has {len(gpus)} GPU(s); "
                             f"give at most {len(gpus)}, or --devices all.")
        if len(chosen) < len(gpus):
            try:
                tf.config.set_visible_devices(chosen, "GPU")
            except RuntimeError:  # already placed: fine if it is what was asked
                if len(tf.config.list_logical_devices("GPU")) != len(chosen):
                    raise UsageError(f"--devices {devices}: TensorFlow has already placed "
                                     "its devices in this process.") from None
        for gpu in chosen:  # take memory as needed, as a shared GPU needs
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass
        names = [f"/gpu:{i}" for i in range(len(chosen))]
        if precision == "auto":
            precision = ("mixed_float16" if all(_capability(g) >= MIXED_FLOAT16_CAPABILITY
                                                for g in chosen) else "float32")
        placement = Placement(names, precision, "gpu")
    else:
        if devices == "all":
            raise UsageError("--devices all: TensorFlow finds no GPU on this machine; use "
                             "--devices auto (the CPU) or cpu.")
        count = count or 1
        if count > 1:
            _split_cpu(tf, count)
            if note is not None:
                note(f"No GPU: the CPU is split into {count} logical devices, trained as "
                     f"{count} replicas (a rehearsal of a {count}-GPU run, no faster).")
        placement = Placement([f"/cpu:{i}" for i in range(count)],
                              "float32" if precision == "auto" else precision)
    if task is not None:
        placement.workers, placement.task = task[2], task[:2]
        placement.strategy()  # before any other operation, as TensorFlow requires
    return _noted(placement, note)


def _noted(placement, note):
    """The placement, after a line about a choice that will be slow, if it is one."""
    if placement.kind == "cpu" and placement.precision == "mixed_float16" and note is not None:
        note("mixed_float16 on a CPU is slow (CPUs have no float16 arithmetic); "
             "--precision float32 or mixed_bfloat16 run faster here.")
    return placement


def _capability(gpu):
    import tensorflow as tf

    try:
        return tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability")
                     or (0, 0))
    except (RuntimeError, ValueError):
        return (0, 0)


def _hide_gpus():
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        if tf.config.list_logical_devices("GPU"):
            raise UsageError("--devices cpu: TensorFlow has already placed operations on the "
                             "GPU in this process.") from None


def _split_cpu(tf, count):
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        found = len(tf.config.list_logical_devices("CPU"))
        if found != count:
            raise UsageError(f"--devices {count}: TensorFlow has already set up {found} CPU "
                             "device(s) in this process; start a new process.") from None


def with_precision(model, policy, exclude=(OUTPUT_LAYER, POOL_LAYER)):
    """A copy of a Keras model whose layers compute in `policy` (e.g. 'mixed_float16'),
    with the same weights; the layers named in `exclude` keep their own policy.

    The copy is made from the model's config, so it is created in the caller's scope
    (a `tf.distribute` strategy's scope gives it mirrored variables). Trainable flags
    are kept.
    """
    config = model.get_config()
    _set_policy(config, policy, set(exclude))
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    _copy_trainable(model, copy)
    return copy


def _set_policy(node, policy, exclude):
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" or node.get("class_name") == "DTypePolicyMap":
            return
        if isinstance(node.get("config"), dict) and node.get("config", {}).get("name") in exclude:
            return
        dtype = node.get("dtype")
        if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy":
            dtype["config"]["name"] = policy
        for value in node.values():
            _set_policy(value, policy, exclude)
    elif isinstance(node, list):
        for value in node:
            _set_policy(value, policy, exclude)


def _copy_trainable(source, copy):
    copy.trainable = source.trainable
    for original, layer in zip(_all_layers(source), _all_layers(copy)):
        layer.trainable = original.trainable


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
