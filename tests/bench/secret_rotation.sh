#!/usr/bin/env bash
# SecretRotation benchmarks (figures, not pass/fail), run by `make bench` via tests/bench.sh:
# 1. 1,000 SecretRotations (Kubernetes Secret backend, PostgreSQL target, single user, no
#    delivery) told to rotate now: time until all are Ready again and rotations per
#    second, per manager --concurrency (CAPSTAN_BENCH_CONCURRENCY, default 8,32,64), with
#    the CPU seconds of Capstan and of each service and one object's step timeline;
# 2. Capstan's RSS with 10,000 idle SecretRotations;
# 3. Kubernetes writes, reconciles and database calls per idle object per hour, counted
#    over CAPSTAN_BENCH_IDLE_SECS (default 120) and extrapolated linearly.
# The manager runs as a real process against the local environment (kube-apiserver,
# PostgreSQL from capstan-testenv); about 10 minutes. Release builds (`cargo bench`); set
# CAPSTAN_BENCH_PROFILE=dev for a quicker build of a much slower (debug) manager.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=()
[ -n "${CAPSTAN_BENCH_PROFILE:-}" ] && profile=(--profile "$CAPSTAN_BENCH_PROFILE")
echo "==> SecretRotation: rotate-now throughput, idle RSS, idle writes"
# The manager's JSON log lines go to the bench's memory, not here; print the figures.
cargo bench -q -p capstan "${profile[@]}" --bench secret_rotation
