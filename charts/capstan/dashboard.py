#!/usr/bin/env python3
"""Writes charts/capstan/files/dashboard.json, Capstan's Grafana dashboard, from the
panel list below (easier to review than the JSON). ci-check.sh fails when the JSON is
not what this script writes. Every expression uses only metric families the manager
exports; the demo checks that against a real /metrics (tests/demo.sh)."""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, width, [(expr, legend)]), by row.
ROWS = [
    ("Capstan", [
        ("Leader", "none", 6, [("sum by (instance) (capstan_leader)", "{{instance}}")]),
        ("Objects not ready, by kind and reason", "none", 9,
         [("count by (kind, reason) (capstan_object_ready == 0)", "{{kind}} {{reason}}")]),
        ("Kubernetes API requests, by code", "reqps", 9,
         [("sum by (code) (rate(capstan_kube_requests_total[5m]))", "{{code}}")]),
    ]),
    ("Rotations", [
        ("Rotations, by outcome", "ops", 8,
         [("sum by (outcome) (rate(capstan_secret_rotation_rotations_total[15m]))", "{{outcome}}")]),
        ("Rotation duration p50 / p95", "s", 8,
         [("histogram_quantile(0.5, sum by (le) (rate(capstan_secret_rotation_rotation_duration_seconds_bucket[1h])))", "p50"),
          ("histogram_quantile(0.95, sum by (le) (rate(capstan_secret_rotation_rotation_duration_seconds_bucket[1h])))", "p95")]),
        ("Time to next rotation", "s", 8,
         [("capstan_secret_rotation_next_rotation_timestamp_seconds - time()", "{{namespace}}/{{name}}")]),
        ("Credential age", "s", 12,
         [("time() - capstan_secret_rotation_last_rotation_timestamp_seconds", "{{namespace}}/{{name}}")]),
        ("Overdue and stuck", "none", 12,
         [("sum(capstan_secret_rotation_overdue)", "overdue"),
          ("sum(capstan_secret_rotation_objects_stuck)", "stuck")]),
    ]),
    ("Scaling", [
        ("Utilization against target", "percent", 12,
         [("capstan_service_scaling_utilization_percent", "{{namespace}}/{{name}} {{metric}}"),
          ("capstan_service_scaling_target_utilization_percent", "{{namespace}}/{{name}} {{metric}} target")]),
        ("Desired, running and maximum tasks", "none", 12,
         [("capstan_service_scaling_desired_replicas", "{{namespace}}/{{name}} desired"),
          ("capstan_service_scaling_running_replicas", "{{namespace}}/{{name}} running"),
          ("capstan_service_scaling_max_replicas", "{{namespace}}/{{name}} max")]),
        ("Scale operations, by direction", "ops", 12,
         [("sum by (direction) (rate(capstan_service_scaling_scale_operations_total[15m]))", "{{direction}}")]),
        ("Metric reads without a value", "ops", 12,
         [("sum(rate(capstan_service_scaling_metric_read_failures_total[15m]))", "failed reads")]),
    ]),
    ("Pipelines", [
        ("Runs, by outcome", "ops", 8,
         [("sum by (outcome) (increase(capstan_pipeline_runs_total[1h]))", "{{outcome}}")]),
        ("Stage duration p50 / p95, by type", "s", 8,
         [("histogram_quantile(0.5, sum by (le, type) (rate(capstan_pipeline_stage_duration_seconds_bucket[1h])))", "{{type}} p50"),
          ("histogram_quantile(0.95, sum by (le, type) (rate(capstan_pipeline_stage_duration_seconds_bucket[1h])))", "{{type}} p95")]),
        ("Current run phase", "none", 8,
         [("capstan_pipeline_run_phase == 1", "{{namespace}}/{{name}} {{phase}}")]),
    ]),
    ("Reconciles", [
        ("Reconcile errors, by controller and category", "ops", 12,
         [("sum by (category) (rate(capstan_secret_rotation_reconcile_failures_total[5m]))", "secret-rotation {{category}}"),
          ("sum by (category) (rate(capstan_service_scaling_reconcile_failures_total[5m]))", "service-scaling {{category}}"),
          ("sum by (category) (rate(capstan_pipeline_reconcile_failures_total[5m]))", "pipeline {{category}}"),
          ("sum by (category) (rate(capstan_connection_reconcile_failures_total[5m]))", "connection {{category}}")]),
        ("Reconcile duration p95", "s", 12,
         [("histogram_quantile(0.95, sum by (le) (rate(capstan_secret_rotation_reconcile_duration_seconds_bucket[5m])))", "secret-rotation"),
          ("histogram_quantile(0.95, sum by (le) (rate(capstan_service_scaling_reconcile_duration_seconds_bucket[5m])))", "service-scaling"),
          ("histogram_quantile(0.95, sum by (le) (rate(capstan_pipeline_reconcile_duration_seconds_bucket[5m])))", "pipeline"),
          ("histogram_quantile(0.95, sum by (le) (rate(capstan_connection_reconcile_duration_seconds_bucket[5m])))", "connection")]),
    ]),
]


def dashboard():
    panels, y, pid = [], 0, 1
    for row, items in ROWS:
        panels.append({"type": "row", "title": row, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        x = 0
        for title, unit, width, targets in items:
            if x + width > 24:
                x, y = 0, y + 8
            panels.append({
                "type": "timeseries", "title": title, "id": pid, "datasource": DS,
                "gridPos": {"h": 8, "w": width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                            for i, (e, l) in enumerate(targets)],
            })
            pid += 1
            x += width
        y += 8
    return {
        "title": "Capstan", "uid": "capstan", "schemaVersion": 39, "version": 1,
        "tags": ["capstan"], "time": {"from": "now-6h", "to": "now"}, "refresh": "1m",
        "templating": {"list": [{"name": "datasource", "type": "datasource",
                                 "query": "prometheus", "label": "Prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "dashboard.json")
    text = json.dumps(dashboard(), indent=2) + "\n"
    if sys.argv[1:] == ["--check"]:
        with open(out) as fh:
            sys.exit(0 if fh.read() == text else 1)
    with open(out, "w") as fh:
        fh.write(text)
