# Two commands for users (see README): `make lab` and `make test`. Both are idempotent: the
# virtual environment is rebuilt only when pyproject.toml changes, the dataset only when missing.
# For teachers (README, "For teachers"): reset-notebooks, clean-runs, answer-key, site, classroom.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
# A kernel idle this many seconds is shut down, even with its notebook open (its memory comes back;
# running the notebook again takes seconds with a filled run store); 0 keeps every kernel.
LAB_KERNEL_IDLE ?= 1800
LAB_CULL_INTERVAL ?= 60
# The PyTorch build: empty (the default) installs pip's default build (with CUDA on x86-64 Linux,
# about 6 GB); TORCH=cpu the CPU-only build from PyTorch's CPU index, for laptops without an NVIDIA
# GPU. Chosen at set-up, on a fresh clone or after `make clean`: `make setup TORCH=cpu`.
TORCH ?=
TORCH_INDEX_cpu := https://download.pytorch.org/whl/cpu
PIP_TORCH = $(if $(TORCH),$(if $(TORCH_INDEX_$(TORCH)),--extra-index-url $(TORCH_INDEX_$(TORCH)),\
	$(error TORCH=$(TORCH) is not a build this Makefile knows: use TORCH=cpu, or leave it empty)))
CHECK_TORCH_BUILD = $(BIN)/python -c 'import sys; import torch; sys.exit(0 if torch.version.cuda is None else \
	f"TORCH=$(TORCH) asked for the CPU-only build, but pip installed torch {torch.__version__} with CUDA")'
# JupyterLab refuses to run as root unless told; containers and CI machines often are root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# The committed notebook outputs were computed with 2 CPU threads (mpn_tutorial/tools/runtime.py).
export MPN_TUTORIAL_THREADS ?= 2
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.PHONY: setup data lab test unit notebooks browser browser-deps tutorial answer-key site lint clean \
	reset-notebooks clean-runs classroom

setup: $(INSTALLED) data

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "mpn_tutorial needs Python 3.10 or newer; run make with PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_TORCH) -e '.[dev]'
	$(if $(TORCH),$(CHECK_TORCH_BUILD))
	touch $@

data: $(INSTALLED)
	$(BIN)/python -m mpn_tutorial make-data glyphs --root data

lab: setup
	@echo "Starting JupyterLab on notebooks/. Open the http://$(LAB_IP):... URL printed below; Ctrl-C stops it."
	$(BIN)/jupyter lab --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) \
		--ServerApp.root_dir=notebooks --ServerApp.answer_yes=True $(ALLOW_ROOT) \
		--MappingKernelManager.cull_idle_timeout=$(LAB_KERNEL_IDLE) \
		--MappingKernelManager.cull_interval=$(LAB_CULL_INTERVAL) --MappingKernelManager.cull_connected=True

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
	$(BIN)/ruff check mpn_tutorial tests bench notebooks classroom
	$(PYTEST) notebooks tests $(NBVAL) --durations=15

unit: setup
	$(PYTEST) tests --ignore=tests/browser

notebooks: setup
	$(PYTEST) notebooks $(NBVAL)

browser: setup browser-deps
	$(PYTEST) tests/browser

# Re-execute every notebook in place (refreshes the outputs nbval compares against).
tutorial: setup
	cd notebooks && for nb in [0-9][0-9]_*.ipynb appendix_*.ipynb; do \
		echo "== $$nb"; \
		../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=1800 "$$nb" || exit 1; \
	done

# For teachers: executed copies of the notebooks with the reference solutions, in answer_key/.
answer-key: setup
	$(BIN)/python -m mpn_tutorial answer-key --notebooks notebooks --output answer_key

# A static HTML site to hand out: the README, the notebooks as committed (not executed again) and the
# API reference from the docstrings, in build/site/ (open build/site/docs/index.html; no network needed).
site: setup
	$(BIN)/python -m sphinx -b html -q -W --keep-going -c docs . build/site
	@echo "site written: build/site/docs/index.html"

# For teachers: a student's notebooks as committed (their edits and outputs gone), nothing else touched.
reset-notebooks:
	@top=$$(git rev-parse --show-toplevel 2>/dev/null) && [ "$$(cd "$$top" && pwd -P)" = "$$(pwd -P)" ] || { \
		echo "reset-notebooks restores notebooks/*.ipynb from git, but $(CURDIR) is not a git checkout:"; \
		echo "copy the notebooks again from where you got this copy (nothing was changed)"; exit 2; }
	@files=$$(git ls-files -- 'notebooks/*.ipynb'); [ -n "$$files" ] || { echo "git knows no notebooks/*.ipynb here"; exit 2; }; \
		git checkout HEAD -- $$files && echo "restored as committed (HEAD):" $$files

# The run store the notebooks train into (as notebook.py finds it); the shared one is never touched.
RUN_STORE = $(or $(MPN_TUTORIAL_RUNS),$(or $(MPN_TUTORIAL_DATA),data)/runs)
clean-runs:
	@if [ -d "$(RUN_STORE)" ]; then \
		count=$$(find "$(RUN_STORE)" -maxdepth 1 -type f \( -name '*.pt' -o -name '*.partial' \) | wc -l); \
		find "$(RUN_STORE)" -maxdepth 1 -type f \( -name '*.pt' -o -name '*.partial' \) -delete; \
		rmdir "$(RUN_STORE)" 2>/dev/null || true; \
		echo "run store $(RUN_STORE) emptied: $$count files removed (stored runs and unfinished writes)"; \
	else echo "run store $(RUN_STORE) does not exist: nothing to remove"; fi

# For a class on one machine: JupyterHub (classroom/jupyterhub_config.py), one account per student in
# the group `students`, each with their own notebooks and run store, all reading the teacher's store.
# Run as root after `make tutorial`; Ctrl-C stops it. Settings: CLASSROOM_* (see the config's docstring).
CLASSROOM_INSTALLED := $(VENV)/.installed-classroom
export CLASSROOM_SHARED_RUNS ?= $(CURDIR)/data/runs

$(CLASSROOM_INSTALLED): $(INSTALLED)
	$(BIN)/python -m pip install --quiet $(PIP_TORCH) -e '.[dev,classroom]'
	touch $@

classroom: $(CLASSROOM_INSTALLED) data
	@[ "$$(id -u)" = 0 ] || { echo "make classroom starts each student's server as that student: run it as root"; exit 2; }
	@command -v configurable-http-proxy >/dev/null || { echo "JupyterHub needs configurable-http-proxy:" \
		"npm install -g configurable-http-proxy (Node.js and npm from the system's packages)"; exit 2; }
	@! command -v runuser >/dev/null || runuser -u nobody -- $(BIN)/python -c 'import mpn_tutorial' 2>/dev/null || { \
		echo "students cannot run $(BIN)/python (it or the Python it was made from sits in a folder only"; \
		echo "its owner can enter, e.g. root's home): make the venv from a Python every user can run"; exit 2; }
	@[ -d "$(CLASSROOM_SHARED_RUNS)" ] || echo "warning: no run store at $(CLASSROOM_SHARED_RUNS):" \
		"run make tutorial first, or every student trains every model"
	chmod -R a+rX data/glyphs $(wildcard $(CLASSROOM_SHARED_RUNS))  # files are written readable by their owner only
	$(BIN)/jupyterhub -f classroom/jupyterhub_config.py

lint: setup
	$(BIN)/ruff check mpn_tutorial tests bench notebooks classroom

clean:
	rm -rf $(VENV) data/glyphs .pytest_cache
