#!/usr/bin/env bash
# `make demo`: Capstan's main job on a local default environment.
#
# 1. Starts the local control plane (kube-apiserver, kube-controller-manager, etcd), the
#    AWS emulator, OpenBao and PostgreSQL with `capstan-testenv up`; kubeconfig at
#    .demo/kubeconfig.
# 2. Declares the local ClusterConnections (tests/demo/connections.yaml: the same names
#    as the production-shaped ones in manifests/examples/00-connections.yaml, pointed
#    at the local emulators).
# 3. Runs `capstan run` as the Helm chart installs it (its ServiceAccount, RBAC and
#    arguments, from `helm template`; `capstan-testenv up --install-capstan`) and applies
#    manifests/examples/. Any request the API server refuses it fails the verdict.
# 4. Shows what happens. Interactive: after the verdict, tests/demo/watch.py refreshes
#    a live table of the objects with the last Events, runs a flash sale on shop/web
#    (CPU up, scale-up, the sale's floor, scale-down), a SecretRotation every 45 s, and
#    on Ctrl-C prints a summary (rotations, scaling decisions, runs) and tears
#    everything down. Capstan's raw log stays in .demo/capstan.log.
#    With --ci: checks the verdict and exits: connections reachable; the Vault API key
#    rotated; the card numbers' transit key rotated to version 2 and delivered as its
#    name and version; the shop's RDS master password changed on its database (through the
#    emulator's RDS model); the PostgreSQL user rotated, stored in Secrets Manager, delivered as a
#    DATABASE_URL that logs in, the api Deployment restarted for it; the shop's reporting
#    job given a PostgreSQL user Vault created (dynamic credentials, leased); the ECS service
#    scaled up on a CPU spike; a tenant refused by a connection that does not list it,
#    and one refused a Vault path outside its connection's scope; the shop's Pipeline
#    takes revision 1.4.2 through tests, build, staging, smoke test, an approval by
#    alice (impersonated; bob's in her name is refused) and production (by the digest
#    staging pinned), then revision 1.4.3 fails its smoke test and staging
#    is rolled back while production keeps 1.4.2; the demo shows the run history, the
#    stage table and the Events.
set -euo pipefail
cd "$(dirname "$0")/.."
ci=false
[ "${1:-}" = "--ci" ] && ci=true
state=${CAPSTAN_DEMO_DIR:-$PWD/.demo}
rm -rf "$state" && mkdir -p "$state"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

echo "==> building capstan and the environment"
cargo build -q -p capstan -p capstan-testenv --bins
bin=target/debug

echo "==> starting the local control plane, AWS emulator, OpenBao and PostgreSQL"
"$bin/capstan-testenv" up --state-dir "$state" --services k8s,aws,vault,postgres \
  --install-capstan capstan-system --capstan-arg=--metrics-addr=127.0.0.1:0 \
  --capstan-arg=--log-format=text --capstan-arg=--identity=capstan-demo \
  >"$state/testenv.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 180); do [ -f "$state/env" ] && break; sleep 1; done
[ -f "$state/env" ] || { echo "environment did not start; see $state/testenv.log" >&2; tail -20 "$state/testenv.log" >&2; exit 1; }
# shellcheck disable=SC1091
source "$state/env"
export KUBECONFIG
echo "    kubeconfig: $KUBECONFIG (kubectl works against it while the demo runs)"

k() { kubectl --kubeconfig "$KUBECONFIG" "$@"; }

echo "==> Capstan's namespace, credentials for the local AWS account and OpenBao"
k create namespace capstan-system --dry-run=client -o yaml | k apply -f - >/dev/null
k -n capstan-system create secret generic demo-aws-credentials \
  --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" --dry-run=client -o yaml | k apply -f - >/dev/null
k -n capstan-system create secret generic demo-vault-token \
  --from-literal=token="$VAULT_TOKEN" --dry-run=client -o yaml | k apply -f - >/dev/null
for ns in shop payments; do
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
done
k label namespace payments team=payments --overwrite >/dev/null
sed -e "s|\${AWS_ENDPOINT_URL}|$AWS_ENDPOINT_URL|g" -e "s|\${VAULT_ADDR}|$VAULT_ADDR|g" \
  -e "s|\${AWS_REGION}|$AWS_REGION|g" tests/demo/connections.yaml | k apply -f -

echo "==> the shop's ECS service in the emulator, under a CPU spike (150% of its tasks' CPU)"
# ServiceScaling shop/web scales ECS service web of cluster shop: create both, and publish
# the AWS/ECS CPU and memory datapoints ECS would, so the demo shows a scale-up.
"${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import datetime, os
import boto3
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
ecs, cw = boto3.client("ecs", **kw), boto3.client("cloudwatch", **kw)
ecs.create_cluster(clusterName="shop")
ecs.create_service(cluster="shop", serviceName="web", desiredCount=3)
dims = [{"Name": "ClusterName", "Value": "shop"}, {"Name": "ServiceName", "Value": "web"}]
now = datetime.datetime.now(datetime.timezone.utc)
cw.put_metric_data(Namespace="AWS/ECS", MetricData=[
    {"MetricName": "CPUUtilization", "Dimensions": dims, "Value": 150.0, "Unit": "Percent", "Timestamp": now},
    {"MetricName": "MemoryUtilization", "Dimensions": dims, "Value": 50.0, "Unit": "Percent", "Timestamp": now},
])
PY

echo "==> the shop's staging and production ECS services and its ECR repository (images 1.4.2, 1.4.3)"
# Pipeline shop/shop deploys ECS service shop of clusters staging and production. The
# emulator's ECS model (tests/env/moto_ext) starts each deployment's tasks in 1 s.
"${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import json, os, uuid
import boto3
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
ecs, ecr = boto3.client("ecs", **kw), boto3.client("ecr", **kw)
ecr.create_repository(repositoryName="shop")
def push(tag):
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "layers": [{"digest": "sha256:" + uuid.uuid4().hex * 2}]}
    return ecr.put_image(repositoryName="shop", imageTag=tag, imageManifest=json.dumps(manifest))
for tag in ("1.4.2", "1.4.3"):
    push(tag)
registry = ecr.describe_repositories(repositoryNames=["shop"])["repositories"][0]["repositoryUri"]
for cluster in ("staging", "production"):
    ecs.create_cluster(clusterName=cluster)
    td = ecs.register_task_definition(family=f"shop-{cluster}", containerDefinitions=[{
        "name": "app", "image": f"{registry}:1.4.1", "memory": 512,
        "environment": [{"name": "SHOP_ENV", "value": cluster}],
        "portMappings": [{"containerPort": 8080}],
        "healthCheck": {"command": ["CMD-SHELL", "curl -f http://localhost:8080/health"]},
        "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": f"shop-{cluster}"}},
    }])["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(cluster=cluster, serviceName="shop", taskDefinition=td, desiredCount=2,
                       tags=[{"key": "capstan.dev/moto-task-start-seconds", "value": "1"}])
PY
k -n shop create serviceaccount image-builder --dry-run=client -o yaml | k apply -f - >/dev/null

echo "==> starting capstan as the chart installs it (ServiceAccount $(cat "$state/capstan.user"))"
mapfile -t capstan_args < "$state/capstan.args"
echo "    capstan ${capstan_args[*]}"
KUBECONFIG="$state/capstan.kubeconfig" POD_NAMESPACE=capstan-system \
  "$bin/capstan" "${capstan_args[@]}" >"$state/capstan.log" 2>&1 &
pids+=($!)

echo "==> the orders database: role app in a local PostgreSQL, its admin credentials, the api Deployment"
psql -q -v ON_ERROR_STOP=1 "$POSTGRES_URL" >/dev/null <<'SQL'
CREATE DATABASE orders;
CREATE ROLE app LOGIN;
GRANT CONNECT ON DATABASE orders TO app;
SQL
k -n payments create secret generic orders-db-admin --from-literal=username="$PGUSER" \
  --from-literal=password="$PGPASSWORD" --dry-run=client -o yaml | k apply -f - >/dev/null
k -n payments create deployment api --image=registry.example.com/orders-api:1.0 \
  --dry-run=client -o yaml | k apply -f - >/dev/null

echo "==> the shop's RDS instance shop-db: role shop_master in the local PostgreSQL, mapped by"
echo "    the emulator's RDS model (tests/env/moto_ext), which applies a password change after 3 s"
psql -q -v ON_ERROR_STOP=1 "$POSTGRES_URL" >/dev/null <<'SQL'
CREATE ROLE shop_master LOGIN PASSWORD 'initial-master-password';
SQL
"${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import json, os
import boto3
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
# The login the RDS model changes master passwords with (RDS's own rdsadmin).
boto3.client("secretsmanager", **kw).create_secret(
    Name="moto-postgres-admin",
    SecretString=json.dumps({"username": os.environ["PGUSER"], "password": os.environ["PGPASSWORD"]}))
boto3.client("rds", **kw).create_db_instance(
    DBInstanceIdentifier="shop-db", DBInstanceClass="db.t3.micro", Engine="postgres",
    MasterUsername="shop_master", MasterUserPassword="initial-master-password",
    Tags=[{"Key": "capstan.dev/moto-postgres", "Value": f"{os.environ['PGHOST']}:{os.environ['PGPORT']}"},
          {"Key": "capstan.dev/moto-postgres-admin", "Value": "moto-postgres-admin"},
          {"Key": "capstan.dev/moto-apply-seconds", "Value": "3"}])
PY

echo "==> the card numbers' transit key in OpenBao (version 1)"
"${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import json, os, urllib.request
def bao(path, body):
    req = urllib.request.Request(f"{os.environ['VAULT_ADDR']}/v1/{path}", data=json.dumps(body).encode(),
                                 headers={"X-Vault-Token": os.environ["VAULT_TOKEN"]}, method="POST")
    urllib.request.urlopen(req).read()
bao("sys/mounts/transit", {"type": "transit"})
bao("transit/keys/card-numbers", {})
PY

echo "==> OpenBao's database secrets engine, for the shop's reporting credentials"
"${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import json, os, urllib.request
req = urllib.request.Request(f"{os.environ['VAULT_ADDR']}/v1/sys/mounts/database", data=json.dumps({"type": "database"}).encode(),
                             headers={"X-Vault-Token": os.environ["VAULT_TOKEN"]}, method="POST")
urllib.request.urlopen(req).read()
PY
k -n shop create secret generic orders-vault-admin --from-literal=username="$PGUSER" \
  --from-literal=password="$PGPASSWORD" --dry-run=client -o yaml | k apply -f - >/dev/null

echo "==> applying manifests/examples (the production-shaped connections are skipped; the"
echo "    orders database example is pointed at the local PostgreSQL without TLS)"
for f in manifests/examples/*.yaml; do
  case "$f" in
    *00-connections.yaml) continue ;;
    *30-pipeline-shop.yaml)
      # The example's registry is in eu-west-1; the local emulator's is in $AWS_REGION.
      sed -e "s|dkr.ecr.eu-west-1.amazonaws.com|dkr.ecr.$AWS_REGION.amazonaws.com|g" "$f" | k apply -f - ;;
    *11-secretrotation-postgres-secretsmanager.yaml|*16-secretrotation-dynamic-reporting.yaml)
      sed -e "s|host: orders.cluster-abc.eu-west-1.rds.amazonaws.com|host: $PGHOST|" \
        -e "s|port: 5432|port: $PGPORT|" -e "s|sslMode: verifyFull|sslMode: disable|" \
        -e "s|sslmode=verify-full|sslmode=disable|" "$f" | k apply -f - ;;
    *14-secretrotation-rds-master.yaml)
      # The emulated instance's endpoint is not reachable: log in at the local PostgreSQL.
      sed -e '/caSecretRef:/,+1d' \
        -e "s|tls: verifyFull|tls: disable\n      endpoint: {host: \"$PGHOST\", port: $PGPORT}|" "$f" | k apply -f - ;;
    *) k apply -f "$f" ;;
  esac
done

# No kubelet runs here, so nothing rolls the api Deployment out: the demo plays the
# Deployment controller, reporting each restart Capstan asks for as rolled out.
play_deployment_controller() {
  while true; do
    gen=$(k -n payments get deployment api -o jsonpath='{.metadata.generation}' 2>/dev/null || echo "")
    [ -n "$gen" ] && k -n payments patch deployment api --subresource=status --type=merge -p \
      "{\"status\":{\"observedGeneration\":$gen,\"replicas\":1,\"updatedReplicas\":1,\"readyReplicas\":1,\"availableReplicas\":1}}" >/dev/null 2>&1 || true
    sleep 1
  done
}
play_deployment_controller &
pids+=($!)

# No kubelet either: the demo plays it for the Pipeline's Job stages. Each stage's Pod
# (created by the real Job controller) is moved to Succeeded, the build writing its
# result to the termination message; the smoke tests of revision 1.4.3 fail.
play_kubelet() {
  while true; do
    k -n shop get pods -l capstan.dev/stage -o json 2>/dev/null | python3 -c '
import json, sys
for pod in json.load(sys.stdin)["items"]:
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        continue
    stage = pod["metadata"]["labels"]["capstan.dev/stage"]
    args = " ".join(pod["spec"]["containers"][0].get("args", []))
    code, message = 0, ""
    if stage.startswith("smoke") and "--expect-version=1.4.3" in args:
        code, message = 1, "smoke test: /health answered 500"
    if stage == "build":
        message = json.dumps({"imageDigest": "sha256:" + "ab" * 32})
    print(pod["metadata"]["name"], code, json.dumps(message))
' | while read -r name code message; do
      now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
      phase=$([ "$code" = 0 ] && echo Succeeded || echo Failed)
      k -n shop patch pod "$name" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"$phase\",\"containerStatuses\":[{\"name\":\"stage\",\"ready\":false,\"restartCount\":0,\"image\":\"\",\"imageID\":\"\",\"state\":{\"terminated\":{\"exitCode\":$code,\"message\":$message,\"startedAt\":\"$now\",\"finishedAt\":\"$now\"}}}]}}" >/dev/null 2>&1 || true
    done
    sleep 1
  done
}
play_kubelet &
pids+=($!)

show() {
  echo
  k get clusterconnections.capstan.dev
  echo
  # The printer columns show Ready with its reason (and SecretRotation's message).
  k get secretrotations.capstan.dev -A
  echo
  k get servicescalings.capstan.dev,pipelines.capstan.dev -A -o wide
}

echo "==> waiting for the verdict"
k wait --for=condition=Ready clusterconnection --all --timeout=60s
ok=true
verdict() { # kind ns name reason
  local got
  for _ in $(seq 1 60); do
    got=$(k -n "$2" get "$1" "$3" -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}' 2>/dev/null || true)
    [ "$got" = "$4" ] && { echo "    ok: $1 $2/$3 reports $4"; return 0; }
    sleep 1
  done
  echo "    FAIL: $1 $2/$3 reports '${got}', expected $4" >&2; ok=false
}
verdict secretrotation payments card-vault-key CredentialCurrent
verdict secretrotation payments orders-db CredentialCurrent
url=$(k -n payments get secret orders-db-app -o jsonpath='{.data.DATABASE_URL}' | base64 -d)
user=$(psql -At "$url" -c 'select current_user' 2>/dev/null || true)
if [ -n "$user" ]; then echo "    ok: the delivered DATABASE_URL logs in to PostgreSQL as $user (password from Secrets Manager)"
else echo "    FAIL: the delivered DATABASE_URL does not log in" >&2; ok=false; fi
restarted=$(k -n payments get deployment api -o jsonpath='{.spec.template.metadata.annotations.capstan\.dev/restarted-for}')
if [ -n "$restarted" ]; then echo "    ok: Deployment payments/api restarted for version $restarted"
else echo "    FAIL: Deployment payments/api was not restarted" >&2; ok=false; fi
verdict secretrotation payments card-encryption-key CredentialCurrent
version=$(k -n payments get secret card-encryption-key -o jsonpath='{.data.TRANSIT_KEY_VERSION}' | base64 -d)
latest=$(python3 -c 'import json, os, urllib.request; r = urllib.request.Request(os.environ["VAULT_ADDR"] + "/v1/transit/keys/card-numbers", headers={"X-Vault-Token": os.environ["VAULT_TOKEN"]}); print(json.load(urllib.request.urlopen(r))["data"]["latest_version"])')
if [ "$version" = "2" ] && [ "$latest" = "2" ]; then echo "    ok: transit key card-numbers rotated to version 2, delivered as its name and version (no key material)"
else echo "    FAIL: transit key delivered version '$version', Vault's latest '$latest' (expected 2)" >&2; ok=false; fi
verdict secretrotation shop shop-db-master CredentialCurrent
master=$("${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import json, os
import boto3
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
value = boto3.client("secretsmanager", **kw).get_secret_value(SecretId="shop/db-master")["SecretString"]
print(json.loads(value)["password"])
PY
)
if PGPASSWORD="$master" psql -At -h "$PGHOST" -p "$PGPORT" -U shop_master -d postgres -c 'select 1' >/dev/null 2>&1 \
  && ! PGPASSWORD=initial-master-password psql -At -h "$PGHOST" -p "$PGPORT" -U shop_master -d postgres -c 'select 1' >/dev/null 2>&1; then
  echo "    ok: RDS shop-db's master password changed on the database (the value in Secrets Manager logs in, the old one does not)"
else echo "    FAIL: the master password in Secrets Manager does not log in, or the old one still does" >&2; ok=false; fi
verdict secretrotation shop reporting-db CredentialCurrent
url=$(k -n shop get secret reporting-db -o jsonpath='{.data.DATABASE_URL}' | base64 -d)
lease=$(k -n shop get secretrotation reporting-db -o jsonpath='{.status.lease.idHash} expires {.status.lease.expireTime}, renewed at {.status.lease.nextRenewalTime}')
user=$(psql -At "$url" -c 'select current_user' 2>/dev/null || true)
if [ -n "$user" ] && [ "$user" != "$PGUSER" ]; then echo "    ok: the reporting job's DATABASE_URL logs in as $user, a user Vault created (lease $lease)"
else echo "    FAIL: the reporting job's dynamic credentials do not log in ('$user')" >&2; ok=false; fi
verdict servicescaling shop web Evaluated
scaled=$("${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import os, time
import boto3
ecs = boto3.client("ecs", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
for _ in range(30):
    n = ecs.describe_services(cluster="shop", services=["web"])["services"][0]["desiredCount"]
    if n > 3:
        break
    time.sleep(1)
print(n)
PY
)
if [ "$scaled" -gt 3 ]; then echo "    ok: ECS service shop/web scaled up from 3 to $scaled tasks on 150% CPU"
else echo "    FAIL: ECS service shop/web still has $scaled tasks" >&2; ok=false; fi
# Run shop-1 waits before production for a release manager: alice, bound to the chart's
# approver ClusterRole in namespace shop, approves it in her own name; bob, bound to it
# too, tries to approve in alice's name and the chart's ValidatingAdmissionPolicy
# refuses him (the approver must be the requester).
policy=$(grep -o -- '--approval-policy=[^ ]*' "$state/capstan.args" | cut -d= -f2)
k -n shop create rolebinding release-managers --clusterrole="${policy%-approvals}-approver" \
  --user=alice --user=bob --dry-run=client -o yaml | k apply -f - >/dev/null
awaiting=""
for _ in $(seq 1 90); do
  awaiting=$(k -n shop get pipeline shop -o jsonpath='{.status.conditions[?(@.type=="AwaitingApproval")].reason}')
  [ "$awaiting" = WaitingForApproval ] && break
  sleep 1
done
echo "    run shop-1 awaits approval ($awaiting); alice (group release-managers) approves it"
k --as=alice --as-group=release-managers -n shop create -f - <<'YAML' >/dev/null
apiVersion: capstan.dev/v1alpha1
kind: Approval
metadata:
  name: shop-1-production
spec:
  pipeline: shop
  runId: shop-1
  stage: approve-production
  decision: Approve
  approver:
    username: alice
    groups: [release-managers]
  comment: staging smoke test passed; dashboards green
YAML
if k --as=bob -n shop create -f - >/dev/null 2>"$state/forged.err" <<'YAML'
apiVersion: capstan.dev/v1alpha1
kind: Approval
metadata:
  name: forged
spec: { pipeline: shop, runId: shop-1, stage: approve-production, decision: Approve, approver: { username: alice } }
YAML
then echo "    FAIL: bob approved in alice's name" >&2; ok=false
else echo "    ok: bob's approval in alice's name was refused: $(tail -1 "$state/forged.err" | cut -c1-160)"; fi
verdict pipeline shop shop Succeeded
approver=$(k -n shop get pipeline shop -o jsonpath='{.status.stages[?(@.name=="approve-production")].approval.username}')
if [ "$approver" = alice ]; then echo "    ok: run shop-1's approval is recorded as alice's"
else echo "    FAIL: the approval recorded '$approver'" >&2; ok=false; fi
pinned=$(k -n shop get pipeline shop -o jsonpath='{.status.images}')
prod_image=$("${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import os
import boto3
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
ecs = boto3.client("ecs", **kw)
td = ecs.describe_services(cluster="production", services=["shop"])["services"][0]["taskDefinition"]
print(ecs.describe_task_definition(taskDefinition=td)["taskDefinition"]["containerDefinitions"][0]["image"])
PY
)
case "$prod_image" in
  *@sha256:*) echo "    ok: production runs $prod_image, the digest staging tested (pins: $pinned)" ;;
  *) echo "    FAIL: production runs $prod_image, not a digest" >&2; ok=false ;;
esac
echo "    revision 1.4.3: its smoke test fails"
k -n shop patch pipeline shop --type=merge -p '{"spec":{"revision":"1.4.3"}}' >/dev/null
rolled=""
for _ in $(seq 1 90); do
  rolled=$(k -n shop get pipeline shop -o jsonpath='{.status.conditions[?(@.type=="RolledBack")].reason}')
  [ "$rolled" = RollbackSucceeded ] && break
  sleep 1
done
if [ "$rolled" = RollbackSucceeded ]; then echo "    ok: run shop-2 failed its staging smoke test and staging was rolled back"
else echo "    FAIL: pipeline shop/shop RolledBack is '$rolled'" >&2; ok=false; fi
prod_after=$("${CAPSTAN_VENV:-.venv}/bin/python" - <<'PY'
import os
import boto3
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
ecs = boto3.client("ecs", **kw)
td = ecs.describe_services(cluster="production", services=["shop"])["services"][0]["taskDefinition"]
print(ecs.describe_task_definition(taskDefinition=td)["taskDefinition"]["containerDefinitions"][0]["image"])
PY
)
if [ "$prod_after" = "$prod_image" ]; then echo "    ok: production untouched by the failed run"
else echo "    FAIL: production changed to $prod_after" >&2; ok=false; fi
echo
echo "    the run history, the stage table and the Events a person would look at:"
k -n shop get pipeline shop -o jsonpath='{range .status.history[*]}    {.id}  {.revision}  {.outcome}  {.failedStage}{"\n"}{end}'
k -n shop get pipeline shop -o jsonpath='{range .status.stages[*]}    {.name}  {.phase}  {.message}{"\n"}{end}'
k -n shop get events --field-selector involvedObject.name=shop --sort-by=.metadata.creationTimestamp \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message | sed 's/^/    /' | tail -15
verdict secretrotation shop sneaky-card-key ConnectionNotAllowed
verdict secretrotation payments platform-signing-key ResourceNotAllowed
echo "==> the metrics the chart's alerts and dashboard use, on Capstan's /metrics"
admin=$(grep -o 'admin server listening[^=]*addr=[0-9.:]*' "$state/capstan.log" | head -1 | sed 's/.*addr=//')
if python3 -c 'import sys, urllib.request; open(sys.argv[2], "wb").write(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics").read())' \
    "$admin" "$state/metrics.txt" && python3 tests/alerts/check-names.py "$state/metrics.txt" | sed 's/^/    ok: /'; then :
else echo "    FAIL: a metric the alerts or the dashboard use is not exported (see $state/metrics.txt)" >&2; ok=false; fi

show
grep -E "ERROR|panicked" "$state/capstan.log" && { echo "capstan logged errors" >&2; ok=false; }
forbidden=$(python3 - "$CAPSTAN_AUDIT_LOG" "$(cat "$state/capstan.user")" <<'PY'
import json, sys
path, user = sys.argv[1], sys.argv[2]
for line in open(path):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("user", {}).get("username") == user and e.get("responseStatus", {}).get("code") == 403:
        print(f"  {e.get('verb')} {e.get('requestURI')}")
PY
)
if [ -z "$forbidden" ]; then echo "    ok: the API server refused Capstan nothing under the chart's RBAC"
else echo "    FAIL: the API server refused Capstan under the chart's RBAC:" >&2; echo "$forbidden" >&2; ok=false; fi

if $ci; then
  $ok && echo "demo verdict: PASS" || { echo "demo verdict: FAIL (logs: $state)" >&2; exit 1; }
  exit 0
fi
echo
echo "Capstan is running; its raw log is $state/capstan.log. What follows refreshes in place:"
echo "a flash sale on shop/web, a rotation every 45 s, the pipeline. Ctrl-C ends it with a summary."
sleep 3
# CAPSTAN_DEMO_WATCH_SECONDS: stop by itself after that long (as Ctrl-C would).
watch_for=()
[ -n "${CAPSTAN_DEMO_WATCH_SECONDS:-}" ] && watch_for=(--for "$CAPSTAN_DEMO_WATCH_SECONDS")
"${CAPSTAN_VENV:-.venv}/bin/python" tests/demo/watch.py "$state" "$admin" "${watch_for[@]}" || true
