#!/usr/bin/env bash
# Builds the helm CLI pinned in go.mod (a `tool` directive) into
# $1 (default: <repo>/.cache/helm/<version>) once, and prints the binary's path:
#   helm=$(tests/helm/build.sh)
# A binary that is already there is reused; bumping the version in go.mod builds a
# new one beside it. GOTOOLCHAIN=local: build with the Go on the machine, never
# download another toolchain. -mod=readonly: go.mod/go.sum are the pin, a build must
# not rewrite them. The version variables are the ones helm's own Makefile sets, so
# `helm version` reports the real release.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
helm_module=helm.sh/helm/v4
helm_version=$(awk -v m="$helm_module" '$1==m {print $2}' "$here/go.mod")
if [ -z "$helm_version" ]; then
  echo "build.sh: no $helm_module requirement in $here/go.mod" >&2
  exit 1
fi
out=${1:-$here/../../.cache/helm/$helm_version}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ ! -x "$out/helm" ]; then
  export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
  echo "building helm $helm_version into $out (about 4 min on 2 cores with a cold Go cache)" >&2
  start=$SECONDS
  cd "$here"
  go build -trimpath \
    -ldflags "-s -w -X $helm_module/internal/version.version=$helm_version -X $helm_module/internal/version.gitTreeState=clean" \
    -o "$out/helm.tmp" "$helm_module/cmd/helm"
  mv "$out/helm.tmp" "$out/helm"
  echo "built helm in $((SECONDS - start)) s" >&2
fi
echo "$out/helm"
