# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when missing).
# After pulling new pins (requirements.txt, constraints.txt) either command reinstalls what changed;
# `make distclean` then `make test` rebuilds the venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deepsound_rt-installed
DEMO_OUT ?= out/demo.mp4

# The page's browser test drives Debian's chromium through its chromedriver.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo test lock clean distclean

$(STAMP): requirements.txt constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/deepsound-rt demo -o $(DEMO_OUT)

browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: setup browser
	$(PY) -m pytest -q tests

# Rewrite constraints.txt from the venv: every installed package at its installed version (a wheel
# installed from a local file is written as name==version, which any index can serve).
lock: setup
	{ echo "# Every installed package at the version the suite passed with (transitive ones included)."; \
	  echo "# Regenerate with \`make lock\` after changing requirements.txt."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^#' \
	    | sed -E 's|^([^ ]+) @ file://.*/[^/]+-([0-9][^-]*)-[^/]*\.whl.*|\1==\2|'; } > constraints.txt

# Build outputs only; the venv stays (it takes minutes to rebuild). Dropping the stamp makes the
# next setup reinstall the package, which rebuilds the kernels removed here.
clean:
	rm -rf build out *.egg-info deepsound_rt/_kernels*.so $(STAMP)

distclean: clean
	rm -rf $(VENV)
