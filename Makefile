# Two commands do everything on a fresh clone:
#   make repro   set up .venv from requirements.lock, then `dvc repro` the whole pipeline
#   make test    set up .venv, then lint and run the test suite (what CI runs)
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup repro test lint bench bench-gpu lock clean-venv gpu-exp

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-deps -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

repro: $(STAMP)
	. $(VENV)/bin/activate && dvc repro

# Debian tools a target needs (Chromium for the report's browser test, ffmpeg for the clip
# benchmark's reference): installed with apt-get when missing, or a one-line error saying how.
define need
	@missing=""; for tool in $(1); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing:$$missing; run: sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	  echo "installing$$missing (apt-get)"; \
	  apt-get install -y -q $$missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; } \
	    || { echo "apt-get could not install$$missing" >&2; exit 1; }; \
	fi
endef

# Activated, so that the `python` and `dvc` that tests start as subprocesses are the venv's too.
# Chromium is wanted, not needed: where apt-get cannot install it the browser tests say so and skip.
test: $(STAMP)
	-$(call need,chromium)
	. $(VENV)/bin/activate && ruff check . && python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# CPU benchmarks here; the *_gpu.py ones need a CUDA GPU and stop without one (`make bench-gpu`).
bench: $(STAMP)
	$(call need,ffmpeg)
	. $(VENV)/bin/activate && for b in $(filter-out %_gpu.py,$(wildcard benchmarks/*.py)); do python $$b || exit 1; done

bench-gpu: $(STAMP)
	. $(VENV)/bin/activate && for b in $(wildcard benchmarks/*_gpu.py); do python $$b || exit 1; done

# The paper-scale training runs on a GPU machine, as a DVC experiment: params.yaml with the values
# of params-gpu.yaml laid over it (`dvc exp show` then lists it beside the embedded default).
gpu-exp: $(STAMP)
	. $(VENV)/bin/activate && dvc exp run $$(python -m stages.common.params set-args params-gpu.yaml)

# Re-pin after changing pyproject.toml's dependencies (run in a venv with the new set installed).
lock:
	$(VENV)/bin/pip freeze --all --exclude-editable | grep -v -E '^(pip|wheel)==' > requirements.lock

clean-venv:
	rm -rf $(VENV)

# Scheduled reruns (docs/orchestration.md): a Prefect server on localhost plus the deployments of
# flows/schedule.yaml, in the background; logs and database in .prefect/.
.PHONY: scheduler-start scheduler-stop scheduler-status
scheduler-start: $(STAMP)
	$(VENV)/bin/python -m flows.scheduler start

scheduler-stop: $(STAMP)
	$(VENV)/bin/python -m flows.scheduler stop

scheduler-status: $(STAMP)
	$(VENV)/bin/python -m flows.scheduler status
