# QuantMimic developer commands. `make test` sets everything up on first use (see README).
VENV ?= .venv
# Set VENV_ARGS=--system-site-packages to reuse a torch/detectron2 that is installed system-wide.
VENV_ARGS ?=
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.quantmimic-installed
PYTEST_ARGS ?=
SRC := projects/QuantMimic/quant_mimic tests tools train_net.py datasets

.PHONY: install test test-fast demo lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)

# Re-run the installer when its inputs change; it is idempotent and skips what is present.
$(STAMP): pyproject.toml tools/install_deps.sh | $(PY)
	bash tools/install_deps.sh $(PY)
	touch $(STAMP)

install: $(STAMP)

# Whole suite on two pytest-xdist workers of one thread each (tests/conftest.py), with the slowest
# tests listed; PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist load --maxschedchunk 1)
test: install
	$(PY) -m pytest tests -q $(XDIST) --durations=10 $(PYTEST_ARGS)

# The edit-run loop: the unit tests, without the ones marked slow (end-to-end runs, subprocesses,
# several processes; each ≥ 5 s).
test-fast: install
	$(PY) -m pytest tests -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The main job: the whole pipeline (data, teacher, quantized teacher, four students) on the synthetic
# faces benchmark on this machine's CPU; the pipeline ends with its table (also DEMO_OUT/results.md). DEMO_ARGS adds options, e.g. --seeds 3.
DEMO_OUT ?= output/demo_faces_cpu
DEMO_ARGS ?=
demo: install
	$(PY) tools/run_pipeline.py --bench faces --preset cpu --seeds 1 --out $(DEMO_OUT) $(DEMO_ARGS)

lint: install
	$(PY) -m black --check $(SRC)
	$(PY) -m isort --check-only $(SRC)
	$(PY) -m flake8 $(SRC)

format: install
	$(PY) -m isort $(SRC)
	$(PY) -m black $(SRC)

clean:
	rm -rf $(VENV) build *.egg-info projects/QuantMimic/*.egg-info
