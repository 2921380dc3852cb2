# Set-up and entry points. Every target installs what it needs on a fresh clone.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml call `python`: make it the project's interpreter.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup pipeline test clean-outputs services services-stop services-status

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check torch==2.13.0
	@# An editable install as a plain path entry (compat): setuptools' default import hook costs every
	@# Python process in this venv ~25 ms at start-up (pathlib, re), and `dvc repro` starts one per stage.
	$(PY) -m pip install --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

# Each stage is a plain process (`python -m pipelines <stage>`); the first one starts the local
# Prefect server if none runs (`gptpipe server status|stop`).
pipeline: setup
	dvc repro

# Test modules run on up to 4 workers (pytest-xdist), one module per worker at a time: an end-to-end
# module shares one pipeline run among its tests (a module-scoped fixture).
test: setup
	$(PY) -m pytest --numprocesses auto --maxprocesses 4 --dist loadfile

# Team mode: PostgreSQL, an MLflow server on it and a Prefect server on 127.0.0.1 (state in .services/).
# Options go in SERVICES_ARGS, e.g. make services SERVICES_ARGS="--mlflow-port 5001".
services: setup
	$(PY) -m pipelines services start $(SERVICES_ARGS)

services-stop: setup
	$(PY) -m pipelines services stop

services-status: setup
	$(PY) -m pipelines services status

clean-outputs:
	rm -rf data/raw data/tokens models reports
