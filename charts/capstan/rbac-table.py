#!/usr/bin/env python3
"""Writes the RBAC table of README.md (between the rbac-table markers) from the chart's
rendered defaults (`helm template`), so the documentation is the chart's rules exactly.
  charts/capstan/rbac-table.py HELM            rewrites README.md
  charts/capstan/rbac-table.py HELM --check    fails when README.md differs (ci-check.sh)"""
import os
import subprocess
import sys

import yaml

here = os.path.dirname(os.path.abspath(__file__))
readme = os.path.join(here, "..", "..", "README.md")
BEGIN, END = "<!-- rbac-table:begin -->", "<!-- rbac-table:end -->"

WHO = {
    "capstan": "Capstan (ClusterRole, bound to its ServiceAccount)",
    "capstan-leader-election": "Capstan (Role in its namespace)",
    "capstan-connection-credentials": "Capstan (Role in its namespace)",
    "capstan-view": "people: aggregated into view, edit, admin",
    "capstan-edit": "people: aggregated into edit, admin",
    "capstan-approver": "people who approve runs (bind it yourself; never aggregated)",
}


def table(helm):
    out = subprocess.run([helm, "template", "capstan", os.path.join(here), "--namespace", "capstan-system"],
                         check=True, capture_output=True, text=True).stdout
    rows = ["| role | for | API group | resources | names | verbs |", "| --- | --- | --- | --- | --- | --- |"]
    for d in yaml.safe_load_all(out):
        if not d or d["kind"] not in ("ClusterRole", "Role"):
            continue
        name = d["metadata"]["name"]
        for r in d.get("rules", []):
            groups = ", ".join(g or "core" for g in r.get("apiGroups", []))
            rows.append("| {} `{}` | {} | {} | {} | {} | {} |".format(
                d["kind"], name, WHO.get(name, ""), groups,
                ", ".join(r.get("resources", [])), ", ".join(r.get("resourceNames", [])) or "any",
                ", ".join(r.get("verbs", []))))
    return "\n".join(rows)


def main():
    helm, check = sys.argv[1], sys.argv[2:] == ["--check"]
    text = open(readme).read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + table(helm) + "\n" + text[end:]
    if check:
        sys.exit(0 if new == text else 1)
    open(readme, "w").write(new)


main()
