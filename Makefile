# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deepsound_rt-installed
DEMO_OUT ?= out/demo.mp4

.PHONY: setup demo test clean

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/deepsound-rt demo -o $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf build out *.egg-info deepsound_rt/_kernels*.so
