# Two commands for a new machine: `make demo` and `make test`; each bootstraps .venv on first use.
# The venv gets every layer (`.[all]`: runtime + train + sim + dev); the robot itself needs only `pip install .`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test test-all bench clean-venv

# torch goes first from its pinned wheel, so the resolver never picks a CUDA build for the `train` extra
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m robotstack.cli.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the slow suite also runs the Ray rollout-worker test: the optional `ray` extra (~80 MB) is installed for it
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[all,ray]'
	touch $(RAY_STAMP)

test-all: $(RAY_STAMP)
	$(BIN)/python -m pytest -q -m ""

bench: $(STAMP)
	$(BIN)/python bench/bench_sim.py

clean-venv:
	rm -rf $(VENV)
