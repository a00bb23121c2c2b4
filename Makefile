# Two commands do everything; each creates .venv and installs pyproject.toml first when needed.
#   make run [ARGS="optimizer=sgd epochs=10"]    train (defaults: the classic Keras MNIST MLP); installs what running needs
#   make test [PYTEST_ARGS=...] [WORKERS=2]      the whole test suite (what CI runs) in WORKERS processes; adds the test extras
#   make coverage                                the whole suite's line coverage (CLI subprocesses included)
#   make quick [WORKERS=2]                       the fast tests only (no subprocesses, servers, Ray, browser or real timeouts)
#   make lint                                    ruff, and the import layers pyproject.toml states (lint-imports)
#   make ui                                       the MLflow UI on the project's store (runs/mlflow.db)
#   make dashboard [PORT=8080] [STORAGE=URL]      optuna-dashboard on the searches' studies (runs/optuna.db)
#   make serve [MODEL=models:/mnist-mlp@champion] a REST endpoint for a model (POST /invocations)
PYTHON ?= python3
VENV := .venv

.PHONY: run test coverage quick lint ui serve dashboard system-packages
ui serve: PORT ?= 5000
MODEL ?= models:/mnist-mlp@champion
# The store runs write to by default, as the code computes it (mnist_exp.tracking.store.reading_uri).
STORE = $(shell $(VENV)/bin/python -c "from mnist_exp.tracking.store import reading_uri; print(reading_uri())")
QUICK := -m "not slow and not e2e" --durations=15
# The suite's tests in parallel processes (pytest-xdist), each module's on one worker (tests/conftest.py).
WORKERS ?= 2
# --no-loadscope-reorder: the order tests/conftest.py gives (longest work first), not xdist's (most tests first).
PARALLEL = $(if $(filter-out 0 1,$(WORKERS)),-n $(WORKERS) --dist loadgroup --no-loadscope-reorder)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run $(VENV)/.installed-dashboard

$(VENV)/.installed-dashboard: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -e '.[dashboard]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(VENV)/bin/python -m mnist_exp $(ARGS)

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest $(PARALLEL) --durations=25 $(PYTEST_ARGS)

coverage: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest $(PARALLEL) --cov --cov-report=term $(PYTEST_ARGS)

quick: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest $(QUICK) $(PARALLEL) $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check mnist_exp tests hydra_plugins benchmarks
	$(VENV)/bin/lint-imports

ui: $(VENV)/.installed-run
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --host 127.0.0.1 --port $(PORT)

# MLflow starts uvicorn from PATH, so the venv's bin folder goes first.
serve: $(VENV)/.installed-run
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI=$(STORE) \
		$(VENV)/bin/mlflow models serve -m $(MODEL) --env-manager local --host 127.0.0.1 --port $(PORT)

# The storage a search writes to unless STORAGE names another, as the code computes it
# (mnist_exp.multirun.search.search_space.default_storage_url); the port is the dashboard's own default unless PORT is set.
dashboard: $(VENV)/.installed-dashboard
	$(VENV)/bin/python -m mnist_exp.dashboard $(if $(PORT),--port $(PORT)) $(if $(STORAGE),--storage '$(STORAGE)')

# Debian packages some tests use (full Fashion-MNIST); they skip with a reason without them.
system-packages:
	bash scripts/install-system-packages.sh
