# Two commands do everything; each creates .venv and installs pyproject.toml first when needed.
#   make run [ARGS="optimizer=sgd epochs=10"]    train (defaults: the classic Keras MNIST MLP)
#   make test [PYTEST_ARGS="-m 'not slow'"]      the whole test suite
#   make ui                                       the MLflow UI on the project's store (runs/mlflow.db)
#   make serve [MODEL=models:/mnist-mlp@champion] a REST endpoint for a model (POST /invocations)
PYTHON ?= python3
VENV := .venv

.PHONY: run test ui serve system-packages
PORT ?= 5000
MODEL ?= models:/mnist-mlp@champion
STORE := sqlite:///$(CURDIR)/runs/mlflow.db

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/python -m mnist_exp $(ARGS)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

ui: $(VENV)/.installed
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --host 127.0.0.1 --port $(PORT)

# MLflow starts uvicorn from PATH, so the venv's bin folder goes first.
serve: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI=$(STORE) \
		$(VENV)/bin/mlflow models serve -m $(MODEL) --env-manager local --host 127.0.0.1 --port $(PORT)

# Debian packages some tests use (full Fashion-MNIST); they skip with a reason without them.
system-packages:
	bash scripts/install-system-packages.sh
