# iad-book: `make book` executes every chapter with papermill and builds the HTML book (its front
# page summarises the results store); `make grid` runs the experiment cells on Dask first;
# `make test` runs the test suite. Both set up the environment first (`make setup`).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.iadlib-installed
PROFILE ?= quick
CHAPTERS ?=
JOBS ?= 1
WORKERS ?= 2
SEEDS ?= 0

.PHONY: setup test book run-notebooks html grid summary lint bench clean-book clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[book,dev]"
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing the Debian package dataset-fashion-mnist (root, apt available)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "WARNING: apt-get could not install dataset-fashion-mnist; chapters fall back to torchvision files under a root= folder"; \
	else \
		echo "NOTE: not root or no apt-get: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)"; \
	fi
	@touch $@

test: setup
	$(PY) -m pytest -q

run-notebooks: setup
	$(PY) -m iadlib.book run --profile $(PROFILE) --jobs $(JOBS) $(if $(CHAPTERS),--chapters $(CHAPTERS),)

html: setup
	$(PY) -m iadlib.book build --profile $(PROFILE)

# the experiment cells of the grid chapters as Dask tasks (SCHEDULER=tcp://host:8786 for a cluster)
grid: setup
	$(PY) -m iadlib.book grid --profile $(PROFILE) --workers $(WORKERS) --seeds $(SEEDS) $(if $(SCHEDULER),--scheduler $(SCHEDULER),)

summary: setup
	$(PY) -m iadlib.book summary --profile $(PROFILE)

book: run-notebooks html
	@echo "Book: _build/html/index.html"

lint: setup
	$(VENV)/bin/ruff check iadlib tests benchmarks

bench: setup
	$(PY) benchmarks/bench_patchcore.py

clean-book:
	rm -rf _build book/chapters

clean: clean-book
	rm -rf $(VENV) results .cache
