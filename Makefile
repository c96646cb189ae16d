# Two entry points that work on a fresh clone:
#   make demo   set up .venv, train on the bundled sample data, predict with the model
#   make test   set up .venv, run the test suite (its quick tier; make test-all: every test)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/smallcnn extract datasets/ants-bees --out runs/demo --overwrite
	$(BIN)/smallcnn predict datasets/ants-bees/val/ants/10308379_1b6c72e180.jpg datasets/ants-bees/val/bees/10870992_eebeeb3a12.jpg --model runs/demo

# The quick tier: pyproject.toml's addopts leave out the tests marked slow, heavy, cluster
# or browser; what is left drives every command, in under 3 minutes on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Every test, the marked ones too (an empty -m selects all): what CI runs (.ci/run).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests -m ""

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	$(BIN)/python bench/bases.py
	$(BIN)/python bench/ideas.py
	$(BIN)/python bench/overheads.py
	$(BIN)/python bench/pictures.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/label_issues.py
	$(BIN)/python bench/tta.py
	$(BIN)/python bench/predict_stream.py
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/devices.py
	$(BIN)/python bench/run.py
	$(BIN)/python bench/report.py  # docs/benchmarks.md from bench/results/

clean:
	rm -rf runs .pytest_cache
