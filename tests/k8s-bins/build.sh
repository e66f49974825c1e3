#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd from the published Go modules
# pinned in go.mod into $1 (default: ../../.cache/k8s-bins/<version>), once: a binary
# that is already there is reused. GOTOOLCHAIN=local on purpose: a Go 1.27 build of
# kube-apiserver serves a broken OpenAPI document (its encoding/json skips
# kube-openapi's custom marshaller), which breaks kubectl and OpenAPI-reading clients.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/go.mod")
out=${1:-$here/../../.cache/k8s-bins/$k8s_version}
mkdir -p "$out"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
major=${k8s_version#v}; minor=${major#*.}; minor=${minor%%.*}; major=${major%%.*}
build_date=$(date -u -d "@${SOURCE_DATE_EPOCH:-0}" +%Y-%m-%dT%H:%M:%SZ)
# The same version variables Kubernetes' hack/lib/version.sh sets, so that the server
# reports its real version (/version, kubectl version).
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X '$pkg.gitVersion=$k8s_version' -X '$pkg.gitMajor=$major' -X '$pkg.gitMinor=$minor'"
  ldflags+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=$build_date'"
done
cd "$here"
build() { # name package
  if [ -x "$out/$1" ]; then return; fi
  echo "building $1 ($2) into $out" >&2
  local start=$SECONDS
  go build -trimpath -ldflags "$ldflags" -o "$out/$1.tmp" "$2"
  mv "$out/$1.tmp" "$out/$1"
  echo "built $1 in $((SECONDS - start)) s" >&2
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
echo "$out"
