#!/usr/bin/env bash
# ServiceScaling benchmarks (figures, not pass/fail), run by `make bench` via tests/bench.sh:
# 1. the Black Friday sales-event replay (pure algorithm, seconds);
# 2. 1,000 ServiceScalings over 1,000 emulated ECS services: AWS requests per evaluation
#    cycle, CPU time per cycle, RSS; and the reaction time from a readable CloudWatch
#    datapoint to the UpdateService it causes. Runs the controller in-process against
#    the real local environment (kube-apiserver, moto); a few minutes.
# Release builds (`cargo bench`); set CAPSTAN_BENCH_PROFILE=dev for a quicker, slower build.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=()
[ -n "${CAPSTAN_BENCH_PROFILE:-}" ] && profile=(--profile "$CAPSTAN_BENCH_PROFILE")
echo "==> ServiceScaling: sales-event replay"
cargo bench -q -p capstan-service-scaling "${profile[@]}" --bench replay
echo
echo "==> ServiceScaling: fleet and reaction time"
cargo bench -q -p capstan-service-scaling "${profile[@]}" --bench fleet
