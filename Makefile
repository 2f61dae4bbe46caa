# Two commands do all the set-up:  `make lab` opens the course, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP_INPUTS := requirements.txt pyproject.toml stack/jupyter/overrides.json
STAMP  := $(VENV)/.installed-$(shell cat $(STAMP_INPUTS) | cksum | cut -d' ' -f1)
# TEST_WORKERS=2 runs the test files on two pytest-xdist workers (one file stays on one worker, in
# order; each has its own stacks and port block); every measurement window has the machine to
# itself (stack/quiet.py). In series by default: see the README ("For course maintainers") for why.
TEST_WORKERS ?= 0
JUPYTER_FLAGS := --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test test-docker bench system-deps down clean

$(STAMP): $(STAMP_INPUTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	# JupyterLab settings for this venv only: no "news" pop-up over the first lesson, and every
	# cell kept rendered (live widgets scrolled out of view keep drawing)
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp stack/jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	rm -f $(VENV)/.installed-*; touch $@

system-deps:
	@bash stack/scripts/system-deps.sh

lab: $(STAMP) system-deps        ## open the course; the first lesson cell starts the stack
	$(VENV)/bin/jupyter lab $(JUPYTER_FLAGS) --ServerApp.root_dir=$(CURDIR) \
		--LabApp.default_url=/lab/tree/lessons/01_what_scalability_means.ipynb

test: $(STAMP)                   ## every test: unit, live stack, notebooks, browser
	SCALELAB_WITH_WRK=1 SCALELAB_WITH_BROWSER=1 bash stack/scripts/system-deps.sh
	$(PY) -m stack.lab.make_labs --check
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-docker: $(STAMP)            ## the Docker tier: its own dockerd, a debootstrap base image, build, integration tests (root)
	bash stack/scripts/docker-tier.sh

bench: $(STAMP)                  ## performance figures (not part of `make test`)
	SCALELAB_WITH_WRK=1 bash stack/scripts/system-deps.sh
	$(PY) tests/bench/bench_stack.py
	$(PY) tests/bench/bench_load.py

down:                            ## stop the stack the course started
	$(PY) -m stack down

clean: down
	rm -rf $(VENV)
