# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PORT ?= 8000
# torch/torchvision pinned to the builds this project is tested with (CPU and CUDA wheels of the same release).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[profiler,test,jtop,nvml]'
	touch $(STAMP)

# Debian packages the tests use for real: Prometheus/promtool, iproute2 (network namespaces), systemd-analyze.
system-deps:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check exporter profiler tests bench
	$(VENV)/bin/vermin -q -t=3.8- --no-tips --violations exporter

test: $(STAMP) system-deps lint
	$(PY) -m pytest -q tests

# Starts the exporter on :$(PORT) (the simulated board when no sensor is found), profiles VGG11
# against it, then keeps serving until Ctrl-C.
demo: $(STAMP)
	@$(PY) -m exporter --listen 0.0.0.0:$(PORT) & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; exit 0' INT TERM; \
	for i in $$(seq 100); do \
		$(PY) -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$(PORT)/healthz', timeout=1)" \
			2>/dev/null && break; sleep 0.2; \
	done; \
	echo "exporter: http://127.0.0.1:$(PORT)/  (metrics at /metrics)"; \
	$(PY) -m profiler --model vgg11 --exporter http://127.0.0.1:$(PORT) --out results; \
	echo "exporter still serving on :$(PORT) — Ctrl-C to stop"; \
	wait $$pid

bench: $(STAMP)
	$(PY) bench/bench_daemon.py
	$(PY) bench/bench_accuracy.py

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache .hypothesis
