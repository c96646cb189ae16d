"""The three ways to train: `extract`, `train` and `finetune`.

    settings.py       every option, declared once (the CLI is derived from it)
    session.py        what a command starts from (settings, data, check) and the run it writes
    feature_store.py  the frozen base's features of each split, cached
    extract.py        extract: features once, a head trained in NumPy
    keras_loop.py     training through Keras' fit, its callbacks, evaluation
    callbacks.py      progress, an atomic checkpoint, Ctrl-C
    commands.py       train, finetune, --resume

Each command checks its inputs, trains, writes a run folder and returns a `RunResult`;
none of them prints (progress goes to a `smallcnn.progress.Reporter`).
"""

from smallcnn.train.commands import finetune, train
from smallcnn.train.extract import extract
from smallcnn.train.session import RunResult, Session
from smallcnn.train.settings import COMMAND_DEFAULTS, Settings

__all__ = ["COMMAND_DEFAULTS", "RunResult", "Session", "Settings", "extract", "finetune", "train"]
