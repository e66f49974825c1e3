"""ECS services whose tasks start and whose deployments complete.

Real ECS: after CreateService or an UpdateService that changes desiredCount, the
scheduler starts (or stops) tasks, so runningCount follows desiredCount after the tasks'
start-up time. UpdateService with forceNewDeployment=true (or a new task definition)
creates a new PRIMARY deployment with rolloutState IN_PROGRESS, the previous one becomes
ACTIVE until its tasks are replaced, and then the new one is COMPLETED and the old one
goes away.

moto instead: CreateService sets runningCount to $MOTO_ECS_SERVICE_RUNNING (0 by
default) for ever; UpdateService(desiredCount) sets runningCount at once but leaves the
deployment's counts and rolloutState as they were at creation; forceNewDeployment only
renames the deployment. Nothing ever progresses.

The model: each service has a task start-up time, read from its tag
`capstan.dev/moto-task-start-seconds` (a number of seconds; 0 when absent). Until that
long after the last change (create, a desiredCount change, a forced deployment),
DescribeServices and UpdateService report runningCount as it was before the change,
pendingCount as the difference, and the PRIMARY deployment IN_PROGRESS (a forced
deployment keeps the previous one as ACTIVE meanwhile); afterwards runningCount equals
desiredCount and the PRIMARY deployment is the only one, COMPLETED. The state lives on
moto's own service object, so it is keyed by cluster and service name; time is the wall
clock, so a test sees the same thing on every read.

Relied on by: the ServiceScaling integration tests (crates/capstan/tests/service_scaling*.rs:
running counts follow the desired count; utilization is averaged over running tasks)
and the SecretRotation ECS restart (a forced deployment completes).
"""

import time

from moto.ecs import models
from moto.moto_api._internal import mock_random

START_TAG = "capstan.dev/moto-task-start-seconds"


def _start_seconds(service) -> float:
    for tag in service.tags or []:
        key = tag.get("key", tag.get("Key"))
        value = tag.get("value", tag.get("Value"))
        if key == START_TAG:
            try:
                return max(float(value), 0.0)
            except (TypeError, ValueError):
                return 0.0
    return 0.0


def _primary(service):
    for d in service.deployments:
        if d.get("status") == "PRIMARY":
            return d
    return None


def _changed(service, running_before: int, new_deployment: bool) -> None:
    """Records a change: tasks start from now on."""
    service._capstan_changed_at = time.time()
    service._capstan_running_before = running_before
    if not service.deployments:
        return
    primary = _primary(service)
    if new_deployment and primary is not None:
        primary["status"] = "ACTIVE"
        new = dict(primary)
        new["id"] = f"ecs-svc/{mock_random.randint(0, 32**12)}"
        new["status"] = "PRIMARY"
        new["createdAt"] = models.utcnow()
        service.deployments = [new] + [d for d in service.deployments if d is not new]


def _advance(service) -> None:
    """Brings the service's counts and deployments to what the model says now."""
    changed_at = getattr(service, "_capstan_changed_at", None)
    if changed_at is None:
        _changed(service, 0, False)
        changed_at = service._capstan_changed_at
    done = time.time() - changed_at >= _start_seconds(service)
    desired = int(service.desired_count or 0)
    running = desired if done else min(service._capstan_running_before, desired)
    service.running_count = running
    service.pending_count = max(desired - running, 0)
    primary = _primary(service)
    if primary is None:
        return
    primary["desiredCount"] = desired
    primary["runningCount"] = running
    primary["pendingCount"] = service.pending_count
    primary["taskDefinition"] = service.task_definition
    primary["updatedAt"] = models.utcnow()
    if done:
        primary["rolloutState"] = "COMPLETED"
        primary["rolloutStateReason"] = f"ECS deployment {primary['id']} completed."
        service.deployments = [primary]
    else:
        primary["rolloutState"] = "IN_PROGRESS"
        primary["rolloutStateReason"] = f"ECS deployment {primary['id']} in progress."


_create_service = models.EC2ContainerServiceBackend.create_service
_describe_services = models.EC2ContainerServiceBackend.describe_services
_update_service = models.EC2ContainerServiceBackend.update_service


def create_service(self, *args, **kwargs):
    service = _create_service(self, *args, **kwargs)
    _changed(service, 0, False)
    _advance(service)
    return service


def describe_services(self, *args, **kwargs):
    services, failures = _describe_services(self, *args, **kwargs)
    for service in services:
        _advance(service)
    return services, failures


def update_service(self, service_properties):
    cluster = service_properties.get("cluster", "default")
    name = str(service_properties.get("service", "")).split("/")[-1]
    before = self._get_service(cluster, name)
    _advance(before)
    running_before = before.running_count
    desired_before = before.desired_count
    task_definition_before = before.task_definition
    force = bool(service_properties.get("force_new_deployment", False))
    service = _update_service(self, service_properties)
    new_deployment = force or service.task_definition != task_definition_before
    if new_deployment or service.desired_count != desired_before:
        _changed(service, running_before, new_deployment)
    _advance(service)
    return service


models.EC2ContainerServiceBackend.create_service = create_service
models.EC2ContainerServiceBackend.describe_services = describe_services
models.EC2ContainerServiceBackend.update_service = update_service
