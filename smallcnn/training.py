"""Kept for code written against earlier versions: the training API lives in `smallcnn.train`."""

from smallcnn.train import COMMAND_DEFAULTS, RunResult, Settings, extract, finetune, train

__all__ = ["COMMAND_DEFAULTS", "RunResult", "Settings", "extract", "finetune", "train"]
