# The DDPM thesis companion. `make all` = set-up, figures (PROFILE, default quick), thesis PDF.
# `make test` = set-up, the smoke profile of every notebook, and the test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
PROFILE ?= quick
STAMP   := $(VENV)/.setup-stamp
TEX_PACKAGES := texlive-xetex texlive-lang-chinese texlive-fonts-recommended texlive-science latexmk biber \
                texlive-bibtex-extra poppler-utils
TEX_TOOLS := xelatex latexmk biber pdffonts pdftotext

.PHONY: help setup tex test figures thesis all lab bench clean

help:
	@echo "make all      set-up, figures (PROFILE=$(PROFILE)) and thesis/build/thesis.pdf"
	@echo "make test     set-up, smoke-profile figures, then the test suite"
	@echo "make setup    virtual environment $(VENV), notebook kernel, Debian TeX packages"
	@echo "make figures  run the notebooks headless: PROFILE=smoke|quick|gpu|full"
	@echo "make thesis   build thesis/build/thesis.pdf (PROFILE= default: best profile with figures)"
	@echo "make lab      open the notebooks in JupyterLab"
	@echo "make bench    throughput benchmark (project vs diffusers)"

setup: $(STAMP) tex

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -m ipykernel install --sys-prefix --name ddpm-thesis --display-name "DDPM thesis ($(VENV))" >/dev/null
	touch $(STAMP)

# TeX for the thesis: installed when run as root, otherwise the exact command is printed.
tex:
	@missing=""; for t in $(TEX_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing TeX (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES) >/dev/null; \
	else \
	  echo "TeX tools missing:$$missing. Install them with:"; \
	  echo "  sudo apt-get install -y --no-install-recommends $(TEX_PACKAGES)"; \
	fi

test: setup
	$(PYTHON) tools/make_figures.py --profile smoke
	$(PYTHON) -m pytest -q

figures: $(STAMP)
	$(PYTHON) tools/make_figures.py --profile $(PROFILE)

thesis: tex $(STAMP)
	$(PYTHON) tools/build_thesis.py $(if $(filter command line,$(origin PROFILE)),--profile $(PROFILE),)

all: setup
	$(MAKE) figures PROFILE=$(PROFILE)
	$(MAKE) thesis $(if $(filter command line,$(origin PROFILE)),PROFILE=$(PROFILE),)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PYTHON) benchmarks/throughput.py

clean:
	rm -rf build thesis/build figures/smoke
