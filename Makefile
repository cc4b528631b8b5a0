# Two commands on a fresh machine: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test unit integration lint format bench soak clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the dependencies change; sources are installed editable.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/mlflow-bluegreen demo

test: lint
	$(PY) -m pytest -ra

unit: $(STAMP)
	$(PY) -m pytest -ra tests/unit

integration: $(STAMP)
	$(PY) -m pytest -ra tests/integration

# mypy reads the package as it installs (mlflow_bluegreen.proxy, .worker) through links.
TYPECHECK := build/typecheck/mlflow_bluegreen

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	mkdir -p $(TYPECHECK) && touch $(TYPECHECK)/__init__.py
	ln -sfn ../../../proxy $(TYPECHECK)/proxy && ln -sfn ../../../worker $(TYPECHECK)/worker
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Proxy overhead (direct vs nginx vs ours, and the proxy's own ceiling), then alias moves under
# open-loop load (ours vs kill-and-restart). 7-10 minutes on 2 cores (more when they are busy);
# JSON, logs and plots go to benchmarks/out/. Needs wrk and nginx: installed with apt-get when
# missing and we are root.
bench: $(STAMP)
	sh benchmarks/ensure-tools.sh
	$(PY) benchmarks/proxy_overhead.py --rounds 2 --duration 4
	$(PY) benchmarks/swap_under_load.py --pause 10

# Continuous load with an alias move every 30 s; failures, swaps, sidecar RSS and fds.
SOAK_MINUTES ?= 10
soak: $(STAMP)
	$(PY) benchmarks/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Build deploy/docker/Dockerfile with podman on a Debian base made here, then run the image as
# the Helm chart does (tests/deploy/test_container.py): read-only, no capabilities, an alias
# moved under load with --env-manager local and uv. Installs podman when missing (root, apt);
# says SKIPPED and exits 0 only where podman cannot run containers at all.
.PHONY: container-test
container-test: $(STAMP)
	@sh tests/deploy/container/prepare.sh; rc=$$?; \
	if [ $$rc -eq 77 ]; then exit 0; elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	MLFLOW_BLUEGREEN_CONTAINER_TEST=1 $(PY) -m pytest -ra tests/deploy/test_container.py

# The ADSP project as an archive to upload, laid out like `anaconda-project archive`, with a
# wheel built here inside it (mlflow-bluegreen is not on PyPI); then installs its env spec into
# a fresh venv and runs its command from there (tests/deploy/test_adsp_bundle.py, ~2 min).
ADSP_BUNDLE ?= dist/mlflow-bluegreen-adsp.tar.gz
.PHONY: adsp-bundle
adsp-bundle: $(STAMP)
	$(PY) deploy/adsp/bundle.py --output $(ADSP_BUNDLE)
	MLFLOW_BLUEGREEN_ADSP_BUNDLE=$(abspath $(ADSP_BUNDLE)) $(PY) -m pytest -ra tests/deploy/test_adsp_bundle.py
