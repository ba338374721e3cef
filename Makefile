# Two commands for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv with pinned versions (envs/constraints.txt) on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test test-fast lint setup clean bench bench-gpu

# torch 2.14.1 for x86_64 is a CUDA build: the environment takes about 5.9 GB.
NEED_MB ?= 6000

$(BIN)/transferable: pyproject.toml envs/constraints.txt
	@mkdir -p $(dir $(VENV)); free=$$(df -Pm $(dir $(VENV)) | awk 'NR==2 {print $$4}'); \
	if [ ! -x $(BIN)/python ] && [ "$$free" -lt $(NEED_MB) ]; then \
	  echo "make: only $$free MB free on the disk of $(abspath $(VENV)); its environment needs about $(NEED_MB) MB." >&2; \
	  echo "      Free some space, or put it elsewhere: make VENV=/bigger/disk/venv ..." >&2; exit 1; fi
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c envs/constraints.txt -e '.[all,workflow,test]'
	@touch $@

setup: $(BIN)/transferable

## The whole pipeline on the embedded demo dataset: results/figures/fig2.pdf, fig3.pdf, results/tables/*.
demo: setup
	@start=$$(date +%s); $(BIN)/snakemake --cores $(CORES) && \
	echo "Pipeline: $$(( $$(date +%s) - start )) s on $(CORES) cores (compare with this machine's speed: $(BIN)/transferable bench step)"
	@echo "Figures: results/figures/{fig2,fig3,claims}.pdf  Tables: results/tables/ (effects.md: every claim's verdict)"

## The workflow's conventions: snakefmt's formatting and Snakemake's linter (seconds).
lint: setup
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

## Every test, the end-to-end, report (headless Chromium) and live-cluster ones included (slow: minutes), in
## TEST_WORKERS processes (pytest-xdist, a file per worker at a time; the long files first: tests/conftest.py).
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -m "slow or slurm or not slow" -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

## Unit tests in-process, and one Snakemake smoke test (under a minute on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not slurm and not subprocess" -q

## CPU benchmarks, each beside a plain baseline (JSON lines; about 4 minutes on 2 cores).
bench: setup
	$(BIN)/python -m transferable bench all

## The GPU benchmark with whatever python3 holds a CUDA torch (no .venv needed): under 5 minutes.
bench-gpu:
	PYTHONPATH=src PYTHONUNBUFFERED=1 $(PY) -m transferable bench gpu

clean:
	rm -rf results logs benchmarks .snakemake report.html
