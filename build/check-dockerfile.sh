#!/usr/bin/env bash
# Keeps the Dockerfile honest where CI cannot build it (no container engine here): its
# build stage runs build/release.sh (the script CI runs), on the Rust toolchain CI
# builds with, on Debian 12 like its runtime; the runtime is distroless with glibc and
# runs as a numeric non-root user (the chart sets runAsNonRoot); the chart's default
# image repository is the one the Dockerfile documents.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "Dockerfile: $*" >&2; exit 1; }
df=Dockerfile
rust=$(rustc --version | awk '{print $2}')
grep -Eq "^FROM docker.io/library/rust:${rust//./\\.}-bookworm AS build$" "$df" ||
	fail "the build stage must be rust:${rust}-bookworm (the toolchain CI builds with)"
grep -Eq '^RUN build/release.sh /out$' "$df" || fail "the build stage must run build/release.sh"
grep -Eq '^FROM gcr.io/distroless/cc-debian12:nonroot$' "$df" || fail "the runtime must be distroless cc-debian12:nonroot"
grep -Eq '^USER [0-9]+:[0-9]+$' "$df" || fail "USER must be numeric (runAsNonRoot)"
grep -Eq '^COPY --from=build /out/capstan /capstan$' "$df" || fail "only the binary is copied"
[ "$(grep -c '^COPY' "$df")" = 2 ] || fail "two COPY lines expected: the source into the build stage, the binary out"
repo=$(awk '/^image:/{f=1} f && /repository:/{print $2; exit}' charts/capstan/values.yaml)
grep -q -- "-t ${repo}:" "$df" || fail "the chart's default image ${repo} is not what the Dockerfile documents"
echo "Dockerfile: builds with build/release.sh on rust ${rust}; runtime distroless, non-root; image ${repo}"
