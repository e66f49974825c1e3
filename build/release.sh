#!/usr/bin/env bash
# The one way Capstan's shipped binary is built. The Dockerfile's build stage runs this
# script, and CI runs it on a machine without a container engine (then runs the result),
# so the image and what CI checks cannot drift apart.
#
# Usage: build/release.sh OUT_DIR
# Writes OUT_DIR/capstan: the `capstan` binary alone, no dev-dependencies and none of
# the test-only features, built with the release profile of Cargo.toml (thin LTO,
# debug info stripped), for the machine's own architecture and glibc. The Dockerfile
# builds on Debian 12 (glibc 2.36), the distroless runtime's base.
# CAPSTAN_GIT_COMMIT names the commit where the source has no .git (a Docker context).
set -euo pipefail
out=${1:?usage: build/release.sh OUT_DIR}
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
cargo build --release --locked -p capstan --bin capstan
mkdir -p "$out"
install -m 0755 target/release/capstan "$out/capstan"
"$out/capstan" version
