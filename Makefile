# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export PYTHONDONTWRITEBYTECODE := 1
# botocore must never probe a cloud metadata address for credentials here (no network but loopback).
export AWS_EC2_METADATA_DISABLED := true

.PHONY: install lint test demo manifests constraints clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# torch first and pinned: the CPU wheel on disk, not a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0 -c constraints.txt
	$(BIN)/pip install -q -e '.[dev]' -c constraints.txt
	touch $@

install: $(STAMP)

# ruff and mypy (configured in pyproject.toml) before the tests: a lint error fails `make test` fast.
lint: install
	$(BIN)/ruff check operator jobs tests bench tools
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

# The whole recipe on one CPU: a tiny Qwen2 built and warmed up locally on a generated arithmetic
# task, every stage type, ./runs as the store; it ends with the results table. Two stage processes
# at once, one thread each: the DAG's branches and the sampling shards use both cores (two torch
# processes with a thread per core each oversubscribe them and run ~20x slower). Rerunning is
# memoized; delete runs/local to start over.
demo: install
	$(BIN)/fathom validate manifests/examples/fathom-r1-14b.yaml
	$(BIN)/python -m fathom_jobs.tiny runs/tiny-qwen2
	OMP_NUM_THREADS=1 $(BIN)/fathom run --local manifests/examples/tiny-cpu.yaml --slots 2

# Regenerate the committed CRD copies and install.yaml from the models and the chart
# (tests fail when they drift).
manifests: install
	$(BIN)/fathom crd > manifests/crd.yaml
	cp manifests/crd.yaml charts/fathom-operator/crds/fathomrecipes.fathom.dev.yaml
	$(BIN)/python tools/render_install.py
	$(BIN)/python -c "from fathom_operator.api.reference import recipe_reference as r; open('docs/recipe-reference.md', 'w').write(r())"

constraints: install
	{ head -2 constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) .torch_extensions .pytest_cache
