"""Counts the requests the emulator answers, by operation and by the ECS service named.

Real AWS: throttles each account and region per API (ECS, CloudWatch, Secrets Manager,
Application Auto Scaling); CloudTrail and the AWS/Usage CallCount metrics show how many
calls a client made.

moto instead: answers every request and keeps no count, so a test cannot see how many
calls Capstan made from the emulator's side (the manager's own counters could lie about
themselves).

The model: every request moto dispatches is counted under `<service>:<Action>` (for
example `ecs:DescribeServices`); an ECS request is also counted under
`ecs:<Action>@<cluster>` (once per request) and under `ecs:<Action>:<cluster>/<service>`
(once per service it names). The counts are read
with `GET /moto-api/capstan/requests` (a JSON object of counts; `?prefix=` keeps only
keys starting with it) and are never reset: tests compare two readings and name their
own clusters, so tests sharing the emulator do not see each other's counts.

Relied on by: crates/capstan/tests/service_scaling_budget.rs (request budgets, backoff of
missing services, and deleted ServiceScalings).
"""

import json
import threading
from urllib.parse import parse_qs, urlparse

from moto.core.responses import BaseResponse
from moto.moto_api._internal import urls

_lock = threading.Lock()
_counts: dict[str, int] = {}


def _count(key: str) -> None:
    with _lock:
        _counts[key] = _counts.get(key, 0) + 1


def _ecs_targets(response: BaseResponse) -> tuple[str | None, list[str]]:
    """The cluster a request names and its `cluster/service` targets."""
    try:
        body = json.loads(response.body or "{}")
    except (TypeError, ValueError):
        return None, []
    if not isinstance(body, dict):
        return None, []
    cluster = str(body.get("cluster", "default")).split("/")[-1]
    names = body.get("services")
    if names is None and "service" in body:
        names = [body["service"]]
    if not isinstance(names, list):
        return cluster, []
    return cluster, [f"{cluster}/{str(n).split('/')[-1]}" for n in names]


_call_action = BaseResponse.call_action


def call_action(self):
    try:
        action = self._get_action()
    except Exception:  # noqa: BLE001 - an unknown action is moto's to report
        action = "Unknown"
    service = self.service_name or "unknown"
    _count(f"{service}:{action}")
    if service == "ecs":
        cluster, targets = _ecs_targets(self)
        if cluster is not None:
            _count(f"ecs:{action}@{cluster}")
        for target in targets:
            _count(f"ecs:{action}:{target}")
    return _call_action(self)


BaseResponse.call_action = call_action


def requests(request, full_url, headers):
    prefix = parse_qs(urlparse(full_url).query).get("prefix", [""])[0]
    with _lock:
        counts = {k: v for k, v in _counts.items() if k.startswith(prefix)}
    return 200, {"Content-Type": "application/json"}, json.dumps(counts)


urls.url_paths["{0}/moto-api/capstan/requests"] = requests
