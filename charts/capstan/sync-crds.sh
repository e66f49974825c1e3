#!/usr/bin/env bash
# Copies the CRDs generated from the Rust types (<repo>/crds/*.yaml, written by
# `make generate`) into the chart's files/crds/ folder, which templates/crds.yaml
# renders when crds.install is true. (Not the chart's crds/ folder: Helm installs that
# once and never upgrades it, and CRDs it installed fail the ownership check of
# templated ones.) Copies, not symlinks: `helm package` and chart repositories don't follow
# links out of the chart, and ci-check.sh compares the two folders to catch drift.
# Files in the chart's crds/ with no source in crds/ are removed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
src=$repo/crds
dst=$repo/charts/capstan/files/crds
mkdir -p "$dst"
shopt -s nullglob
for f in "$dst"/*.yaml; do
  [ -e "$src/$(basename "$f")" ] || { rm -f "$f"; echo "removed stale $f" >&2; }
done
n=0
for f in "$src"/*.yaml; do
  cp "$f" "$dst/"
  n=$((n + 1))
done
if [ "$n" -eq 0 ]; then
  echo "sync-crds.sh: no CRDs in $src yet (run make generate); the chart carries none" >&2
else
  echo "sync-crds.sh: copied $n CRD file(s) into $dst" >&2
fi
