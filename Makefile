# Capstan's commands. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
export GOTOOLCHAIN := local
# Quieter, cheaper debug builds: tests need line numbers, not full debug info.
export CARGO_TERM_COLOR ?= never
# Installed by `make deps` (tests/env/install.sh pins the version).
CARGO_DENY ?= .cache/cargo-deny/0.20.2/bin/cargo-deny

.PHONY: help deps generate check-generated fmt lint build release test test-only demo demo-ci bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install what tests and the demo need (Debian packages, Python venv, Kubernetes binaries), cached
	@bash tests/env/install.sh

generate: ## Regenerate crds/ (and the chart's copy) from the Rust types
	$(CARGO) run -q -p capstan -- crd --dir crds
	@bash manifests/render.sh

check-generated: ## Fail when crds/ or the chart differ from a fresh generation
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(CARGO) run -q -p capstan -- crd --dir "$$tmp" && \
	if ! diff -ru crds "$$tmp"; then echo "crds/ is stale: run 'make generate' and commit" >&2; exit 1; fi
	@bash charts/capstan/ci-check.sh

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## cargo fmt --check, clippy and rustdoc with -D warnings, cargo deny (licenses, bans, sources)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace --locked -q
	@test -x $(CARGO_DENY) || { echo "cargo-deny is missing: run make deps" >&2; exit 1; }
	$(CARGO_DENY) --log-level error check licenses bans sources
	@CARGO=$(CARGO) bash tests/check-shipped-features.sh
	@bash build/check-dockerfile.sh

build: ## Build every crate and test
	$(CARGO) build --workspace --all-targets --locked

release: ## The shipped binary in target/image, built as the Dockerfile builds it; runs its `capstan version`
	@mkdir -p target && bash build/release.sh target/image > target/image.version
	@cat target/image.version
	@commit=$$(git rev-parse HEAD); grep -q "commit $$commit" target/image.version || \
		{ echo "capstan version does not name HEAD ($$commit)" >&2; exit 1; }

test: deps lint check-generated test-only ## Everything CI checks: deps, lint, generated files, all tests

test-only: ## Run all tests (assumes deps)
	$(CARGO) test --workspace --locked --no-fail-fast

demo: deps ## Run Capstan on a local control plane with the examples; Ctrl-C tears it down
	@bash tests/demo.sh

demo-ci: deps ## The demo, non-interactive: runs to a verdict and exits
	@bash tests/demo.sh --ci

bench: deps ## Benchmarks (figures, not pass/fail)
	@bash tests/bench.sh

clean: ## Remove build output (keeps the Kubernetes binary cache)
	$(CARGO) clean
