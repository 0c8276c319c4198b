# subtomo-embed: two commands on a fresh machine.
#   make demo   install into .venv, simulate a small dataset, embed, cluster, draw (no GPU/Nextflow/internet)
#   make test   install into .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.subtomo-installed
NF_LANG_JAR := $(VENV)/share/nf-lang/language-server-all.jar
NEXTFLOW := $(BIN)/nextflow
# torch 2.13.0 and its dependencies, downloaded once and kept: the venv and the image builds
# (containers/build_test_image.sh) install from here. From PyPI on Linux that is the CUDA build with its
# nvidia-* wheels (~2.6 GB); it runs on the CPU too.
WHEELS := .wheels
WHEELS_STAMP := $(WHEELS)/.torch-2.13.0

.PHONY: install wheels bytecode demo lint settings test test-fast test-nextflow nextflow nf-lang bench clean

# the venv's own pip downloads them (a system python3 may have no pip)
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(WHEELS_STAMP): | $(BIN)/python
	$(BIN)/python -m pip download -q --dest $(WHEELS) torch==2.13.0
	touch $(WHEELS_STAMP)

wheels: $(WHEELS_STAMP)

$(STAMP): pyproject.toml requirements.lock | $(WHEELS_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-index --find-links $(WHEELS) torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# the package is installed editable; compile it once so that every command starts without
# compiling its sources again (environments that set PYTHONDONTWRITEBYTECODE never cache them)
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q src

$(NF_LANG_JAR): | $(STAMP)
	bash tests/pipeline/get_nf_language_server.sh $(NF_LANG_JAR)

nf-lang: $(NF_LANG_JAR)

# the real Nextflow runtime (24.10.0, by Maven coordinates, every jar checked against tests/nextflow/nextflow.sha256)
$(NEXTFLOW): tests/nextflow/pom.xml tests/nextflow/nextflow.sha256 | $(STAMP)
	bash tests/nextflow/get_nextflow.sh $(VENV)

nextflow: $(NEXTFLOW)

# the pipeline run by that runtime: podman, -resume, SIGKILL, retries, stub runs, profiles (tests/nextflow)
test-nextflow: $(STAMP) $(NEXTFLOW) bytecode
	$(BIN)/python -m pytest -q tests/nextflow

demo: $(STAMP) bytecode
	$(BIN)/subtomo-embed demo --output demo_output

# what the pipeline and the docs say about config keys, generated from core/config.py (docs/development.md)
settings: $(STAMP)
	$(BIN)/python -m subtomo_embed.core.config_contract --write

# ruff (settings in pyproject.toml) and mypy (non-strict: check_untyped_defs)
lint: $(STAMP)
	$(BIN)/ruff check src tests bin benchmarks
	$(BIN)/ruff format --check src tests bin benchmarks
	$(BIN)/mypy src

test: lint $(STAMP) $(NF_LANG_JAR) $(NEXTFLOW) bytecode
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) bytecode
	$(BIN)/python -m pytest -q -m "not slow"

# build the CPU image with podman (containers/build_test_image.sh) and run the pipeline's scripts and the
# demo in it as Nextflow's Docker and Apptainer executors start tasks (docs/containers.md); part of `test`
.PHONY: test-containers
test-containers: $(STAMP) bytecode
	$(BIN)/python -m pytest -q tests/containers

bench: $(STAMP) bytecode
	$(BIN)/python benchmarks/bench_extract.py

clean:
	rm -rf demo_output .pytest_cache
