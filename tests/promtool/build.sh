#!/usr/bin/env bash
# Builds promtool (Prometheus's rule checker and rule unit-test runner) from the
# Prometheus module pinned in go.mod (a `tool` directive) into $1 (default:
# <repo>/.cache/promtool/<version>) once, and prints the binary's path:
#   promtool=$(tests/promtool/build.sh)
# As tests/helm/build.sh: GOTOOLCHAIN=local (the machine's Go), -mod=readonly (go.mod
# and go.sum are the pin). The chart's alert rules are checked and unit-tested with it
# (charts/capstan/ci-check.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
module=github.com/prometheus/prometheus
version=$(awk -v m="$module" '$1==m {print $2}' "$here/go.mod")
if [ -z "$version" ]; then
  echo "build.sh: no $module requirement in $here/go.mod" >&2
  exit 1
fi
out=${1:-$here/../../.cache/promtool/$version}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ ! -x "$out/promtool" ]; then
  export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
  echo "building promtool ($module $version) into $out (minutes on 2 cores with a cold Go cache)" >&2
  start=$SECONDS
  cd "$here"
  go build -trimpath -ldflags "-s -w" -o "$out/promtool.tmp" "$module/cmd/promtool"
  mv "$out/promtool.tmp" "$out/promtool"
  echo "built promtool in $((SECONDS - start)) s" >&2
fi
echo "$out/promtool"
