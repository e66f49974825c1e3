#!/usr/bin/env bash
# `make bench`: runs every tests/bench/*.sh in name order and prints their figures.
# Benchmarks report; they do not pass or fail on numbers. A script that errors stops
# the run with its exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
for script in tests/bench/*.sh; do
  echo "### $(basename "$script" .sh)"
  bash "$script"
  echo
done
