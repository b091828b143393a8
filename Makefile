# Two entry points: `make run` (benchmark the example models into SQLite) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch installs from a local wheel here; elsewhere override, e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= perfguard.toml

.PHONY: run once lint test install clean bench-detection bench-tcpd bench-optimize

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[examples,dev,fleet,onnx]'
	touch $@

install: $(VENV)/.installed

$(CONFIG): | $(VENV)/.installed
	$(VENV)/bin/perfguard init --config $(CONFIG)

# The main job: the daemon on the example config (each model runs at once, then on its schedule;
# Ctrl-C stops it gracefully). `make once` benchmarks everything a single time and prints the table.
run: $(VENV)/.installed $(CONFIG)
	$(VENV)/bin/perfguard daemon --config $(CONFIG)

once: $(VENV)/.installed $(CONFIG)
	$(VENV)/bin/perfguard run --config $(CONFIG)

# The house's contracts first (the layers, no import circles, torch only on the worker side: pyproject's
# [tool.importlinter]), then lint and types of the production code: a few seconds.
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check monitor rules storage reports
	$(VENV)/bin/mypy

# One test process per idle core (tests/conftest.py); PYTEST_ARGS="-n 0" runs them in this one.
test: lint
	$(PY) -m pytest -n auto $(PYTEST_ARGS)

# Change detection against Apache Otava (bench-only; --no-deps: its pins would downgrade numpy/scipy).
bench-detection: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps apache-otava==0.8.0
	$(PY) bench/detection.py

# Change detection on the TCPD benchmark's annotated series (../shared/data/tcpd; ruptures, bench-only,
# for the Binseg/PELT comparison).
bench-tcpd: $(VENV)/.installed
	$(PY) -m pip install -q ruptures==1.1.10
	$(PY) bench/tcpd.py

# Optimisation recipes on the MLP, the seed CNN and a BERT-base-sized encoder (bench-only: torchao is
# installed for its recipes; slow, run it alone on the machine).
bench-optimize: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps torchao==0.18.0
	$(PY) bench/optimize.py

clean:
	rm -rf $(VENV) build *.egg-info
