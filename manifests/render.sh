#!/usr/bin/env bash
# Renders the plain install manifest from the Helm chart with its default values and
# crds.install (the CRDs, with helm.sh/resource-policy: keep, which kubectl ignores):
#   manifests/render.sh            syncs charts/capstan/files/crds from crds/, then writes
#                                  manifests/install/capstan.yaml
#   manifests/render.sh --no-sync OUT
#                                  renders the chart as it is to OUT (ci-check.sh's
#                                  drift check), touching nothing in the tree
# The manifest holds the Namespace, the CRDs and everything the chart renders, so
#   kubectl apply --server-side -f manifests/install/capstan.yaml
# installs Capstan in namespace capstan-system without Helm.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
sync=1
if [ "${1:-}" = "--no-sync" ]; then sync=0; shift; fi
out=${1:-$repo/manifests/install/capstan.yaml}
namespace=capstan-system
release=capstan

helm=$("$repo/tests/helm/build.sh")
if [ "$sync" = 1 ]; then "$repo/charts/capstan/sync-crds.sh"; fi

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
  cat <<HEADER
# Capstan install manifest, rendered from charts/capstan with its default values
# (release "$release", namespace "$namespace") by manifests/render.sh. Do not edit:
# change the chart and re-render. Install with
#   kubectl apply --server-side -f capstan.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/part-of: capstan
    # The manager's pod meets the restricted Pod Security Standard.
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
HEADER
  "$helm" template "$release" "$repo/charts/capstan" --namespace "$namespace" --set crds.install=true
} > "$tmp"
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
trap - EXIT
echo "rendered $out" >&2
