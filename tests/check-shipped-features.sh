#!/usr/bin/env bash
# The shipped manager (`cargo build -p capstan`: no dev-dependencies) must be built
# without the test-only features of capstan-secret-rotation: `failpoints` (crash
# injection, FAILPOINTS) and `test-hooks` (CAPSTAN_TEST_VALUE_MARKER). Only the
# integration tests' manager turns them on, through capstan's dev-dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
tree() { "$CARGO" tree --locked -p capstan --edges "$1" --prefix none --format '{p} [{f}]' | grep '^capstan-secret-rotation ' | sort -u; }
shipped=$(tree normal,build)
if grep -Eq 'failpoints|test-hooks' <<<"$shipped"; then
	echo "the shipped capstan build enables test-only features: $shipped" >&2
	exit 1
fi
# And the check still sees them where they belong (so it cannot pass vacuously).
tested=$(tree normal,build,dev)
if ! grep -q 'test-hooks' <<<"$tested" || ! grep -q 'failpoints' <<<"$tested"; then
	echo "the test build of capstan lacks failpoints/test-hooks: $tested" >&2
	exit 1
fi
echo "shipped build: no test-only features"
