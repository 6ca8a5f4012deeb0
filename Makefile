# wbc-deploy: `make demo` runs the main job end to end, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/wbc-deploy
DEMO ?= demo-out

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
