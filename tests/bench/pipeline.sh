#!/usr/bin/env bash
# Pipeline benchmark (figures, not pass/fail), run by `make bench` via tests/bench.sh:
# 100 Pipelines of five Job stages, the bench playing the kubelet; stage-transition
# latency on the bench's own clock (p50/p99), the Job controller's own delay apart, API
# writes per run, Capstan's CPU per run and RSS. Release build (`cargo bench`); set
# CAPSTAN_BENCH_PROFILE=dev for a quicker build of a slower manager.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=()
[ -n "${CAPSTAN_BENCH_PROFILE:-}" ] && profile=(--profile "$CAPSTAN_BENCH_PROFILE")
echo "==> Pipeline: stage transitions, writes, CPU and RSS"
cargo bench -q -p capstan "${profile[@]}" --bench pipeline
