# The two commands of the README:
#   make run    install, then run Redis (found or embedded), demo models, worker(s), webapp, Flower
#   make test   install, then run the whole test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: run test faults install install-dev compose-tool bench bench-scaling clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt requirements-otel.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev compose-tool

# Debian's docker-compose (1.29) checks docker-compose.yml in the tests without a Docker engine
# (tests/integration/test_compose.py). Installed once, as root with apt (CI); else a hint.
compose-tool:
	@command -v docker-compose >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; \
	  else echo "make: apt-get install docker-compose (as root) to run the Compose test" >&2; fi; }

run: install
	$(PY) -m devtools.stack

# pytest exits 5 when it collected no tests: that is a failure, said out loud.
test: install-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests - failing" >&2; fi; \
	exit $$rc

# The fault suite (tests/faults/) and a 10-minute soak (SOAK_S to change it); writes RELIABILITY.md,
# also when a fault test fails (its row shows what happened), and then fails.
faults: install-dev
	rm -rf tests/faults/out
	FAULTS_REPORT_DIR=tests/faults/out ATF_SOAK=1 $(PY) -m pytest tests/faults -s $(PYTEST_ARGS); rc=$$?; \
	$(PY) -m tests.faults.report tests/faults/out RELIABILITY.md || rc=1; \
	exit $$rc

# The benchmark of bench/ (needs wrk: apt-get install wrk); writes bench/RESULTS.md and bench/bench.png.
bench: install-dev
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install wrk" >&2; exit 2; }
	$(PY) -m bench $(BENCH_ARGS)

# Throughput against worker hosts (network namespaces: needs root and wrk); rewrites only the
# scaling section of bench/RESULTS.md.
bench-scaling: install-dev
	@command -v wrk >/dev/null || { echo "make bench-scaling needs wrk: apt-get install wrk" >&2; exit 2; }
	$(PY) -m bench.scaling $(SCALING_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
