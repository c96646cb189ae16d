"""The three ways to train: `extract`, `train` and `finetune`.

    settings.py       every option, declared once (the CLI is derived from it)
    session.py        a run's plan (settings, base, devices, data set; immutable) and a
                      Session joining it to its feature source and run-folder writer
    feature_store.py  the decoded images and the frozen base's features, cached
    runfolder.py      the writer of the run folder, and the RunResult
    warmup.py         the base prepared in a helper process while images are read
    extract.py        extract: features once, a head trained in NumPy
    epochs.py         the one epoch loop, its callbacks, a phase
    keras_loop.py     the phases through Keras (one process), evaluation
    cut.py            finetune's cut: the frozen bottom run once per view, the top trained
                      from its cached activations
    head_phase.py     finetune's head phase: extract's heads, trained in NumPy
    distributed.py    the train step on a cluster of machines (same epoch loop)
    callbacks.py      progress, an atomic checkpoint, Ctrl-C
    commands.py       train, finetune, --resume: a plan of phases each

Each command checks its inputs, trains, writes a run folder and returns a `RunResult`;
none of them prints (progress goes to a `smallcnn.progress.Reporter`). The package may
import `model`, `data` and `runtime`; never inference, the server or the CLI.
"""

from smallcnn.train.commands import finetune, train
from smallcnn.train.extract import extract
from smallcnn.train.session import RunResult, Session
from smallcnn.train.settings import COMMAND_DEFAULTS, Settings

__all__ = ["COMMAND_DEFAULTS", "RunResult", "Session", "Settings", "extract", "finetune", "train"]
