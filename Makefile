# Two commands for users (see README): `make lab` and `make test`. Both are idempotent: the
# virtual environment is rebuilt only when pyproject.toml changes, the dataset only when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
# JupyterLab refuses to run as root unless told; containers and CI machines often are root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# The committed notebook outputs were computed with 2 CPU threads (mpn_tutorial/runtime.py).
export MPN_TUTORIAL_THREADS ?= 2
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.PHONY: setup data lab test unit notebooks browser browser-deps tutorial answer-key site lint clean

setup: $(INSTALLED) data

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "mpn_tutorial needs Python 3.10 or newer; run make with PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

data: $(INSTALLED)
	$(BIN)/python -m mpn_tutorial make-data glyphs --root data

lab: setup
	@echo "Starting JupyterLab on notebooks/. Open the http://$(LAB_IP):... URL printed below; Ctrl-C stops it."
	$(BIN)/jupyter lab --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) \
		--ServerApp.root_dir=notebooks --ServerApp.answer_yes=True $(ALLOW_ROOT)

# Chromium for the browser test comes from Debian; Playwright launches it by path and never
# downloads a browser. Where it cannot be installed, the browser test skips and says why.
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
				|| echo "warning: could not install chromium; the browser test will be skipped"; \
		else \
			echo "warning: /usr/bin/chromium missing and apt-get unavailable (or not root); the browser test will be skipped"; \
		fi; \
	fi

PYTEST := $(BIN)/python -m pytest
NBVAL := --nbval --nbval-current-env --nbval-cell-timeout=900 --nbval-sanitize-with tests/nbval_sanitize.cfg

test: setup browser-deps
	$(BIN)/ruff check mpn_tutorial tests bench notebooks
	$(PYTEST) notebooks tests $(NBVAL) --durations=15

unit: setup
	$(PYTEST) tests --ignore=tests/browser

notebooks: setup
	$(PYTEST) notebooks $(NBVAL)

browser: setup browser-deps
	$(PYTEST) tests/browser

# Re-execute every notebook in place (refreshes the outputs nbval compares against).
tutorial: setup
	cd notebooks && for nb in [0-9][0-9]_*.ipynb; do \
		echo "== $$nb"; \
		../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=1800 "$$nb" || exit 1; \
	done

# For teachers: executed copies of the notebooks with the reference solutions, in answer_key/.
answer-key: setup
	$(BIN)/python -m mpn_tutorial answer-key --notebooks notebooks --output answer_key

# A static HTML site to hand out: the README, the seven notebooks as committed (not executed again) and the
# API reference from the docstrings, in build/site/ (open build/site/docs/index.html; no network needed).
site: setup
	$(BIN)/python -m sphinx -b html -q -W --keep-going -c docs . build/site
	@echo "site written: build/site/docs/index.html"

lint: setup
	$(BIN)/ruff check mpn_tutorial tests bench notebooks

clean:
	rm -rf $(VENV) data/glyphs .pytest_cache
