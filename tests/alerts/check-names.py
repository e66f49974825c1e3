#!/usr/bin/env python3
"""Checks that every metric the chart's alerts (charts/capstan/files/alerts.yaml) and
dashboard (charts/capstan/files/dashboard.json) use is exported: each name must be a
sample name in METRICS, a /metrics scrape of a manager that ran the scenarios (the
demo's). Usage: check-names.py METRICS_FILE"""
import json
import os
import re
import sys

import yaml

repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
files = os.path.join(repo, "charts", "capstan", "files")
exprs = []
with open(os.path.join(files, "alerts.yaml")) as fh:
    for group in yaml.safe_load(fh)["groups"]:
        exprs += [r["expr"] for r in group["rules"]]
with open(os.path.join(files, "dashboard.json")) as fh:
    for panel in json.load(fh)["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
used = set()
for e in exprs:
    used |= set(re.findall(r"\b(?:capstan|process)_[a-z0-9_]+", e))
# A name is exported when a sample has it, or when its family is declared (`# TYPE`):
# a counter family that nothing incremented yet (no failures) has no sample.
exported = set()
with open(sys.argv[1]) as fh:
    for line in fh:
        if line.startswith("# TYPE "):
            exported.add(line.split()[2])
        elif line.strip() and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
family = lambda n: re.sub(r"_(total|bucket|count|sum)$", "", n)


def sibling_exported(n):
    # A labelled counter family shows nothing, not even `# TYPE`, until its first
    # increment: `<controller>_reconcile_failures` (by category) before any failure.
    # capstan_core::metrics::ControllerMetrics registers it with `<controller>_reconciles`,
    # so that one being exported is proof the family is registered.
    m = re.fullmatch(r"(capstan_[a-z_]+)_reconcile_failures_total", n)
    return bool(m) and m.group(1) + "_reconciles" in exported


missing = sorted(n for n in used if n not in exported and family(n) not in exported and not sibling_exported(n))
print(f"metric names used by the alerts and the dashboard: {len(used)}; exported by the manager: {len(used) - len(missing)}")
for m in missing:
    print(f"  not exported: {m}", file=sys.stderr)
sys.exit(1 if missing else 0)
