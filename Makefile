# UnitScope. `make demo` runs the site on the embedded defaults; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
REQUIREMENTS_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
INSTALLED := $(VENV)/.installed-$(REQUIREMENTS_HASH)
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup demo build-demo test test-fast lint bench chromium clean-demo

$(INSTALLED): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned requirements into $(VENV) (torch comes from the machine's local wheels)…"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $(INSTALLED)

setup: $(INSTALLED)

# Debian's Chromium for the browser tests; Playwright never downloads a browser.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

demo: setup
	$(PY) manage.py run_demo $(DEMO_ARGS)

build-demo: setup
	$(PY) manage.py migrate --noinput
	$(PY) manage.py build_demo $(DEMO_ARGS)

test: setup chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit-test loop: engine and service tests; no browser, no worker process, no page tests of tests/web/.
test-fast: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests --ignore=tests/web -m "not browser and not worker" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) -m benchmarks

clean-demo:
	rm -rf var
