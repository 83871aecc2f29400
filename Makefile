# Two commands for a newcomer: `make run` and `make test`. Everything else is here too.
SHELL := /bin/bash
CARGO ?= cargo
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= conf/tollgate.yaml

.PHONY: run build test deps sys-deps py-deps services fmt-check clippy unit sdk check-configs bench bench-deps bench-micro fuzz-smoke clean

## Build (release) and start the gateway on the default config: works offline.
run: sys-deps
	$(CARGO) build --release -p tollgate
	./target/release/tollgate serve --config $(CONFIG)

build: sys-deps
	$(CARGO) build --release -p tollgate

## Install what is missing, then run every check and test.
test: deps services fmt-check clippy unit check-configs sdk fuzz-smoke

deps: sys-deps py-deps

# Pingora's zlib-ng build needs cmake and a C compiler; rustls needs the CA store at run time.
# The deploy-kit tests need promtool (Debian's `prometheus`), systemd-analyze and shellcheck.
sys-deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v cc >/dev/null || missing="$$missing build-essential"; \
	[ -e /etc/ssl/certs/ca-certificates.crt ] || missing="$$missing ca-certificates"; \
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	  case "$$missing" in *prometheus*) \
	    $$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	    $$SUDO pkill -x prometheus >/dev/null 2>&1 || true;; esac; \
	fi

# PostgreSQL for the store tests (started, or installed and started, if missing).
services:
	bash scripts/services.sh

py-deps: $(VENV)/.installed

$(VENV)/.installed: tests/python/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

check-configs:
	$(CARGO) build -p tollgate
	for f in conf/tollgate*.yaml; do ./target/debug/tollgate check --config $$f; done

## The official SDKs against the real binary.
sdk: py-deps
	$(CARGO) build -p tollgate
	cd tests/python && TOLLGATE_BIN=$(CURDIR)/target/debug/tollgate ../../$(PY) -m pytest -q

## The side-by-side load harness: mock upstream, bare Pingora, nginx, Tollgate under wrk; one
## Markdown table per scenario (docs/benchmarks.md, "Load harness"). Knobs: BENCH_SECONDS,
## CONNECTIONS, SCENARIOS, PROXIES, SOAK_SECONDS, SLOW_STREAMS, PIN (see benches/load/run.py).
## Not part of `make test`.
bench: bench-deps
	$(CARGO) build --release -p tollgate -p tollgate-load
	python3 benches/load/run.py

# wrk drives the load; nginx is one of the proxies compared (Debian packages); the
# release build needs cmake and a C compiler, as in sys-deps.
bench-deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v cc >/dev/null || missing="$$missing build-essential"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	command -v taskset >/dev/null || missing="$$missing util-linux"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	  case "$$missing" in *nginx*) $$SUDO systemctl disable --now nginx >/dev/null 2>&1 || true;; esac; \
	fi

## Criterion micro-benchmarks of the hot path (docs/benchmarks.md).
bench-micro:
	$(CARGO) bench -p tollgate-benches

# Bounded: every fuzz target for FUZZ_SECONDS (10 s in `make test`).
fuzz-smoke:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-10} bash scripts/fuzz-smoke.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV)
