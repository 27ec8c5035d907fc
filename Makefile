# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PORT ?= 8000
# torch/torchvision pinned to the builds this project is tested with (CPU and CUDA wheels of the same release).
TORCH := torch==2.14.1 torchvision==0.29.1
EXTRAS ?= profiler,test,jtop,nvml
# On a Jetson ("L4T ..., JetPack ..." from deploy/jetson.sh; JETSON_ROOT=DIR for a stand-in root) the venv
# sees the system site-packages and uses NVIDIA's CUDA torch instead of installing $(TORCH).
JETSON := $(shell sh deploy/jetson.sh release 2>/dev/null)

.PHONY: demo test lint bench clean system-deps

$(STAMP): pyproject.toml setup.cfg setup.py
	@[ -z "$(JETSON)" ] || echo "Jetson: $(JETSON); the venv uses the system site-packages"
	test -x $(PY) || $(PYTHON) -m venv $(if $(JETSON),--system-site-packages) $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(JETSON),@sh deploy/jetson.sh torch $(PY),$(PIP) install -q $(TORCH))
	$(PIP) install -q -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	touch $(STAMP)

# Debian packages the tests use for real: Prometheus/promtool, iproute2 (network namespaces), systemd-analyze,
# headless Chromium and its WebDriver (the landing page).
system-deps:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check exporter profiler tests bench
	$(VENV)/bin/vermin -q -t=3.6- --no-tips --violations --backport dataclasses exporter profiler

test: $(STAMP) system-deps lint
	$(PY) -m pytest -q tests

# Starts the exporter on :$(PORT) (the simulated board when no sensor is found), profiles VGG11 against it
# (on a Jetson without torch: says how to get NVIDIA's wheel instead), then keeps serving until Ctrl-C.
demo: $(STAMP)
	@$(PY) -m exporter --listen 0.0.0.0:$(PORT) & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; exit 0' INT TERM; \
	for i in $$(seq 100); do \
		$(PY) -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$(PORT)/healthz', timeout=1)" \
			2>/dev/null && break; sleep 0.2; \
	done; \
	echo "exporter: http://127.0.0.1:$(PORT)/  (metrics at /metrics)"; \
	if $(PY) -c 'import torch' 2>/dev/null; then \
		$(PY) -m profiler --model vgg11 --exporter http://127.0.0.1:$(PORT) --out results; \
	else \
		sh deploy/jetson.sh torch $(PY); \
	fi; \
	echo "exporter still serving on :$(PORT) — Ctrl-C to stop"; \
	wait $$pid

bench: $(STAMP)
	$(PY) bench/bench_daemon.py
	$(PY) bench/bench_accuracy.py

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache .hypothesis
