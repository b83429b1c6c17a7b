# The two README commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest bench docs clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ipcclient.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check ipcclient tests
	$(VENV)/bin/ruff format --check ipcclient tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest --cov=ipcclient --cov-report=term-missing:skip-covered tests
	$(PY) tools/check_coverage.py

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -q -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build dist *.egg-info .coverage .mypy_cache .pytest_cache .ruff_cache .hypothesis docs/_build
