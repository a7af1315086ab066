# The two commands a newcomer runs (README): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.2
	$(PY) -m pip install --quiet -r requirements.txt -c requirements.lock
	touch $@

.PHONY: install demo test build
install: $(VENV)/.installed

demo: install
	$(PY) -m scripts.demo

test: install
	$(PY) -m pytest -q tests

build: install
	$(PY) -m scripts.build_variants
