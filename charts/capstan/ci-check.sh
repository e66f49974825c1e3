#!/usr/bin/env bash
# Checks the Helm chart and what is generated from it; exits non-zero on any failure:
#   1. helm lint (with the default values and with watchNamespaces set);
#   2. helm template renders with the default values and with every optional part
#      switched on (watchNamespaces, ServiceMonitor, digest, IRSA annotation,
#      one replica without leader election), refuses invalid values, and every
#      render parses as Kubernetes objects (python3 + PyYAML; kubectl's client
#      dry-run needs a server for discovery);
#   3. charts/capstan/files/crds/ holds exactly the CRDs in crds/ (skipped, saying so,
#      only while crds/ is empty); fix with charts/capstan/sync-crds.sh; the chart has
#      no crds/ folder (Helm never upgrades one); crds.install renders every CRD, with
#      the keep annotation unless crds.keep is false;
#   4. manifests/install/capstan.yaml equals a fresh render; fix with
#      manifests/render.sh.
# Builds helm first with tests/helm/build.sh (about 4 minutes the first time, seconds
# after). Run from anywhere: charts/capstan/ci-check.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
chart=$repo/charts/capstan
helm=$("$repo/tests/helm/build.sh")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*" >&2; fail=1; }

echo "== helm lint ($("$helm" version --short))"
"$helm" lint --strict "$chart" && ok "helm lint" || bad "helm lint"
"$helm" lint --strict "$chart" --set 'watchNamespaces={team-a,team-b}' \
  && ok "helm lint with watchNamespaces" || bad "helm lint with watchNamespaces"

echo "== helm template"
render() { # name, then helm template flags
  local name=$1; shift
  if "$helm" template capstan "$chart" --namespace capstan-system "$@" > "$tmp/$name.yaml" 2> "$tmp/$name.err"; then
    ok "renders: $name"
  else
    bad "does not render: $name"; cat "$tmp/$name.err" >&2
  fi
}
render defaults
render all-options \
  --set 'watchNamespaces={team-a,team-b}' \
  --set metrics.serviceMonitor.enabled=true \
  --set image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000 \
  --set 'serviceAccount.annotations.eks\.amazonaws\.com/role-arn=arn:aws:iam::123456789012:role/capstan'
render single-replica --set replicaCount=1 --set leaderElection.enabled=false
render some-controllers --set 'controllers={connection}'
render crds --set crds.install=true
render crds-not-kept --set crds.install=true --set crds.keep=false

expect_refused() { # why, then helm template flags
  local why=$1; shift
  if "$helm" template capstan "$chart" --namespace capstan-system "$@" > /dev/null 2>&1; then
    bad "accepted, should refuse: $why"
  else
    ok "refuses: $why"
  fi
}
expect_refused "two replicas without leader election" --set leaderElection.enabled=false
expect_refused "an unknown controller" --set 'controllers={secret-rotation,cronjobs}'
expect_refused "a misspelt top-level value" --set replicas=3
expect_refused "a log format other than json/text" --set logging.format=xml

# What the rendered defaults must contain, spelled as the brief for the chart has it.
d=$tmp/defaults.yaml
want() { # description, grep -E pattern
  if grep -Eq -- "$2" "$d"; then ok "$1"; else bad "missing in default render: $1 ($2)"; fi
}
want "2 replicas" '^  replicas: 2$'
want "json logs" -- '- --log-format=json'
want "read-only root filesystem" 'readOnlyRootFilesystem: true'
want "no privilege escalation" 'allowPrivilegeEscalation: false'
want "seccomp RuntimeDefault" 'type: RuntimeDefault'
want "liveness on /healthz" 'path: /healthz'
want "readiness on /readyz" 'path: /readyz'
want "PodDisruptionBudget" '^kind: PodDisruptionBudget$'
want "POD_NAMESPACE from the downward API" 'name: POD_NAMESPACE'
want "leases only through a Role" 'resources: \["leases"\]'
if grep -q 'kind: ServiceMonitor' "$d"; then bad "ServiceMonitor must be off by default"; else ok "no ServiceMonitor by default"; fi
a=$tmp/all-options.yaml
if [ -f "$a" ]; then
  # With watchNamespaces set, Secrets must not be granted by the ClusterRole.
  if awk '/^kind: ClusterRole$/{c=1} /^---/{c=0} c && /"secrets"/{found=1} END{exit !found}' "$a"; then
    bad "watchNamespaces set, but the ClusterRole still grants Secrets"
  else
    ok "watchNamespaces set: Secrets only through Roles"
  fi
  [ "$(grep -c '^kind: Role$' "$a")" -ge 2 ] && ok "a Role per watched namespace" || bad "expected a Role per watched namespace"
fi

echo "== manifests parse"
# `kubectl apply --dry-run=client` cannot be used here: kubectl 1.32 still asks a
# server for discovery (REST mapping) and fails without one. So the rendered YAML is
# parsed and checked structurally instead: every document is a mapping with
# apiVersion, kind and metadata.name, namespaced objects carry a namespace, and no
# object appears twice.
for f in "$tmp/defaults.yaml" "$tmp/all-options.yaml" "$tmp/single-replica.yaml" \
         "$tmp/some-controllers.yaml" "$tmp/crds.yaml" "$repo/manifests/install/capstan.yaml"; do
  [ -f "$f" ] || continue
  if python3 - "$f" <<'PY'
import sys, yaml
cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
seen, errors = set(), []
with open(sys.argv[1]) as fh:
    docs = [d for d in yaml.safe_load_all(fh) if d is not None]
for d in docs:
    if not isinstance(d, dict):
        errors.append(f"not a mapping: {d!r:.60}"); continue
    kind, meta = d.get("kind"), d.get("metadata") or {}
    if not d.get("apiVersion") or not kind or not meta.get("name"):
        errors.append(f"missing apiVersion/kind/metadata.name: {kind} {meta.get('name')}"); continue
    if kind not in cluster_scoped and not meta.get("namespace"):
        errors.append(f"{kind}/{meta['name']} has no namespace")
    key = (d["apiVersion"].split("/")[0], kind, meta.get("namespace"), meta["name"])
    if key in seen:
        errors.append(f"duplicate {key}")
    seen.add(key)
for e in errors:
    print("  " + e, file=sys.stderr)
print(f"  {len(docs)} objects")
sys.exit(1 if errors or not docs else 0)
PY
  then ok "parses: $(basename "$f")"; else bad "invalid manifest: $(basename "$f")"; fi
done

echo "== CRDs: charts/capstan/files/crds against crds/, and their templates"
shopt -s nullglob
src=("$repo"/crds/*.yaml)
if [ "${#src[@]}" -eq 0 ]; then
  echo "skip: crds/ has no CRDs yet (make generate writes them), nothing to compare"
elif diff -r -x '.*' "$repo/crds" "$chart/files/crds" > "$tmp/crds.diff" 2>&1; then
  ok "charts/capstan/files/crds matches crds/ (${#src[@]} files)"
else
  bad "charts/capstan/files/crds differs from crds/; run charts/capstan/sync-crds.sh"
  head -50 "$tmp/crds.diff" >&2
fi
[ -e "$chart/crds" ] && bad "the chart has a crds/ folder: Helm never upgrades it, and its CRDs fail the templated ones' ownership check" || ok "no crds/ folder in the chart"
count_crds() { python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "CustomResourceDefinition"]
keep = sum(1 for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep")
helm = sum(1 for d in docs if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "Helm")
print(len(docs), keep, helm)' "$1"; }
[ "$(count_crds "$tmp/defaults.yaml")" = "0 0 0" ] && ok "no CRDs by default (crds.install false)" || bad "CRDs rendered by default"
[ "$(count_crds "$tmp/crds.yaml")" = "${#src[@]} ${#src[@]} ${#src[@]}" ] && ok "crds.install: every CRD, kept on uninstall, with the chart's labels" || bad "crds.install renders $(count_crds "$tmp/crds.yaml") (CRDs, kept, labelled), want ${#src[@]} each"
[ "$(count_crds "$tmp/crds-not-kept.yaml")" = "${#src[@]} 0 ${#src[@]}" ] && ok "crds.keep=false: no keep annotation" || bad "crds.keep=false renders $(count_crds "$tmp/crds-not-kept.yaml")"

echo "== alerts and dashboard"
promtool=$("$repo/tests/promtool/build.sh")
render alerts --set metrics.prometheusRule.enabled=true --set metrics.dashboard.enabled=true
python3 - "$tmp/alerts.yaml" "$tmp/rules.yaml" "$repo/docs/runbook.md" <<'PY' && ok "PrometheusRule renders the rule file; every alert has a summary, a description and a runbook section" || bad "PrometheusRule"
import sys, yaml, re, json
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rule = [d for d in docs if d["kind"] == "PrometheusRule"]
dash = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
assert len(rule) == 1 and len(dash) == 1, "PrometheusRule and dashboard ConfigMap"
json.loads(dash[0]["data"]["capstan.json"])
groups = rule[0]["spec"]["groups"]
yaml.safe_dump({"groups": groups}, open(sys.argv[2], "w"))
runbook = open(sys.argv[3]).read()
anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-")) for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
for g in groups:
    for r in g["rules"]:
        a = r.get("annotations", {})
        assert a.get("summary") and a.get("description"), r["alert"]
        anchor = a.get("runbook_url", "").rsplit("#", 1)[-1]
        assert anchor in anchors, f"{r['alert']}: no runbook section #{anchor}"
PY
"$promtool" check rules "$tmp/rules.yaml" > "$tmp/promtool.out" 2>&1 && ok "promtool check rules: $(grep -o '[0-9]* rules found' "$tmp/promtool.out")" || { cat "$tmp/promtool.out" >&2; bad "promtool check rules"; }
"$promtool" test rules "$repo/tests/alerts/alerts_test.yaml" > "$tmp/promtool-test.out" 2>&1 && ok "promtool test rules: the main alerts' unit tests pass" || { cat "$tmp/promtool-test.out" >&2; bad "promtool test rules"; }
python3 "$chart/rbac-table.py" "$helm" --check && ok "README.md's RBAC table is the chart's rules" || bad "README.md's RBAC table differs from the chart; run charts/capstan/rbac-table.py $helm"
python3 "$chart/dashboard.py" --check && ok "files/dashboard.json is what dashboard.py writes" || bad "files/dashboard.json differs from dashboard.py's output; run charts/capstan/dashboard.py"

echo "== drift: manifests/install/capstan.yaml"
"$repo/manifests/render.sh" --no-sync "$tmp/capstan.yaml" 2> "$tmp/render.err" || { cat "$tmp/render.err" >&2; bad "render"; }
if [ -f "$tmp/capstan.yaml" ] && diff -u "$repo/manifests/install/capstan.yaml" "$tmp/capstan.yaml" > "$tmp/drift.diff"; then
  ok "manifests/install/capstan.yaml is up to date"
else
  bad "manifests/install/capstan.yaml is stale; run manifests/render.sh and commit it"
  head -80 "$tmp/drift.diff" >&2
fi

if [ "$fail" -ne 0 ]; then echo "chart check FAILED" >&2; exit 1; fi
echo "chart check passed"
