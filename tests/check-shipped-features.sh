#!/usr/bin/env bash
# The shipped manager (`cargo build -p capstan`: no dev-dependencies) must be built
# without the test-only features of capstan-secret-rotation, capstan-pipeline and
# capstan-core: `failpoints` (crash injection, FAILPOINTS), `test-hooks`
# (CAPSTAN_TEST_VALUE_MARKER), `schema-testing` (the CRD tests' helpers, with kube-cel). Only the tests turn them on,
# through dev-dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
tree() { "$CARGO" tree --locked -p capstan --edges "$1" --prefix none --format '{p} [{f}]' | grep -E '^capstan-(secret-rotation|pipeline|core) ' | sort -u; }
shipped=$(tree normal,build)
if grep -Eq 'failpoints|test-hooks|schema-testing' <<<"$shipped"; then
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
