# The DDPM thesis companion. `make all` = set-up, figures (PROFILE, default quick), thesis PDF.
# `make test` = set-up, the smoke profile of every notebook, and the test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
PROFILE ?= quick
STAMP   := $(VENV)/.setup-stamp
# JupyterLab opens notebooks/*.py with Jupytext's notebook viewer (docmanager defaultViewers), and the server
# completes their language_info so that opening one does not mark it modified (tools/jupyterlab/)
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json $(VENV)/etc/jupyter/jupyter_server_config.py
TEX_PACKAGES := texlive-xetex texlive-lang-chinese texlive-fonts-recommended texlive-science latexmk biber \
                texlive-bibtex-extra poppler-utils
TEX_TOOLS := xelatex latexmk biber pdffonts pdftotext

.PHONY: help setup tex test test-lab figures reproduce-check thesis thesis-check all lab bench mutation clean

help:
	@echo "make all      set-up, figures (PROFILE=$(PROFILE)) and thesis/build/thesis.pdf"
	@echo "make test     set-up, smoke-profile figures, then the test suite"
	@echo "make setup    virtual environment $(VENV), notebook kernel, Debian TeX packages"
	@echo "make figures  run the notebooks headless: PROFILE=smoke|quick|long|cpu|gpu|full (ALLOW_DIRTY=1: uncommitted"
	@echo "              sources allowed, artefacts marked dirty)"
	@echo "make reproduce-check  clone HEAD, regenerate figures/quick from an empty cache, compare numbers.tex"
	@echo "              statistically (THREADS=1: another thread count, as another CPU would; SEED=1: other"
	@echo "              sampling draws from the committed models; TRAIN_SEED=1: models retrained; PROFILE=...)"
	@echo "make thesis   build thesis/build/thesis.pdf (PROFILE= default: best profile with figures)"
	@echo "make thesis-check  build the thesis, then check its pages, fonts and figure text sizes"
	@echo "make lab      open the notebooks in JupyterLab"
	@echo "make test-lab open every notebook in JupyterLab in headless Chromium, run 01 (browser test)"
	@echo "make bench    throughput benchmark (project vs diffusers)"
	@echo "make mutation mutation testing of the maths and training modules (most of a day on 2 cores;"
	@echo "              MODULES=schedules,losses,... for a subset, RESUME=1 to continue; docs/testing.md)"

setup: $(STAMP) $(LAB_SETTINGS) tex

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -m ipykernel install --sys-prefix --name ddpm-thesis --display-name "DDPM thesis ($(VENV))" >/dev/null
	touch $(STAMP)

$(VENV)/share/jupyter/lab/settings/overrides.json: tools/jupyterlab/overrides.json $(STAMP)
	install -D -m 644 $< $@

$(VENV)/etc/jupyter/jupyter_server_config.py: tools/jupyterlab/jupyter_server_config.py $(STAMP)
	install -D -m 644 $< $@

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
	$(PYTHON) tools/make_figures.py --profile smoke --allow-dirty  # smoke figures are git-ignored test output
	$(PYTHON) -m pytest -q

figures: $(STAMP)
	$(PYTHON) tools/make_figures.py --profile $(PROFILE) $(if $(filter 1,$(ALLOW_DIRTY)),--allow-dirty,) \
		$(if $(filter 1,$(REAL_DATA)),--real-data,)

# Regenerates figures/quick in a clone of HEAD with an empty cache (about 20 minutes on 2 cores, reusing
# this checkout's $(VENV)) and compares every number of numbers.tex with the committed one, statistically
# (THREADS=n: another torch thread count, the same bits on the CPUs measured here; TRAIN_SEED=n RECORD=1: retrain with another
# seed and keep its numbers in figures/<profile>/seeds/ for the thesis's findings; USE_WEIGHTS=1: the models from
# weights/<profile>/ instead of retraining, the profile's own or, with TRAIN_SEED=n, those trained beforehand by
# tools/train_profile.py --train-seed n; THREADS=1 USE_WEIGHTS=1 PROFILE=cpu checks the sampling and evaluation;
# WORK=dir keeps the clone and cache there, and a rerun with the same dir resumes an interrupted check at its commit;
# ISA=avx2: CPU kernels capped at AVX2, another summation order: the rehearsal of another CPU family).
reproduce-check: $(STAMP)
	$(PYTHON) tools/reproduce_check.py --venv $(VENV) $(if $(filter command line,$(origin PROFILE)),--profile $(PROFILE),) \
		$(if $(THREADS),--threads $(THREADS),) $(if $(ISA),--isa $(ISA),) $(if $(SEED),--seed $(SEED),) $(if $(TRAIN_SEED),--train-seed $(TRAIN_SEED),) \
		$(if $(RECORD),--record,) $(if $(USE_WEIGHTS),--use-weights,) $(if $(WORK),--work $(WORK),)

thesis: tex $(STAMP)
	$(PYTHON) tools/build_thesis.py $(if $(filter command line,$(origin PROFILE)),--profile $(PROFILE),) \
		$(if $(JUST_MADE),--just-made $(JUST_MADE),)

# Look at the built PDF as an examiner would: every page renders, no "??", fonts embedded, no figure text
# below 7 pt at print size, page count in bounds.
thesis-check: thesis
	$(PYTHON) tools/thesis_check.py --pdf thesis/build/thesis.pdf

# The thesis is built from the best profile with figures (the committed ones unless PROFILE is given); its last
# line says when that is not the profile just regenerated.
all: setup
	$(MAKE) figures PROFILE=$(PROFILE)
	$(MAKE) thesis $(if $(filter command line,$(origin PROFILE)),PROFILE=$(PROFILE),) JUST_MADE=$(PROFILE)

# Served from the repository root (so jupytext.toml applies to notebooks/), opened on notebooks/.
lab: $(STAMP) $(LAB_SETTINGS)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root,)

# Real-browser test of the notebooks in JupyterLab: needs Debian's chromium (installed here when run as root).
test-lab: $(STAMP) $(LAB_SETTINGS)
	@test -x /usr/bin/chromium || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing; install it with: sudo apt-get install -y chromium"; exit 1; fi; }
	DDPM_LAB_TESTS=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_lab.py

bench: $(STAMP)
	$(PYTHON) benchmarks/throughput.py

# Not part of `make test`: mutmut over the modules of docs/testing.md, in build/mutation/.
mutation: $(STAMP)
	nice -n 15 $(PYTHON) tools/mutation.py --check-outside $(if $(MODULES),--modules $(MODULES),) \
		$(if $(RESUME),--resume,)

clean:
	rm -rf build thesis/build figures/smoke
