# Two commands for a fresh machine (both create and use the project's own .venv):
#   make demo   run the whole nightly job locally on the built-in synthetic poster web
#   make test   lint and run the test suite (tests/cloud: the nightly job on emulated GCS and
#               BigQuery, from the emulators extra) on two pytest-xdist workers, a test file
#               to a worker (tests/scheduling.py)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv benchmarks bench-peers

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools<81" wheel
	$(PY) -m pip install --quiet --no-build-isolation -c constraints.txt -e ".[test,emulators]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.nightly --synthetic_films=300 --train --model=small_cnn --warmup_runs=1 --holdout_fraction=0.2 --output=out/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile

benchmarks: $(STAMP)
	$(PY) -m benchmarks.scrape_throughput
	$(PY) -m benchmarks.hash_grouping
	$(PY) -m benchmarks.candidates_real
	$(PY) -m benchmarks.dedupe_quality
	$(PY) -m benchmarks.nightly_scale

# Peer benchmark env: img2dataset (+ imagehash) in its own .venv-bench, never in .venv.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

bench-peers: $(BENCH_STAMP)

$(BENCH_STAMP): benchmarks/requirements-peers.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r benchmarks/requirements-peers.txt
	$(BENCH_VENV)/bin/python -m pip check
	touch $(BENCH_STAMP)
