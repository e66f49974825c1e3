#!/usr/bin/env python3
"""What `make demo` shows a person after its verdict, until Ctrl-C:

- a live table of Capstan's objects (Ready, reason, what happens next), refreshed in
  place, with the last Events under it;
- a simulated sale on ECS service shop/web: the sale's schedule window holds a floor of
  10 tasks, CPU rises to 140% (the service scales up), falls to 40% (the floor holds),
  then, after the window, to 20% (it scales back down to its minimum);
- SecretRotation payments/ticker rotating every 45 s while the person watches;
- the shop Pipeline's runs;

and on Ctrl-C a summary: what rotated and how often, the scaling decisions, the runs.
Capstan's raw log stays in the file the demo names.

Usage: watch.py STATE_DIR ADMIN_ADDR [--for SECONDS]   (--for: stop by itself, as Ctrl-C)
Needs boto3 (the project's venv) and kubectl with KUBECONFIG set."""
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import boto3

STATE, ADMIN = sys.argv[1], sys.argv[2]
STOP_AFTER = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--for" else None
TTY = sys.stdout.isatty()
AWS = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
cw, ecs = boto3.client("cloudwatch", **AWS), boto3.client("ecs", **AWS)
DIMS = [{"Name": "ClusterName", "Value": "shop"}, {"Name": "ServiceName", "Value": "web"}]


def kubectl(*args, stdin=None):
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, check=False)


def objects(kind):
    out = kubectl("get", kind, "-A", "-o", "json")
    return json.loads(out.stdout).get("items", []) if out.returncode == 0 else []


def metrics():
    """{sample name with labels: value} from Capstan's /metrics."""
    try:
        text = urllib.request.urlopen(f"http://{ADMIN}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                pass
    return values


def total(m, prefix):
    """Sums of `prefix{...}` samples by their labels' text."""
    return {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix + "{")}


def ago(ts):
    if not ts:
        return ""
    t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    s = int((dt.datetime.now(dt.timezone.utc) - t).total_seconds())
    return f"in {-s}s" if s < 0 else f"{s}s ago"


def ready(o):
    for c in (o.get("status") or {}).get("conditions", []):
        if c["type"] == "Ready":
            return c["status"], c.get("reason", "")
    return "-", ""


def next_of(kind, o):
    st = o.get("status") or {}
    if kind == "SecretRotation":
        nxt = st.get("nextRotationTime")
        when = f"next rotation {ago(nxt)}" if nxt else "no rotation scheduled"
        return f"{when}; rotated {st.get('rotationCount', 0)}x"
    if kind == "ServiceScaling":
        sched = ",".join(st.get("activeSchedules", [])) or "none"
        cpu = next((m.get("currentUtilizationPercent") for m in st.get("currentMetrics", []) if m.get("name") == "cpu"), "?")
        return f"tasks {st.get('runningReplicas', '?')} -> {st.get('desiredReplicas', '?')}; cpu {cpu}%; schedule {sched}"
    if kind == "Pipeline":
        return f"run {st.get('runId', '-')} {st.get('phase', '-')} {st.get('currentStage') or ''}".rstrip()
    return ""


def table():
    rows = [("KIND", "NAMESPACE/NAME", "READY", "REASON", "WHAT NEXT")]
    for kind, plural in [("ClusterConnection", "clusterconnections"), ("SecretRotation", "secretrotations"),
                         ("ServiceScaling", "servicescalings"), ("Pipeline", "pipelines")]:
        for o in objects(plural + ".capstan.dev"):
            meta = o["metadata"]
            name = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
            status, reason = ready(o)
            rows.append((kind, name, status, reason, next_of(kind, o)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    events = objects("events.events.k8s.io")
    events = [e for e in events if e.get("regarding", {}).get("apiVersion", "").startswith("capstan.dev/")]
    events.sort(key=lambda e: e.get("eventTime") or e.get("deprecatedLastTimestamp") or "")
    lines += ["", "LAST EVENTS"]
    for e in events[-6:]:
        r = e.get("regarding", {})
        note = re.sub(r"\s+", " ", e.get("note", ""))[:100]
        lines.append(f"  {ago(e.get('eventTime') or e.get('deprecatedLastTimestamp'))[:9]:>9}  "
                     f"{r.get('kind', '')} {r.get('namespace', '')}/{r.get('name', '')}  {e.get('reason', '')}: {note}")
    return "\n".join(lines)


def put_cpu(percent):
    now = dt.datetime.now(dt.timezone.utc)
    cw.put_metric_data(Namespace="AWS/ECS", MetricData=[
        {"MetricName": "CPUUtilization", "Dimensions": DIMS, "Value": percent, "Unit": "Percent", "Timestamp": now},
        {"MetricName": "MemoryUtilization", "Dimensions": DIMS, "Value": 40.0, "Unit": "Percent", "Timestamp": now},
    ])


def setup(start):
    # The sale: a schedule window opening at the next minute, for three minutes, with a
    # floor of 10 tasks; a scale-down stabilization of 30 s so the fall shows today.
    opens = (start + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
    patch = {"spec": {
        "schedules": [{"name": "flash-sale", "start": opens.isoformat(),
                       "end": (opens + dt.timedelta(minutes=3)).isoformat(), "minReplicas": 10}],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30,
                                   "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]}},
    }}
    out = kubectl("-n", "shop", "patch", "servicescaling", "web", "--type=merge", "-p", json.dumps(patch))
    if out.returncode != 0:
        print("could not set up the sale:", out.stderr.strip(), file=sys.stderr)
    ticker = {
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": {"name": "ticker", "namespace": "payments"},
        "spec": {"connectionRef": {"name": "vault-payments"},
                 "backend": {"vault": {"mount": "secret", "path": "card-processor/demo-ticker"}},
                 "target": {"none": {}}, "schedule": {"interval": "45s"}, "generator": {"length": 32}},
    }
    out = kubectl("apply", "-f", "-", stdin=json.dumps(ticker))
    if out.returncode != 0:
        print("could not create the ticker:", out.stderr.strip(), file=sys.stderr)
    return opens


def cpu_for(elapsed, opens_in):
    """The sale's CPU curve, by seconds since the watch started."""
    if elapsed < opens_in + 15:
        return 55.0
    if elapsed < opens_in + 90:
        return 140.0
    if elapsed < opens_in + 180:
        return 40.0
    return 20.0


def main():
    start = dt.datetime.now(dt.timezone.utc)
    opens = setup(start)
    opens_in = (opens - start).total_seconds()
    first = metrics()
    began = time.monotonic()
    print(f"Capstan's raw log: {STATE}/capstan.log. The sale opens at {opens:%H:%M} UTC. Ctrl-C ends the demo.")
    try:
        while True:
            elapsed = time.monotonic() - began
            put_cpu(cpu_for(elapsed, opens_in))
            phase = ("before the sale" if elapsed < opens_in else "the sale: CPU rising" if elapsed < opens_in + 90
                     else "the sale: CPU back down, the floor holds" if elapsed < opens_in + 180
                     else "after the sale: scaling down")
            screen = f"Capstan demo  {dt.datetime.now():%H:%M:%S}  ({phase}; Ctrl-C for the summary)\n\n{table()}\n"
            if TTY:
                sys.stdout.write("\x1b[H\x1b[2J" + screen)
            else:
                sys.stdout.write(screen + "\n")
            sys.stdout.flush()
            if STOP_AFTER is not None and elapsed >= STOP_AFTER:
                break
            time.sleep(5)
    except KeyboardInterrupt:
        pass
    summary(first, metrics(), time.monotonic() - began)


def summary(first, last, seconds):
    print(f"\nSummary of the last {seconds:.0f} s:")
    rot_first = total(first, "capstan_secret_rotation_rotations_total")
    for labels, v in sorted(total(last, "capstan_secret_rotation_rotations_total").items()):
        print(f"  rotations {labels}: {v - rot_first.get(labels, 0):.0f}")
    for o in objects("secretrotations.capstan.dev"):
        st = o.get("status") or {}
        print(f"  {o['metadata']['namespace']}/{o['metadata']['name']}: rotated {st.get('rotationCount', 0)} times"
              f" in all, last {ago(st.get('lastRotationTime')) or 'never'}")
    ops_first = total(first, "capstan_service_scaling_scale_operations_total")
    for labels, v in sorted(total(last, "capstan_service_scaling_scale_operations_total").items()):
        print(f"  scaling decisions {labels}: {v - ops_first.get(labels, 0):.0f}")
    for e in sorted(objects("events.events.k8s.io"), key=lambda e: e.get("eventTime") or ""):
        if e.get("regarding", {}).get("kind") == "ServiceScaling" and e.get("reason") in ("ScaledUp", "ScaledDown"):
            print(f"    {ago(e.get('eventTime'))}: {e.get('note', '')[:110]}")
    runs_first = total(first, "capstan_pipeline_runs_total")
    for labels, v in sorted(total(last, "capstan_pipeline_runs_total").items()):
        print(f"  pipeline runs {labels}: {v:.0f} in all ({v - runs_first.get(labels, 0):.0f} while watching)")
    print(f"Capstan's raw log: {STATE}/capstan.log")


main()
