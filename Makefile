# The two README commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest pure-track test-compiled bench docs clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

# The demo needs only the package itself (no test or docs tools).
DEMO_STAMP := $(VENV)/.demo-stamp

$(DEMO_STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m ipcclient.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check ipcclient tests examples setup.py
	$(VENV)/bin/ruff format --check ipcclient tests examples setup.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Line coverage of the sans-IO core and the leaves must stay at or above 95%.
CORE := ipcclient/codec.py,ipcclient/errors.py,ipcclient/retry.py,ipcclient/wire/*

pytest: $(STAMP)
	$(PY) -m pytest --cov=ipcclient --cov-report=term:skip-covered tests
	$(VENV)/bin/coverage report --include='$(CORE)' --fail-under=95

# The suite again, against the compiled wheel (IPCCLIENT_COMPILE=1, setup.py) unpacked into a
# copy of the repository (tests/compiled/build.py), leaving out the tests that need the
# interpreter itself. PYTHONPATH: scripts the tests start by path (examples, the `ipc`
# command) import the copy too. IPCCLIENT_TEST_COMPILED: the suite checks it runs compiled.
COMPILED := build/compiled

test-compiled: $(STAMP)
	$(PY) -m tests.compiled.build $(COMPILED)
	cd $(COMPILED) && IPCCLIENT_TEST_COMPILED=1 PYTHONPATH=$(abspath $(COMPILED)) \
		$(abspath $(PY)) -m pytest \
		-p no:cacheprovider -m 'not interpreted' tests

# After the lint, two tracks side by side: mypy then the suite (pure Python, with coverage);
# the compiled build then the suite against it. The suites spend most of their time waiting
# (timeouts, silent peers), not on the CPU. Each track's output is printed when it ends.
test: lint
	@echo "make test: two tracks side by side, each printed when it ends (about 8 minutes):"
	@echo "  mypy, then pytest (pure Python, with coverage) | the compiled build, then pytest on it"
	$(MAKE) --no-print-directory -j2 --output-sync=recurse pure-track test-compiled

pure-track: $(STAMP)
	$(MAKE) --no-print-directory typecheck
	$(MAKE) --no-print-directory pytest

# Both scheduling modes, one after the other: free, then every process pinned to CPU 0.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	-$(PY) -m tests.compiled.build $(COMPILED)  # (without a C compiler: no compiled rows)
	$(PY) -m tests.bench.run $(BENCH_ARGS)
	$(PY) -m tests.bench.run --pin $(BENCH_ARGS)

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -q -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build dist *.egg-info .coverage .mypy_cache .pytest_cache .ruff_cache .hypothesis docs/_build
