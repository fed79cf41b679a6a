# wakeful: `make run` to start it, `make test` to check it. Both set up .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run demo test lint typecheck pytest install install-test bench image-check live-smoke clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

## Start the server on http://$(HOST):$(PORT) (SQLite under ./data unless DATABASE_URL is set).
run: install
	HOST=$(HOST) PORT=$(PORT) $(PY) server.py

## Demo mode: bots talk to a local WhatsApp simulator (no phone, no internet needed).
demo: install
	HOST=$(HOST) PORT=$(PORT) WHATSAPP_SIMULATOR=1 $(PY) server.py

## Lint, type-check and run the whole test suite.
test: install-test lint typecheck pytest

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-test
	$(VENV)/bin/mypy .

pytest: install-test
	$(PY) -m pytest

## Run every bench/*.py (not _*.py): all figures to bench/results.json, one summary table
## (also as Markdown, bench/results.md). Options: SOAK=90s (a shorter soak), ONLY=soak,outbox,
## SKIP=outbox, ARGS="--args 'outbox=--backend sqlite'" (see bench/run_all.py --help).
bench: install-test
	$(PY) bench/run_all.py $(if $(ONLY),--only $(ONLY)) $(if $(SKIP),--skip $(SKIP)) \
		$(if $(SOAK),--soak $(SOAK)) $(ARGS)

## The image, proven: its filesystem built from the Dockerfile without a Docker engine
## (debootstrap bookworm + each step in a chroot), then the CMD run as its USER in demo mode.
## Needs root and debootstrap; caches the Debian base and CPython in ~/.cache/wakeful-image-check
## (IMAGE_CHECK_CACHE). ARGS="--dockerfile other.Dockerfile".
image-check: install
	$(PY) -m scripts.imagecheck $(ARGS)

## NOT part of CI: the real driver against the real web.whatsapp.com, with your phone.
live-smoke: install
	$(PY) scripts/live_smoke.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
