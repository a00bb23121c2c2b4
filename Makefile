# Two commands do everything; each creates .venv and installs pyproject.toml first when needed.
#   make run [ARGS="optimizer=sgd epochs=10"]    train (defaults: the classic Keras MNIST MLP)
#   make test [PYTEST_ARGS="-m 'not slow'"]      the whole test suite
PYTHON ?= python3
VENV := .venv

.PHONY: run test system-packages

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/python -m mnist_exp $(ARGS)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Debian packages some tests use (full Fashion-MNIST); they skip with a reason without them.
system-packages:
	bash scripts/install-system-packages.sh
