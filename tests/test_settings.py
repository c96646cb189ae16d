"""Options declared once: what --help says is what the code does; bad values refused up front."""

import re

import pytest

from conftest import invoke
from smallcnn.model.bases import BASES, DEFAULT_BASE, get_base
from smallcnn.data.table import TABLE_DEFAULTS
from smallcnn.train.settings import (CHECKPOINT_VARIABLE, COMMANDS, FROZEN_LEARNING_RATE,
                                     FULL_LEARNING_RATE, Settings, options)


def _help_defaults(command):
    """{option name: the text of its [default: ...]} from `smallcnn COMMAND --help`."""
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"}):
        shown = invoke(command, "--help")
    assert shown.exit_code == 0, shown.output
    found = {}
    for line in shown.output.splitlines():
        flag = re.search(r"│ (--[a-z-]+)", line)
        default = re.search(r"\[default: (.*?)\]\s*│", line)
        if flag and default:
            found[flag.group(1)[2:].replace("-", "_")] = default.group(1)
    return found


@pytest.mark.parametrize("command", COMMANDS)
def test_every_default_in_help_is_the_one_the_code_uses(command):
    shown = _help_defaults(command)
    resolved = Settings().resolve(command)
    declared = [name for name, _ in options(command)]
    assert set(declared) <= set(shown), set(declared) - set(shown)
    spec = get_base(DEFAULT_BASE)
    for name in declared:
        value, text = getattr(resolved, name), shown[name]
        if name == "weights":
            assert text.startswith(spec.default_weights)
        elif name == "freeze":
            assert resolved.freeze is True and text.startswith("--freeze with pretrained")
        elif name in TABLE_DEFAULTS:  # a table's options: none given, the usual columns
            assert value is None and text == TABLE_DEFAULTS[name], (name, text)
        elif name in ("rotation", "shift", "shear", "zoom", "flip", "brightness", "contrast"):
            assert text == f"the preset's: {getattr(resolved.augmentation(), name)}"
        elif isinstance(value, bool):
            assert (text in (f"--{name}", "on")) == value, (name, text)
        elif isinstance(value, float):
            assert float(text.split()[0].rstrip(";")) == value, (name, text)
        else:
            assert text.split()[2 if name == "image_size" else 0].rstrip(";") == str(value), (name, text)
    if command == "train":
        assert shown["learning_rate"].startswith("1e-2") and FROZEN_LEARNING_RATE == 1e-2
        assert Settings(freeze=False).resolve("train").learning_rate == FULL_LEARNING_RATE


@pytest.mark.parametrize("command", COMMANDS)
def test_choices_come_from_the_registries(command, tiny_data):
    """Each option with choices lists its registry's entries in --help, and a value outside
    them is refused on the command line, naming them."""
    from smallcnn.data.augment import FLIP_MODES, PRESETS
    from smallcnn.model.head import LR_SCHEDULES, OPTIMIZERS
    from smallcnn.runtime.devices import PRECISIONS
    from smallcnn.runtime.engine import CHOICES as ENGINES
    from smallcnn.train.settings import CLASS_WEIGHTS
    from smallcnn.train.taps import CHOICES as TAPS

    registries = {"base": BASES, "optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES,
                  "augment": PRESETS, "flip": FLIP_MODES, "engine": ENGINES,
                  "precision": PRECISIONS, "class_weight": CLASS_WEIGHTS,
                  **({"taps": TAPS} if command == "extract" else {})}
    assert {name for name, declared in options(command) if declared["choices"]} == set(registries)
    shown = invoke(command, "--help")
    assert shown.exit_code == 0, shown.output
    shown = " ".join(shown.output.replace("│", " ").split())
    for name, registry in registries.items():
        choices = ", ".join(registry)
        assert f"One of: {choices}." in shown, name
        refused = invoke(command, tiny_data, f"--{name.replace('_', '-')}", "bogus")
        assert refused.exit_code == 2, refused.output
        assert "'bogus'" in refused.output and f"Choose one of: {choices}." in refused.output


@pytest.mark.parametrize("base", ["mobilenet_v2", "small"])
def test_a_random_base_is_never_frozen_by_default(base):
    assert Settings(base=base, weights="none").resolve("train").freeze is False
    assert Settings(base=base, weights="none").resolve("train").learning_rate == FULL_LEARNING_RATE
    if base != "small":
        assert Settings(base=base).resolve("train").freeze is True


@pytest.mark.parametrize("args, message", [
    (["extract", "{data}", "--engine", "cuda"], "Unknown --engine 'cuda'"),
    (["train", "{data}", "--engine", "cuda"], "Unknown --engine 'cuda'"),
    (["finetune", "{data}", "--unfreeze", "0"], "--unfreeze must be at least 1"),
    (["train", "{data}", "--lr-schedule", "sometimes"], "Unknown --lr-schedule 'sometimes'"),
    (["extract", "{data}", "--views", "2", "--augment", "none"], "--views needs an augmentation"),
    (["train", "{data}", "--val-split", "1.5"], "--val-split must be between 0 and 1"),
])
def test_bad_options_are_refused_before_any_image_is_decoded(tiny_data, monkeypatch, args, message):
    import smallcnn.data.check

    def no_scan(*args, **kwargs):
        raise AssertionError("the data set was looked at before the options were checked")

    monkeypatch.setattr(smallcnn.data.check, "check_dataset", no_scan)
    result = invoke(*[a.replace("{data}", str(tiny_data)) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_finetune_refuses_too_many_layers_before_training_a_head(tiny_data, base_weights_file,
                                                                monkeypatch):
    import smallcnn.data.check

    monkeypatch.setattr(smallcnn.data.check, "check_dataset", lambda *a, **k: 1 / 0)
    result = invoke("finetune", tiny_data, "--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32",
                    "--unfreeze", "9999")
    assert result.exit_code == 2, result.output
    assert "--unfreeze 9999 is more than the" in result.output
    assert not (tiny_data.parent / "runs").exists()  # no half run for predict to pick up


def test_an_explicit_engine_wins_over_the_environment(monkeypatch):
    from smallcnn.runtime.engine import chosen_engine
    from smallcnn.errors import UsageError

    monkeypatch.setenv("SMALLCNN_ENGINE", "tf")
    assert chosen_engine("litert") == "litert"
    assert chosen_engine("auto") == "tensorflow"  # tf: its alias
    monkeypatch.setenv("SMALLCNN_ENGINE", "gpu")
    with pytest.raises(UsageError, match="Unknown SMALLCNN_ENGINE 'gpu'"):
        chosen_engine("auto")


@pytest.mark.heavy  # an extract whose conversion fails, then TensorFlow (4 s)
def test_engine_litert_fails_clearly_where_litert_cannot_run(tiny_data, base_weights_file,
                                                             monkeypatch):
    from smallcnn.runtime import litert

    def broken(*args, **kwargs):
        raise ImportError("no LiteRT wheel for this platform")

    monkeypatch.setattr(litert, "convert_to_litert", broken)
    args = ["extract", tiny_data, "--base", "mobilenet_v2", "--weights", base_weights_file, "--image-size", "32",
            "--epochs", "2"]
    refused = invoke(*args, "--engine", "litert")
    assert refused.exit_code == 2, refused.output
    assert "--engine litert: LiteRT cannot run this base here" in refused.output
    fallen_back = invoke(*args)  # auto: TensorFlow, and a line that says why
    assert fallen_back.exit_code == 0, fallen_back.output
    assert "LiteRT is not usable here (ImportError: no LiteRT wheel" in fallen_back.output


def _numeric_options():
    """[(command words, click parameter)] of every numeric option of every command."""
    import typer

    from smallcnn.cli import app

    def walk(command, words):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*words, name])
            return
        for parameter in command.params:
            if parameter.param_type_name == "option" and _number_kind(parameter):
                yield words, parameter

    return list(walk(typer.main.get_command(app), []))


def _number_kind(parameter):
    """int or float for a numeric parameter, else None (typer 0.2x runs its own copy of
    click, whose parameters say their annotation rather than a click type)."""
    if hasattr(parameter, "type_descriptor"):
        kind = parameter.type_descriptor.annotation
    else:
        kind = {"integer": int, "float": float}.get(getattr(parameter.type, "name", None))
    return kind if kind in (int, float) else None


def _required_arguments(words):
    import typer

    from smallcnn.cli import app

    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    return ["x" for p in command.params if p.param_type_name == "argument" and p.required]


def _bad_values(allowed, integer):
    """What a user may type that `allowed` refuses: out of range, not finite, too large."""
    bad = []
    if allowed.low is not None:
        bad.append(allowed.low if allowed.above else allowed.low - 1)  # 0 where 1 is the least
    if allowed.high is not None:
        bad.append(allowed.high if allowed.below else allowed.high + 1)
        bad.append(10**30 if integer else 1e308)
    if not integer:
        bad += [float("nan"), float("inf"), float("-inf")]
    return [str(int(v)) if integer else repr(v) for v in bad]


def test_every_numeric_option_of_every_command_has_a_range():
    from smallcnn.cli.ranges import allowed

    found = _numeric_options()
    assert len({tuple(words) for words, _ in found}) >= 10
    # serve's and label's options are checked by their own settings (ServeSettings,
    # LabelSettings; tested in test_serve.py and test_label_page.py).
    missing = [(" ".join(words), p.opts) for words, p in found
               if words not in (["serve"], ["label"]) and allowed(p.name) is None]
    assert missing == []


@pytest.mark.parametrize("words", sorted({tuple(w) for w, _ in _numeric_options()
                                          if w not in (["serve"], ["label"])}), ids=" ".join)
def test_bad_numbers_are_refused_in_one_line_before_any_work(words, tmp_path):
    from smallcnn.cli.ranges import allowed

    arguments = _required_arguments(words)
    tried = 0
    for _, parameter in [(w, p) for w, p in _numeric_options() if tuple(w) == words]:
        flag = max(parameter.opts, key=len)
        for value in _bad_values(allowed(parameter.name), _number_kind(parameter) is int):
            result = invoke(*words, *arguments, flag, value)
            assert result.exit_code == 2, (flag, value, result.output)
            assert result.output.strip().splitlines() == [result.output.strip()], result.output
            assert result.output.startswith(f"error: {flag} must be "), (flag, value, result.output)
            tried += 1
    assert tried
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize("variable", ["SMALLCNN_CACHE_MAX_GB", "SMALLCNN_MEMORY_BUDGET_GB",
                                      CHECKPOINT_VARIABLE])
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e308", "lots"])
def test_bad_numbers_in_environment_variables_are_refused_in_one_line(variable, value,
                                                                       monkeypatch):
    monkeypatch.setenv(variable, value)
    for command in (["cache", "info"], ["predict", "x.jpg"]):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert result.output == f"error: {variable} must be {_range_of(variable).describe()}. " \
                                f"Received: {value!r}\n"


def _range_of(variable):
    from smallcnn.runtime import cache
    from smallcnn.data import pipeline
    from smallcnn.train import settings

    return {"SMALLCNN_CACHE_MAX_GB": cache.MAX_GB,
            "SMALLCNN_MEMORY_BUDGET_GB": pipeline.MEMORY_BUDGET_GB,
            CHECKPOINT_VARIABLE: settings.CHECKPOINT_INTERVAL}[variable]


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_a_bad_variable_is_refused_before_the_data_check_or_a_run_folder(value, tiny_data,
                                                                        monkeypatch):
    monkeypatch.setenv(CHECKPOINT_VARIABLE, value)
    result = invoke("train", tiny_data, "--freeze", "--base", "small", "--out", "OUTX")
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {CHECKPOINT_VARIABLE} must be " \
                            f"{_range_of(CHECKPOINT_VARIABLE).describe()}. Received: {value!r}\n"
    assert not (tiny_data.parent / "OUTX").exists()


def test_every_numeric_variable_the_library_reads_is_checked_as_a_command_starts(monkeypatch):
    """Each `from_environment` in the package reads a variable that `cli.ranges.variables`
    checks before a command does any work."""
    import re
    from pathlib import Path

    import smallcnn
    from smallcnn.cli.ranges import variables
    from smallcnn.errors import UsageError

    source = "\n".join(path.read_text() for path in Path(smallcnn.__file__).parent.rglob("*.py"))
    calls = re.findall(r"(?<!def )\bfrom_environment\(", source)
    for name in set(re.findall(r"SMALLCNN_[A-Z_]+", source)):
        monkeypatch.setenv(name, "nan")
    checked = set()
    for read in variables():
        with pytest.raises(UsageError) as refused:
            read()
        checked.add(str(refused.value).split()[0])
    assert len(checked) == len(calls), (checked, len(calls))


def test_every_float_option_has_a_top():
    """A float option without an upper bound takes 1e308, which overflows what it feeds."""
    from smallcnn.cli.ranges import allowed

    unbounded = [(" ".join(words), p.opts) for words, p in _numeric_options()
                 if words != ["serve"] and _number_kind(p) is float and
                 allowed(p.name).high is None]
    assert unbounded == []


def test_a_range_holds_finite_numbers_between_its_bounds_only():
    from smallcnn.runtime.ranges import Range

    fraction = Range(0, 1, above=True, below=True)
    assert 0.5 in fraction and 0 not in fraction and 1 not in fraction
    assert float("nan") not in Range() and float("inf") not in Range() and 1e308 in Range()
    assert True not in Range() and "1" not in Range()
    assert 10**30 in Range(1) and 0 not in Range(1) and -1e-9 not in Range(0)
    assert Range(0, 1, below=True).describe() == "at least 0 and below 1"
    assert Range(1).describe() == "at least 1" and Range(0).describe() == "0 or more"


@pytest.mark.parametrize("index", ["Infinity", "1e308", "2", "-1"])
def test_a_task_index_outside_the_tf_config_cluster_is_refused(index, monkeypatch):
    from smallcnn.runtime.devices import cluster
    from smallcnn.errors import UsageError

    cluster_of_two = '{"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", '
    monkeypatch.setenv("TF_CONFIG", cluster_of_two + f'"index": {index}}}}}')
    with pytest.raises(UsageError, match="^TF_CONFIG"):
        cluster()
    monkeypatch.setenv("TF_CONFIG", cluster_of_two + '"index": 1}}')
    assert cluster() == ("worker", 1, 2)


def test_columns_0_still_shows_the_tables(monkeypatch):
    from conftest import invoke_in_subprocess

    monkeypatch.setenv("COLUMNS", "0")
    shown, _, _ = invoke_in_subprocess("cache", "info")
    assert "features" in shown and "engines" in shown

